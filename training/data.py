"""Small clean images (CIFAR-10 or any image folder) as 32x32 uint8 tensors, and seeded splits.

Photos come from the camera-photo corpus instead (training/corpus.py); these small images teach the
detector that thumbnails and CIFAR-sized inputs keep working.
"""

from pathlib import Path

import torch
import torchvision
import torchvision.transforms.v2.functional as F
from tqdm import tqdm

from detector.decoding import decode_image
from detector.paths import IMAGE_SUFFIXES, ROOT

# The lossless CIFAR-10 subset laid beside the project (../shared/data): tests, benchmarks, CPU training.
SUBSET = ROOT.parent / "shared" / "data" / "cifar10-subset"
CIFAR10 = "cifar10"
SMALL_SIDE = 32
# Root-mean-square pixel difference (0-255) under which two small images are copies of one picture: a CIFAR-10
# image and its JPEG q75 copy differ by 3-7, the nearest distinct CIFAR-10 images by 20 or more (measured).
COPY_RMS = 12.0


def find_images(root: Path) -> list[Path]:
    """Every image file under `root`, recursively, in a stable order."""
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    return paths


def load_clean_images(
    source: str, limit: int | None = None, train: bool = True, download_root: Path = Path("data")
) -> torch.Tensor:
    """Load clean images as one uint8 (N, 3, 32, 32) tensor, decoded as the server decodes them.

    `source` is "cifar10" (torchvision; downloaded into `download_root` when missing,
    `train` picks the split) or a folder searched recursively; larger images are resized.
    """
    if source == CIFAR10:
        dataset = torchvision.datasets.CIFAR10(str(download_root), train=train, download=True)
        count = len(dataset) if limit is None else min(limit, len(dataset))
        images = (dataset[i][0] for i in range(count))
    else:
        paths = find_images(Path(source))[:limit]
        count = len(paths)
        images = (decode_image(path.read_bytes()) for path in paths)
    tensors = (F.resize(F.pil_to_tensor(image), [SMALL_SIDE, SMALL_SIDE], antialias=True) for image in images)
    return torch.stack(list(tqdm(tensors, total=count, desc="loading", unit="img")))


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split into (train, validation) indices."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    n_val = round(count * val_fraction)
    return order[n_val:], order[:n_val]


def split_cifar(
    source: str, val_fraction: float, seed: int, limit: int | None = None, download_root: Path = Path("data")
) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, validation) images of `source`, split by seed: training and a later recalibration of its
    checkpoint must hold out the very same images."""
    images = load_clean_images(source, limit=limit, train=True, download_root=download_root)
    train_idx, val_idx = split_indices(len(images), val_fraction, seed)
    return images[train_idx], images[val_idx]


def without_copies_of(images: torch.Tensor, held_out: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """`images` less every copy (re-encoded, resized) of a `held_out` image.

    Why: CIFAR-10's training set as JPEG (--extra-cifar) holds nearly every image of the lossless subset (390 of
    its 400 validation images, seed 0), so without this the subset's validation split, which the small-image
    operating point is fitted on, was trained on too.
    """
    if not len(held_out) or not len(images):
        return images
    held = held_out.flatten(1).float()
    scale = held.shape[1] ** 0.5
    distinct = [torch.cdist(part.flatten(1).float(), held).amin(1) / scale > COPY_RMS for part in images.split(chunk)]
    return images[torch.cat(distinct)]
