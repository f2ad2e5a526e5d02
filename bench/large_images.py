"""Cost of photos by size: views (by the cheapest decode) and forward pass, against decoding every pixel alone.

python -m bench.large_images [--repeats 5] [--weights checkpoints/model.pt] [--threads 1]

"full decode alone" is Pillow decoding the whole JPEG at native size (what serving paid before large JPEGs were
decoded reduced with their crops cut from the compressed data); "batch of 8" is the whole in-process pipeline,
`CorruptionDetector.run` over 8 copies, per image; the last column is that over the full decode alone. With
`--threads N` (a worker's torch_threads), the process runs N torch threads and the batch's views are made N at a
time; a column beside it gives the same batch with its views made one at a time, measured in the same run.

Each size is a real photograph (scikit-image's astronaut, a test-split photo) resized and saved as a
quality-90 JPEG, scored in-process one image at a time on one torch thread, as one TorchServe worker
does: bytes -> views (detector/preprocessing.py) -> the model's combined verdict. Images whose shorter
side is over 240 px add four native crops to their whole view.
"""

import argparse
import io
import time
from pathlib import Path

import torch
from PIL import Image

from detector.decoding import decode_image
from detector.inference import CorruptionDetector
from detector.paths import SHIPPED_WEIGHTS
from detector.preprocessing import image_bytes_to_views
from training.corpus import installed_photo

# Images per call in the batched column: a TorchServe batch (handler/model-config.yaml batchSize).
BATCH = 8
SIZES = ((64, 48), (320, 240), (1024, 768), (2048, 1536), (4000, 3000), (8000, 6000))


def jpeg_of_size(photo: Image.Image, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    photo.resize(size, Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def best_of(repeats: int, work) -> float:
    """The fastest of `repeats` timed calls, in seconds: the machine is shared, noise only adds time."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--weights", type=Path, default=SHIPPED_WEIGHTS, help="any checkpoint (default: shipped)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, as handler/model-config.yaml's")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    detector = CorruptionDetector(args.weights)
    serial = CorruptionDetector(args.weights, view_threads=1) if args.threads > 1 else None
    photo = Image.open(io.BytesIO(installed_photo("scikit-image--astronaut"))).convert("RGB")
    serial_column = " | batch of 8, views one at a time: ms per image" if serial else ""
    print(
        "| size | MP | views | full decode alone ms | views ms (cheapest decode) | forward ms "
        f"| batch of 8: ms per image{serial_column} | pipeline / full decode |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if serial else "") + "---:|")
    for width, height in SIZES:
        data = jpeg_of_size(photo, (width, height))
        views = image_bytes_to_views(data)
        decode = best_of(args.repeats, lambda d=data: decode_image(d))
        prepare = best_of(args.repeats, lambda d=data: image_bytes_to_views(d))
        forward = best_of(args.repeats, lambda v=views: detector.answer([v]))
        batched = best_of(args.repeats, lambda d=data: detector.run([d] * BATCH)) / BATCH
        one_at_a_time = (
            f" {1000 * best_of(args.repeats, lambda d=data: serial.run([d] * BATCH)) / BATCH:.1f} |" if serial else ""
        )
        print(
            f"| {width}x{height} | {width * height / 1e6:.2f} | {1 + len(views.crops)} | {1000 * decode:.1f} "
            f"| {1000 * prepare:.1f} | {1000 * forward:.1f} | {1000 * batched:.1f} |{one_at_a_time} "
            f"{batched / decode:.2f} |"
        )
    print("\nBest of", args.repeats, "runs per cell,", args.threads, "torch thread(s), in-process (no HTTP).")


if __name__ == "__main__":
    main()
