"""Images per second of the batch engines on the same photos, run as a user runs them: the corruption-detect CLI
with --local, against --server (a real TorchServe on free ports, already warm), and --engine ray with 1 and 2
actors (a local Ray started by each run). Prints a Markdown table.

Each engine scores a small set and the whole set, both cold (start-up included, as a user pays it): the small run
measures the fixed cost (torch, the model, Ray's start and actors), and the difference between the two is the rate
at which files are scored once running. All engines are measured in one run so that their ratios are comparable on
a shared machine.

    python -m bench.batch_engines --make-photos /tmp/photos1000 --from data/photos   # 1,000 JPEGs at 1024 px
    python -m bench.batch_engines --photos /tmp/photos1000
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from PIL import Image, ImageOps

from bench.run import machine
from bench.torchserve import serving_weights
from detector.corruptions import encode_jpeg
from detector.paths import SHIPPED_WEIGHTS
from training.data import find_images

CLI = Path(sys.executable).with_name("corruption-detect")
SMALL = 16  # files of the start-up run
LONG_SIDE = 1024


def make_photos(sources: list[Path], out: Path, count: int) -> None:
    """`count` JPEGs (quality 90) of the photos under `sources` at LONG_SIDE pixels: each distinct photo once, then
    mirrored, then upside down, as many rounds as it takes (the same cost per file, not the same image)."""
    photos = sorted({path.read_bytes(): path for source in sources for path in find_images(source)}.values())
    out.mkdir(parents=True, exist_ok=True)
    turns = (lambda image: image, ImageOps.mirror, ImageOps.flip, lambda image: ImageOps.flip(ImageOps.mirror(image)))
    for index in range(count):
        image = ImageOps.exif_transpose(Image.open(photos[index % len(photos)])).convert("RGB")
        image.thumbnail((LONG_SIDE, LONG_SIDE))
        turned = turns[index // len(photos) % len(turns)](image)
        (out / f"{index:05d}.jpg").write_bytes(encode_jpeg(turned, 90))


def timed(arguments: list[str], files: list[str], env: dict[str, str]) -> float:
    """Wall-clock seconds of one CLI run over `files` (given as a list file), from launch to exit."""
    with tempfile.TemporaryDirectory() as folder:
        listing = Path(folder, "files.txt")
        listing.write_text("\n".join(files) + "\n")
        command = [str(CLI), "--no-progress", "--files-from", str(listing), *arguments, "-o", f"{folder}/out.parquet"]
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
        seconds = time.perf_counter() - start
    if done.returncode not in (0, 1, 3):
        raise RuntimeError(f"{command} failed:\n{done.stderr[-3000:]}")
    return seconds


def measure(name: str, arguments: list[str], files: list[str], env: dict[str, str]) -> dict:
    start_up = timed(arguments, files[:SMALL], env)
    whole = timed(arguments, files, env)
    # None when the start-up's own noise exceeds the time the rest of the files took: no rate to state.
    rate = (len(files) - SMALL) / (whole - start_up) if whole > start_up else None
    row = {"engine": name, "files": len(files), "wall_s": whole, "overall": len(files) / whole,
           "start_up_s": start_up, "running": rate}  # fmt: skip
    print(f"  {name}: {whole:.1f} s for {len(files)}, {start_up:.1f} s for {SMALL}", file=sys.stderr, flush=True)
    return row


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, help="the folder of photos to score")
    parser.add_argument("--make-photos", type=Path, help="write the benchmark's photos here, then stop")
    parser.add_argument("--from", dest="sources", type=Path, nargs="+", default=[Path("data/photos")],
                        help="photos for --make-photos")  # fmt: skip
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--weights", type=Path, default=SHIPPED_WEIGHTS)
    args = parser.parse_args(argv)
    if args.make_photos:
        make_photos(args.sources, args.make_photos, args.count)
        return
    files = [str(path) for path in find_images(args.photos)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    weights = ["--weights", str(args.weights)]
    rows, loads = [], [load()]
    with serving_weights(args.weights) as server:
        rows.append(measure("--server (TorchServe, -c 4)", ["--server", server.inference], files, env))
    loads.append(load())
    rows.append(measure("--local", ["--local", *weights], files, env))
    for actors in (1, 2):
        arguments = ["--engine", "ray", "--actors", str(actors), *weights]
        rows.append(measure(f"--engine ray, {actors} actor{'s' * (actors > 1)}", arguments, files, env))
        loads.append(load())
    print(f"Batch engines {date.today()} on {machine()}; {len(files)} files of {args.photos}")
    print(f"Load from other processes while it ran: {'; '.join(loads)}\n")
    print(f"| engine | wall s, {len(files)} files | files/s overall | start-up s ({SMALL} files) | files/s running |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        running = "-" if row["running"] is None else f"{row['running']:.1f}"
        print(f"| {row['engine']} | {row['wall_s']:.1f} | {row['overall']:.1f} | {row['start_up_s']:.1f} | "
              f"{running} |")  # fmt: skip


if __name__ == "__main__":
    main()
