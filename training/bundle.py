"""A training bundle for a lent accelerator: the corpus shrunk to fit the device's working tree, and its command.

python -m training.bundle --photos data/photos --cifar ../shared/data/cifar10-subset/train \
    --extra-cifar data/cifar10-jpeg-q75/train --out checkpoints/device-bundle --minutes 10

Only the checkout travels to a lent device (64 MiB, git-ignored folders named in `carry`), and ../shared and
data/ do not. The bundle (git-ignored: put it under checkpoints/ or data/, or name a folder .gitignore covers)
holds the training and validation photos at most `--long-side` px long (re-saved as high-quality JPEGs, so
they stay clean; 1280 px, the default, is the size whole views are cut from anyway: training.photo_data's
WHOLE_CACHE_LONG_SIDE), the --cifar images as they are, as many --extra-cifar images as the byte budget leaves, and
train.sh: the training command for the device with a fixed budget, writing the checkpoint under $OUT. The
bundle is refused when it does not fit `--max-mib`.

A bundle's photos are shrunk: crops of a 1280 px photo are sharper and cleaner than the native photo's, so a
model trained on a bundle learns fine damage from less fine detail than one trained on the full corpus.
"""

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import asdict, replace
from importlib import metadata
from pathlib import Path

import numpy as np

from detector.corruptions import encode_jpeg
from detector.decoding import decode_image
from training.corpus import BuiltPhoto
from training.data import find_images
from training.photo_data import WHOLE_CACHE_LONG_SIDE, at_long_side, load_split

# The device's working tree is 64 MiB; the checkout takes about 9.5 of it.
DEFAULT_MAX_MIB = 52.0
# Shrunk photos are saved at this quality: far above detector.corruptions.MIN_CLEAN_JPEG_QUALITY, so still clean.
# Measured on the 414 training and validation photos: 43.3 MiB at 1152 px (the whole bundle 55.4 MiB at 1280 px).
BUNDLE_QUALITY = 90
SPLITS = ("train", "val")
# What training imports that a lent device's image lacks (its package list: ../.library/device/KINDS.md): pure
# Python, built here as wheels at the versions installed here, from the machine's configured index.
DEVICE_MISSING = ("PyTurboJPEG",)


class BundleTooLargeError(RuntimeError):
    """The bundle does not fit the device's working tree."""


def shrink_photo(source: Path, photo: BuiltPhoto, long_side: int, out: Path) -> BuiltPhoto:
    """The photo at most `long_side` px long, saved under `out` as the corpus lays it out; its manifest entry."""
    image = decode_image((source / photo.file).read_bytes())
    if photo.half_size:  # only its half-size self is clean (training.photo_data.PhotoSet.load)
        image = image.reduce(2)
    if max(image.size) > long_side:
        image = at_long_side(image, long_side)
    file = f"{photo.split}/{photo.id}.jpg"
    (out / file).parent.mkdir(parents=True, exist_ok=True)
    (out / file).write_bytes(encode_jpeg(image, BUNDLE_QUALITY))
    size = {"width": image.width, "height": image.height}
    return replace(photo, file=file, **size, jpeg_quality=BUNDLE_QUALITY, half_size=False)


def bundle_photos(source: Path, long_side: int, out: Path) -> list[BuiltPhoto]:
    """Every training and validation photo of the corpus, shrunk, with the corpus's manifest."""
    photos = [shrink_photo(source, photo, long_side, out) for split in SPLITS for photo in load_split(source, split)]
    manifest = [{**asdict(photo), "tags": list(photo.tags)} for photo in photos]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return photos


def copy_images(paths: list[Path], root: Path, out: Path) -> int:
    """Copy images keeping their paths under `root`; the bytes copied."""
    for path in paths:
        target = out / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return sum(path.stat().st_size for path in paths)


