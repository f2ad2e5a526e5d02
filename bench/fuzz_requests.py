"""Seeded random requests over every shape the handler accepts, for fuzzing a real TorchServe.

Routes (predictions, explanations, KServe v1 predict/explain, v2 infer), transports (raw body, multipart
with odd field names, JSON, KServe v1 and v2 with odd names, shapes, datatypes, nesting and outputs) and
payloads (valid small images, the same mutated, header-only images declaring huge sizes, random bytes and
text). Form-encoded bodies are left out: TorchServe's frontend answers them 500 before any worker sees them
(README "Uploads").
"""

import base64
import json
import random
from dataclasses import dataclass

from PIL import Image

from bench.inputs import png_header_only
from bench.limits import MAKERS, encode, textured

ROUTES = {
    "plain": ("/predictions/corruption", "/explanations/corruption"),
    "v1": ("/v1/models/corruption:predict", "/v1/models/corruption:explain"),
    "v2": ("/v2/models/corruption/infer",),
}
CONTENT_TYPES = (None, "application/json", "application/octet-stream", "image/png", "text/plain")
ODD_TEXT = ("", "image", "\u00e9", "a\r\nX-Injected: 1", '"', "\x00", "\u2603" * 50, "x" * 300, "data", "file")


@dataclass(frozen=True)
class FuzzRequest:
    route: str
    body: bytes
    headers: dict[str, str]


class RequestFuzzer:
    """Random requests from one seed: the same seed gives the same requests."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.images = [make(size, size * 3 // 4, True) for make in MAKERS.values() for size in (24, 96)]
        self.images.append(encode(textured(64, 48), "JPEG", quality=90))
        self.images.append(encode(Image.new("RGB", (32, 32), (10, 200, 30)), "PNG"))

    def payload(self) -> bytes:
        """An image: valid, mutated, declaring a huge size, or not an image at all."""
        pick = self.random.random()
        if pick < 0.4:
            return self.random.choice(self.images)
        if pick < 0.75:
            return self.mutated(self.random.choice(self.images))
        if pick < 0.85:
            side = self.random.choice((7000, 7072, 30000, 2**31 - 1))
            return png_header_only(side, self.random.choice((1, side)))
        return self.random.randbytes(self.random.randint(0, 2048))

    def mutated(self, data: bytes) -> bytes:
        data = bytearray(data)
        for _ in range(self.random.randint(1, 8)):
            if not data:
                break
            position = self.random.randrange(len(data))
            action = self.random.choice(("flip", "cut", "insert", "truncate"))
            if action == "flip":
                data[position] ^= self.random.randint(1, 255)
            elif action == "cut":
                del data[position : position + self.random.randint(1, 64)]
            elif action == "insert":
                data[position:position] = self.random.randbytes(self.random.randint(1, 64))
            else:
                del data[max(position, 8) :]
        return bytes(data)

    def text(self) -> str:
        return self.random.choice(ODD_TEXT)

    def b64(self) -> object:
        """What a KServe body carries as an image: base64 mostly, anything JSON sometimes."""
        if self.random.random() < 0.85:
            return base64.b64encode(self.payload()).decode()
        return self.json_value(2)

    def json_value(self, depth: int) -> object:
        kinds = ["null", "bool", "int", "float", "text"] + (["list", "object"] if depth > 0 else [])
        kind = self.random.choice(kinds)
        if kind == "list":
            return [self.json_value(depth - 1) for _ in range(self.random.randint(0, 4))]
        if kind == "object":
            return {self.text(): self.json_value(depth - 1) for _ in range(self.random.randint(0, 3))}
        return {"null": None, "bool": self.random.random() < 0.5, "int": self.random.randint(-(2**40), 2**40),
                "float": self.random.uniform(-1e9, 1e9), "text": self.text()}[kind]  # fmt: skip

    def nested(self, value: object) -> object:
        for _ in range(self.random.choice((0, 1, 2, 9, 40, 900))):
            value = [value]
        return value

    def v1(self) -> bytes:
        count = self.random.choice((0, 1, 2, 5, 16, 17))
        instances = [self.b64() if self.random.random() < 0.7 else {"b64": self.b64()} for _ in range(count)]
        body: dict = {"instances": instances if self.random.random() < 0.9 else self.json_value(2)}
        if self.random.random() < 0.05:
            body["inputs"] = []
        return json.dumps(body).encode()

    def v2(self) -> bytes:
        count = self.random.choice((0, 1, 2, 5, 16, 17))
        data = self.nested([self.b64() for _ in range(count)])
        shape = self.random.choice(([count], [1, count], [-1], [True], [count, 0], "x", [count] * 9, None))
        tensor = {"name": self.text(), "datatype": self.random.choice(("BYTES", "BYTES", "FP32", 5)),
                  "shape": shape, "data": data}  # fmt: skip
        body: dict = {"inputs": [tensor] if self.random.random() < 0.9 else [tensor, tensor], "id": self.text()}
        if self.random.random() < 0.3:
            body["outputs"] = [{"name": self.random.choice(("label", "probs", "logits", self.text()))}]
        return json.dumps(body).encode()

    def multipart(self) -> tuple[bytes, dict[str, str]]:
        boundary = "fuzz" + str(self.random.randint(0, 10**6))
        body = b""
        for _ in range(self.random.choice((1, 1, 2, 3))):
            name = self.text().replace('"', "")
            head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="f"\r\n'
            body += (head + "Content-Type: image/png\r\n\r\n").encode("utf-8", "replace") + self.payload() + b"\r\n"
        return body + f"--{boundary}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}

    def request(self) -> FuzzRequest:
        protocol = self.random.choice(("plain", "plain", "multipart", "json", "v1", "v2"))
        content_type = self.random.choice(CONTENT_TYPES)
        if protocol == "multipart":
            body, headers = self.multipart()
            return FuzzRequest(self.random.choice(ROUTES["plain"]), body, headers)
        if protocol == "plain":
            body = self.payload()
        elif protocol == "json":
            value = self.random.choice(({"data": self.b64()}, self.b64(), self.nested(self.json_value(3))))
            body = json.dumps(value).encode()
        else:
            body = self.v1() if protocol == "v1" else self.v2()
        route = self.random.choice(ROUTES["plain" if protocol == "json" else protocol])
        return FuzzRequest(route, body, {"Content-Type": content_type} if content_type else {})
