"""Clean image sources (CIFAR-10 or any image folder) and the clean-vs-corrupted dataset."""

from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.transforms.v2.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from detector.corruptions import KINDS, SAMPLE_KINDS, SEVERITIES, camera_jpeg, corrupt
from detector.decoding import decode_image
from detector.preprocessing import normalise, resize_to_input

# The lossless CIFAR-10 subset laid beside the project (../shared/data): tests, benchmarks, CPU training.
SUBSET = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
CIFAR10 = "cifar10"


def find_images(root: Path) -> list[Path]:
    """Every image file under `root`, recursively, in a stable order."""
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    return paths


def load_clean_images(
    source: str, limit: int | None = None, train: bool = True, download_root: Path = Path("data")
) -> torch.Tensor:
    """Load clean images as one uint8 (N, 3, 32, 32) tensor through the serving preprocessing.

    `source` is "cifar10" (torchvision; downloaded into `download_root` when missing,
    `train` picks the split) or a folder searched recursively.
    """
    if source == CIFAR10:
        dataset = torchvision.datasets.CIFAR10(str(download_root), train=train, download=True)
        count = len(dataset) if limit is None else min(limit, len(dataset))
        images = (dataset[i][0] for i in range(count))
    else:
        paths = find_images(Path(source))[:limit]
        count = len(paths)
        images = (decode_image(path.read_bytes()) for path in paths)
    return torch.stack([resize_to_input(image) for image in tqdm(images, total=count, desc="loading", unit="img")])


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split into (train, validation) indices."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    n_val = round(count * val_fraction)
    return order[n_val:], order[:n_val]


class CorruptionDataset(Dataset):
    """Each clean image appears twice per epoch: once clean, once corrupted.

    That makes the classes exactly balanced. Corrupted copies cycle through all
    kind x severity pairs in a seeded order (so kinds and severities are balanced
    too), and each sample's randomness comes from (seed, epoch, index) alone, so a
    run is reproducible whatever the number of DataLoader workers. Items are
    (normalised image, label 0/1, kind index into SAMPLE_KINDS, severity 0..5).

    With `augment` (training): random horizontal flips; each corrupted copy's
    severity is drawn uniformly within half a step of its row (clipped to 1..5),
    so the model sees every strength, not five recipes; and a quarter of the clean
    copies are re-encoded as camera-quality JPEGs, which must stay "clean".
    """

    def __init__(self, images: torch.Tensor, seed: int, augment: bool = False) -> None:
        self.images = images
        self.seed = seed
        self.augment = augment
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw a new kind x severity assignment (and fresh noise) for this epoch."""
        self.epoch = epoch
        pairs = len(KINDS) * len(SEVERITIES)
        generator = torch.Generator().manual_seed(self._sample_seed(-1))
        self.assignment = (torch.arange(len(self.images)) % pairs)[
            torch.randperm(len(self.images), generator=generator)
        ]

    def __len__(self) -> int:
        return 2 * len(self.images)

    def _sample_seed(self, index: int) -> int:
        return int(np.random.SeedSequence([self.seed, self.epoch, index + 1]).generate_state(1)[0])

    def describe(self, index: int) -> tuple[int, int]:
        """(kind index, severity) of a sample without building it; (0, 0) for clean."""
        if index % 2 == 0:
            return 0, 0
        pair = int(self.assignment[index // 2])
        return 1 + pair // len(SEVERITIES), SEVERITIES[pair % len(SEVERITIES)]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        image, *truth = self.sample(index)
        return normalise(image), *truth

    def sample(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        """Item `index` with its image as uint8 CHW, before normalisation."""
        seed = self._sample_seed(index)
        image = self.images[index // 2]
        if self.augment and seed % 2:
            image = F.horizontal_flip(image)
        kind, severity = self.describe(index)
        if kind:
            image = corrupt(image, SAMPLE_KINDS[kind], self._strength(severity, seed), seed)
        elif self.augment and seed % 8 < 2:
            image = camera_jpeg(image, seed)
        return image, int(kind > 0), kind, severity

    def _strength(self, severity: int, seed: int) -> float:
        """The severity row itself, or with `augment` a draw within half a step of it."""
        if not self.augment:
            return severity
        jitter = np.random.default_rng(seed).uniform(-0.5, 0.5)
        return float(np.clip(severity + jitter, SEVERITIES[0], SEVERITIES[-1]))