def sample_within(paths: list[Path], budget: int, seed: int) -> list[Path]:
    """A seeded random sample of `paths` whose bytes fit `budget`."""
    order = np.random.default_rng(seed).permutation(len(paths))
    sizes = np.array([paths[i].stat().st_size for i in order])
    return sorted(paths[i] for i in order[: int(np.searchsorted(np.cumsum(sizes), budget, side="right"))])


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def build_wheels(out: Path) -> None:
    """Wheels of DEVICE_MISSING, as installed here."""
    pins = [f"{name}=={metadata.version(name)}" for name in DEVICE_MISSING]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), *pins], check=True)


def train_script(out: Path, budget: str, extra: bool, device_args: str) -> str:
    """The device's command: install the wheels, train on the bundle from the shipped weights, the checkpoint
    under $OUT."""
    extra_cifar = f" --extra-cifar {out}/extra-cifar" if extra else ""
    return (
        "#!/bin/sh\n# Made by python -m training.bundle; run from the repository root on the device.\nset -eu\n"
        f'python3 -m pip install -q --no-index --no-deps --target "${{SITE:-/tmp/site}}" {out}/wheels/*.whl\n'
        'export PYTHONPATH="${SITE:-/tmp/site}${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1\n'
        f"python3 -m training.train --photos {out}/photos --cifar {out}/cifar{extra_cifar} --init weights/model.pt"
        f' {budget} {device_args} --out "${{OUT:-checkpoints/device}}/checkpoint"\n'
    )


def training_budget(args: argparse.Namespace) -> str:
    """train.py's budget argument: a number of steps, or wall-clock minutes on the device."""
    return f"--steps {args.steps}" if args.steps else f"--minutes {args.minutes:g}"


def build_bundle(args: argparse.Namespace) -> int:
    """Write the bundle; its size in bytes. Refused (and removed) when it exceeds --max-mib."""
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    budget = int(args.max_mib * 2**20)
    build_wheels(out / "wheels")
    bundle_photos(args.photos, args.long_side, out / "photos")
    copy_images(find_images(args.cifar), args.cifar, out / "cifar")
    left = budget - folder_bytes(out)
    extra = [path for folder in args.extra_cifar for path in find_images(folder)]
    if extra and left > 0:
        chosen = sample_within(extra, left, args.seed)
        for number, path in enumerate(chosen):  # one flat folder: several sources may share file names
            target = out / "extra-cifar" / f"{number:06d}{path.suffix.lower()}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    (out / "train.sh").write_text(
        train_script(out, training_budget(args), (out / "extra-cifar").is_dir(), args.device_args)
    )
    size = folder_bytes(out)
    if size > budget:
        shutil.rmtree(out)
        raise BundleTooLargeError(
            f"the bundle is {size / 2**20:.1f} MiB, over --max-mib {args.max_mib:g}: lower --long-side"
        )
    return size


def main_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=Path("data/photos"), help="the corpus built by `make photos`")
    parser.add_argument("--cifar", type=Path, required=True, help="small clean images, a folder (validation too)")
    parser.add_argument("--extra-cifar", type=Path, nargs="*", default=[], help="more, sampled to fill the budget")
    parser.add_argument("--out", type=Path, default=Path("checkpoints/device-bundle"), help="a git-ignored folder")
    parser.add_argument("--long-side", type=int, default=WHOLE_CACHE_LONG_SIDE, help="photos' longest side, px")
    parser.add_argument("--max-mib", type=float, default=DEFAULT_MAX_MIB, help="the bundle's size limit")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=10.0, help="the training budget on the device")
    budget.add_argument("--steps", type=int, help="or a number of steps")
    parser.add_argument(
        "--device-args", default="--device cuda --workers 5 --threads 2", help="train.py's arguments for the device"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = main_parser().parse_args(argv)
    size = build_bundle(args)
    print(f"{args.out}: {size / 2**20:.1f} MiB; on the device: sh {args.out}/train.sh (carry {args.out})")


if __name__ == "__main__":
    main()
