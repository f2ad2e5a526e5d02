"""The GPU path against its decoder: in-process images/s of the whole pipeline beside nvJPEG alone, per photo size.

python -m bench.gpu [--device cuda] [--weights weights/model.pt] [--batch 16] [--seconds 5]
python -m bench.gpu --agreement data/photos/test   # also: how far the device path moves answers, per precision

Each size is a real photograph (scikit-image's astronaut, as bench.large_images) resized and saved as a quality-90
JPEG. "decoder alone" is `torchvision.io.decode_jpeg` of a batch on the device (nvJPEG on CUDA); "pipeline" is
`CorruptionDetector.run` on the same batch with the device path (header checks, budget, batched decode, views,
the model at its precision, answers); the ratio is pipeline / decoder: issue 20 asks for at least 0.5 on one H200.
Both run back to back for `--seconds` each after a warm-up call; a call's time includes waiting for the device.
With `--agreement DIR`, every image of DIR is also answered by the CPU path in fp32 and by the device path at each
precision: the table gives equal labels and how far P(corrupted) moved (detector.device_path.PROBABILITY_TOLERANCE).
Runs on the CPU too (`--device cpu`, slowly): what it measures there is only that the benchmark works.
"""

import argparse
import io
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from bench.large_images import jpeg_of_size
from detector.device_path import PRECISIONS, PROBABILITY_TOLERANCE
from detector.inference import CorruptionDetector
from detector.paths import IMAGE_SUFFIXES, SHIPPED_WEIGHTS
from training.corpus import installed_photo

SIZES = ((1024, 768), (4000, 3000))


def parse_size(text: str) -> tuple[int, int]:
    width, height = text.lower().split("x")
    return int(width), int(height)


def images_per_second(work: Callable[[], None], images: int, seconds: float, device: torch.device) -> float:
    """Images/s of repeated calls of `work` (each handles `images`), over at least `seconds` and one call, after a
    warm-up call; each call waits for the device to finish."""

    def timed_call() -> None:
        work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    timed_call()
    calls, started = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - started < seconds:
        timed_call()
        calls += 1
    return calls * images / (time.perf_counter() - started)


def speed_table(detector: CorruptionDetector, sizes, batch: int, seconds: float) -> list[str]:
    """Markdown rows: per size, decoder alone and pipeline images/s and their ratio."""
    photo = Image.open(io.BytesIO(installed_photo("scikit-image--astronaut"))).convert("RGB")
    rows = [
        "| size | MP | decoder alone img/s | pipeline img/s | pipeline / decoder |",
        "|---|---:|---:|---:|---:|",
    ]
    for width, height in sizes:
        payloads = [jpeg_of_size(photo, (width, height))] * batch
        encoded = [torch.frombuffer(bytearray(payload), dtype=torch.uint8) for payload in payloads]
        decoder = images_per_second(
            lambda e=encoded: decode_jpeg(e, mode=ImageReadMode.RGB, device=detector.device),
            batch,
            seconds,
            detector.device,
        )
        pipeline = images_per_second(lambda p=payloads: detector.run(p), batch, seconds, detector.device)
        megapixels = width * height / 1e6
        rows.append(
            f"| {width}x{height} | {megapixels:.1f} | {decoder:,.0f} | {pipeline:,.1f} | {pipeline / decoder:.2f} |"
        )
    return rows


def corrupted_probabilities(detector: CorruptionDetector, payloads: list[bytes]) -> list[float | None]:
    """P(corrupted) per image, one image per call (the photos differ in size); None where refused."""
    probabilities = []
    for payload in payloads:
        (record,) = detector.run([payload])
        probabilities.append(None if record.error else record.body["probs"]["corrupted"])
    return probabilities


def agreement_table(weights: Path, device: torch.device, folder: Path, crops: bool) -> list[str]:
    """Markdown rows: per precision, the device path's answers on every image of `folder` against the CPU path's
    fp32 answers with the same weights."""
    files = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    payloads = [path.read_bytes() for path in files]
    reference = corrupted_probabilities(CorruptionDetector(weights, "cpu", crops=crops, pipeline="cpu"), payloads)
    rows = [
        "| precision | images | equal labels | max abs. change of P(corrupted) | mean abs. change "
        f"| within {PROBABILITY_TOLERANCE} |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for precision in PRECISIONS:
        detector = CorruptionDetector(weights, device, crops=crops, pipeline="device", precision=precision)
        pairs = [
            (expected, actual)
            for expected, actual in zip(reference, corrupted_probabilities(detector, payloads), strict=True)
            if expected is not None and actual is not None
        ]
        changes = [abs(actual - expected) for expected, actual in pairs]
        labels = sum((expected > 0.5) == (actual > 0.5) for expected, actual in pairs)
        within = sum(change <= PROBABILITY_TOLERANCE for change in changes)
        rows.append(
            f"| {precision} | {len(pairs)} | {labels} | {max(changes, default=0):.4f} "
            f"| {sum(changes) / max(1, len(changes)):.4f} | {within} |"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--weights", type=Path, default=SHIPPED_WEIGHTS, help="any checkpoint (default: shipped)")
    parser.add_argument("--batch", type=int, default=16, help="images per call (default: 16)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per cell (default: 5)")
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=SIZES, help="WxH ... (default: %(default)s)")
    parser.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS])
    parser.add_argument("--agreement", type=Path, help="a folder of images: also compare answers with the CPU path")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as a TorchServe worker runs (handler/model-config.yaml: torch_threads)
    device = torch.device(args.device)
    detector = CorruptionDetector(args.weights, device, pipeline="device", precision=args.precision)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, model at {detector.precision}, batches of {args.batch}, in-process (no HTTP)\n")
    print("\n".join(speed_table(detector, args.sizes, args.batch, args.seconds)))
    if args.agreement:
        print(f"\nAnswers on {args.agreement} against the CPU path in fp32, device path on {device}:\n")
        print("\n".join(agreement_table(args.weights, device, args.agreement, detector.crops)))


if __name__ == "__main__":
    main()
