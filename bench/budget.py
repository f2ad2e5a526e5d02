"""The most expensive handler calls the work budget admits, timed on one core: each must end well inside
responseTimeout, or TorchServe kills the worker and fails its whole batch.

python -m bench.budget          (about 3 minutes here)

A call is batchSize requests (model-config.yaml), each at detector.budget's limits: MAX_IMAGES images
sharing MAX_PIXELS of flat pixels (tiny files that decode large) on every decoding path; MAX_EXPLANATIONS
explained photos; and the body that decodes slowest per byte (a detailed WebP filling max_request_size).
The red-team calls of bench.attacks are timed beside them: refused before decoding, they cost milliseconds.
"""

import argparse
import io
import math
import time
from collections.abc import Iterator

import torch
import yaml
from PIL import Image

from bench.attacks import attacks
from bench.limits import MAKERS, MAX_BODY, encode, textured
from detector.budget import MAX_EXPLANATIONS, MAX_IMAGES, MAX_PIXELS
from detector.decoding import MAX_DECODE_BYTES, decode_bytes, open_image
from detector.inference import CorruptionDetector
from detector.paths import SHIPPED_WEIGHTS
from handler.archive import MODEL_CONFIG
from handler.protocols import parse_request


def settings() -> tuple[int, float]:
    """(batchSize, responseTimeout) of the shipped model-config.yaml."""
    config = yaml.safe_load(MODEL_CONFIG.read_text())
    return int(config["batchSize"]), float(config["responseTimeout"])


def timed_call(detector: CorruptionDetector, requests: list[list[bytes]], explain: bool = False) -> float:
    """Seconds of one detector call over `requests` (lists of encoded images), as the handler makes it."""
    start = time.perf_counter()
    grouped = detector.run_requests(requests, [explain] * len(requests))
    seconds = time.perf_counter() - start
    refused = {record.error.reason for records in grouped for record in records if record.error}
    assert not refused, f"the budget refused its own limit: {refused}"
    return seconds


def flat_side() -> int:
    """The side of a square image holding MAX_PIXELS / MAX_IMAGES pixels (rounded down to the JPEG grid)."""
    return math.isqrt(MAX_PIXELS // MAX_IMAGES) // 16 * 16


def largest_webp() -> bytes:
    """A detailed WebP as large as max_request_size and the decoder's memory budget allow (the path that decodes
    slowest per byte)."""
    side = 4096
    data = encode(textured(side, side), "WEBP", quality=80)
    side = int(side * math.sqrt(MAX_BODY * 0.7 / len(data))) // 16 * 16  # base64 in a KServe body: x4/3
    per_pixel = math.ceil(decode_bytes(open_image(encode(Image.new("RGB", (64, 64)), "WEBP"))) / 64**2)
    side = min(side, math.isqrt(MAX_DECODE_BYTES // per_pixel)) // 16 * 16
    return encode(textured(side, side), "WEBP", quality=80)


def rows(detector: CorruptionDetector, batch: int) -> Iterator[tuple[str, int, float, float]]:
    """(case, images per call, MP per call, seconds per call), one call at a time."""
    side = flat_side()
    for name, make in MAKERS.items():
        image = make(side, side, False)
        seconds = timed_call(detector, [[image] * MAX_IMAGES] * batch)
        megapixels = batch * MAX_IMAGES * side * side / 1e6
        yield f"{MAX_IMAGES} x {side}x{side} flat {name}", batch * MAX_IMAGES, megapixels, seconds
    photo = encode(textured(1024, 768), "JPEG", quality=92)
    seconds = timed_call(detector, [[photo] * MAX_EXPLANATIONS] * batch, explain=True)
    explained = batch * MAX_EXPLANATIONS
    yield f"{MAX_EXPLANATIONS} explained 1024x768 photos", explained, explained * 1024 * 768 / 1e6, seconds
    webp = largest_webp()
    pixels = batch * math.prod(Image.open(io.BytesIO(webp)).size) / 1e6
    seconds = timed_call(detector, [[webp]] * batch)
    yield f"one detailed WebP of {len(webp) / 2**20:.1f} MiB", batch, pixels, seconds


def attack_rows(detector: CorruptionDetector, batch: int) -> list[tuple[str, float]]:
    """Seconds to parse and answer `batch` copies of each red-team request (refused before decoding)."""
    small = encode(textured(32, 32), "PNG")
    table = []
    for attack in attacks(small):
        start = time.perf_counter()
        parsed = [parse_request({"body": bytearray(attack.body)}, attack.headers) for _ in range(batch)]
        detector.run_requests([request.payloads for request in parsed], ["explain" in attack.route] * batch)
        table.append((attack.name, time.perf_counter() - start))
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(SHIPPED_WEIGHTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    batch, timeout = settings()
    detector = CorruptionDetector(args.weights)
    print(f"One handler call = batchSize {batch} requests at the budget's limits, one torch thread; "
          f"responseTimeout {timeout:.0f} s\n")  # fmt: skip
    print("| call | images | MP decoded | seconds | of responseTimeout |\n|---|---:|---:|---:|---:|")
    for case, images, megapixels, seconds in rows(detector, batch):
        print(f"| {case} | {images} | {megapixels:.0f} | {seconds:.1f} | {seconds / timeout:.0%} |", flush=True)
    print(f"\n| red-team request x {batch} | seconds |\n|---|---:|")
    for name, seconds in attack_rows(detector, batch):
        print(f"| {name} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
