"""Health probe for the container and Kubernetes: exit 0 only if the model can answer.

python probe.py                          # readiness: a worker of the model is READY
python probe.py --all-workers --predict  # startup: every worker READY and a real prediction succeeds

TorchServe's /ping says Healthy before any model is loaded, so it cannot gate
traffic. This asks the management API (loopback-only, so the probe runs inside
the pod) for the model's workers, and with --predict also scores a tiny
generated PNG through the inference API and checks the answer's schema. Only
the standard library is used, so a probe costs one short Python process and no
curl is needed in the image.
"""

import argparse
import json
import math
import struct
import sys
import urllib.error
import urllib.request
import zlib

LABELS = {"clean", "corrupted"}


class ProbeError(Exception):
    """The model cannot answer; the message says why (Kubernetes shows it in the pod's events)."""


def tiny_png(size: int = 8, grey: int = 128) -> bytes:
    """A valid grey RGB PNG, made here so the probe ships no image file."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes([grey]) * 3 * size for _ in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def fetch_json(url: str, timeout: float, png: bytes | None = None) -> object:
    """GET (or POST a PNG to) a URL and decode its JSON body; any failure is a ProbeError."""
    # An explicit type: urllib's default for a body (a url-encoded form) makes TorchServe read form fields.
    request = urllib.request.Request(url, data=png, headers={"Content-Type": "image/png"} if png else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        raise ProbeError(f"{url}: HTTP {error.code} {error.read(300).decode(errors='replace')}") from error
    except (OSError, ValueError) as error:
        raise ProbeError(f"{url}: {error}") from error


def check_workers(management: str, model: str, all_workers: bool, timeout: float) -> int:
    """Number of READY workers of the model's default version; raises unless enough are READY."""
    description = fetch_json(f"{management}/models/{model}", timeout)
    try:
        workers = [worker["status"] for worker in description[0]["workers"]]
    except (KeyError, IndexError, TypeError) as error:
        raise ProbeError(f"unexpected description of model {model}: {description!r:.300}") from error
    ready = workers.count("READY")
    if ready == 0 or (all_workers and ready < len(workers)):
        raise ProbeError(f"model {model}: workers {workers or 'none'}")
    return ready


def check_prediction(inference: str, model: str, timeout: float) -> dict:
    """Score the tiny PNG and check the answer's schema; returns the answer."""
    answer = fetch_json(f"{inference}/predictions/{model}", timeout, png=tiny_png())
    probs = answer.get("probs") if isinstance(answer, dict) else None
    if (
        not isinstance(probs, dict)
        or set(probs) != LABELS
        or answer.get("label") not in LABELS
        or not math.isclose(sum(probs.values()), 1.0, abs_tol=1e-3)
    ):
        raise ProbeError(f"model {model}: malformed prediction {answer!r:.300}")
    return answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="corruption")
    parser.add_argument("--management", default="http://127.0.0.1:8081")
    parser.add_argument("--inference", default="http://127.0.0.1:8080")
    parser.add_argument("--all-workers", action="store_true", help="require every worker READY, not just one")
    parser.add_argument("--predict", action="store_true", help="also score a tiny image through the inference API")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds per HTTP request")
    args = parser.parse_args(argv)
    try:
        ready = check_workers(args.management, args.model, args.all_workers, args.timeout)
        answer = check_prediction(args.inference, args.model, args.timeout) if args.predict else None
    except ProbeError as error:
        print(f"not ready: {error}", file=sys.stderr)
        return 1
    print(f"ready: {ready} worker(s)" + (f", predicted {answer['label']}" if answer else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
