"""The red-team requests that took a worker down (issue 17), as HTTP requests any test or benchmark can send.

Each is one anonymous client's request at the shipped settings; each now gets a typed 4xx (or a 200
where the input is valid) without touching the worker process. `tests/test_attacks.py` sends each
against a real TorchServe with a normal request beside it; `bench.budget` times what the work budget
still admits.
"""

import base64
import json
from dataclasses import dataclass, field

from PIL import Image

from bench.inputs import with_declared_size
from bench.limits import encode, textured

# A JPEG's start-of-scan marker.
SOS = b"\xff\xda"


@dataclass(frozen=True)
class Attack:
    """One request: where it goes, its body and headers, and the answer it must get."""

    name: str
    route: str  # appended to the inference address
    body: bytes
    status: int
    reason: str | None  # the refusal "type" a 400 must name
    headers: dict[str, str] = field(default_factory=dict)


def v2_body(name: str, data: object, shape: object, datatype: str = "BYTES") -> bytes:
    return json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def repeated_scan_jpeg(side: int = 7000, size: int = 4_400_000) -> bytes:
    """A progressive JPEG of side x side flat pixels whose last scan is repeated until the file is `size` long."""
    data = encode(Image.new("RGB", (side, side), (90, 120, 150)), "JPEG", quality=90, progressive=True)
    last = data.rindex(SOS)
    scan = data[last:-2]  # the last scan, up to the end-of-image marker
    return data[:-2] + scan * ((size - len(data)) // len(scan)) + data[-2:]


def many_markers_jpeg(count: int = 4_190_000) -> bytes:
    """A 64x48 JPEG with `count` empty APP1 segments before its image data."""
    data = encode(textured(64, 48), "JPEG", quality=90)
    return data[:2] + b"\xff\xe1\x00\x02" * count + data[2:]


def short_png(side: int = 7071, rows: int = 100) -> bytes:
    """A PNG declaring side x side whose compressed data ends, properly, after `rows` rows."""
    return with_declared_size(encode(Image.new("RGB", (side, rows), (0, 0, 0)), "PNG"), side, side)


def tiny_huge_tiff() -> bytes:
    """A few KB of bilevel TIFF (CCITT group 4) declaring 50 MP of white page."""
    return encode(Image.new("1", (7071, 7071), 1), "TIFF", compression="group4")


def multipart(fields: list[str], data: bytes) -> tuple[bytes, dict[str, str]]:
    """A multipart body with `data` as a file under each of the field names."""
    boundary = "x7f3a"
    body = b""
    for name in fields:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="a.png"\r\n'
        body += head.encode() + b"Content-Type: image/png\r\n\r\n" + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def attacks(image: bytes) -> list[Attack]:
    """The red-team cases of issue 17, around a small valid `image` where a valid part is needed."""
    non_ascii_form, form_headers = multipart(["\u00e9t\u00e9", "\u00e9"], image)
    crlf_form, crlf_headers = multipart(["a\r\nX-Injected: 1", "b"], image)
    json_headers = {"Content-Type": "application/json"}
    tiffs = [b64(tiny_huge_tiff())] * 16
    return [
        Attack("v2 name not ASCII", "/v2/models/corruption/infer", v2_body("\u00e9", [1], [1], "FP32"), 400,
               "invalid_kserve_request", json_headers),
        Attack("v2 name with CRLF", "/v2/models/corruption/infer", v2_body("a\r\nb", [1], [1], "FP32"), 400,
               "invalid_kserve_request", json_headers),
        Attack("multipart field names not ASCII", "/predictions/corruption", non_ascii_form, 400, "multiple_files",
               form_headers),
        Attack("multipart field name with CRLF", "/predictions/corruption", crlf_form, 400, "multiple_files",
               crlf_headers),
        Attack("progressive JPEG repeating one scan", "/predictions/corruption", repeated_scan_jpeg(), 400,
               "too_many_scans"),
        Attack("v1 body of 16 tiny TIFFs declaring 50 MP each", "/v1/models/corruption:predict",
               json.dumps({"instances": tiffs}).encode(), 400, "too_much_work", json_headers),
        Attack(":explain of 64 images", "/v1/models/corruption:explain",
               json.dumps({"instances": [b64(image)] * 64}).encode(), 400, "too_many_images", json_headers),
        Attack(":explain of 9 images", "/v1/models/corruption:explain",
               json.dumps({"instances": [b64(image)] * 9}).encode(), 400, "too_many_explanations", json_headers),
        Attack("v2 data nested 900 deep", "/v2/models/corruption/infer",
               v2_body("image", json.loads("[" * 900 + json.dumps(b64(image)) + "]" * 900), [1]), 400,
               "invalid_kserve_request", json_headers),
        Attack("JPEG with 4.19 million empty APP1 markers", "/predictions/corruption", many_markers_jpeg(), 400,
               "too_many_segments"),
        Attack("PNG declaring 7071x7071 whose data stops after 100 rows", "/predictions/corruption", short_png(),
               400, "truncated_image"),
        Attack("v2 negative shape", "/v2/models/corruption/infer", v2_body("image", [b64(image)], [-1, -1]), 400,
               "invalid_kserve_request", json_headers),
        Attack("v2 boolean shape", "/v2/models/corruption/infer", v2_body("image", [b64(image)], [True]), 400,
               "invalid_kserve_request", json_headers),
        Attack("both instances and inputs", "/v2/models/corruption/infer",
               json.dumps({"instances": [b64(image)], "inputs": []}).encode(), 400, "invalid_kserve_request",
               json_headers),
        Attack("v2 id of 7 MB, echoed in the answer", "/v2/models/corruption/infer",
               json.dumps({"id": "x" * 7_000_000, "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                                             "data": [b64(image)]}]}).encode(),
               400, "invalid_kserve_request", json_headers),
        Attack("5000-digit shape", "/v2/models/corruption/infer",
               b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [' + b"9" * 5000 + b'], "data": []}]}',
               400, "invalid_json", json_headers),
    ]  # fmt: skip
