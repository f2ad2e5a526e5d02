"""The CIFAR evaluation sets: every test image clean and under every kind x severity of a corruption table."""

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from detector.corruptions import CIFAR_CORRUPTIONS, SEVERITIES, Corruption
from detector.preprocessing import normalise


class CorruptionGrid(Dataset):
    """Every image clean and under every kind x severity of `table`.

    Items are (normalised image, label, kind index 1.. into the table's kinds (0 clean), severity): the
    CIFAR table by default, evaluation.heldout.HELDOUT for kinds never trained on. The corruption seed
    depends on (seed, index) only, so every evaluation of the same images is identical.
    """

    def __init__(self, images: torch.Tensor, seed: int = 0, table: dict[str, Corruption] = CIFAR_CORRUPTIONS) -> None:
        self.images = images
        self.seed = seed
        self.corruptions = tuple(table.values())

    def __len__(self) -> int:
        return len(self.images) * (1 + len(self.corruptions) * len(SEVERITIES))

    def describe(self, index: int) -> tuple[int, int]:
        """(kind index, severity) of a sample; (0, 0) for clean."""
        pair = index // len(self.images)
        if pair == 0:
            return 0, 0
        return 1 + (pair - 1) // len(SEVERITIES), SEVERITIES[(pair - 1) % len(SEVERITIES)]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        image, *truth = self.sample(index)
        return normalise(image), *truth

    def sample(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        """Item `index` with its image as uint8 CHW, before normalisation."""
        image = self.images[index % len(self.images)]
        kind, severity = self.describe(index)
        if kind:
            seed = int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0])
            image = self.corruptions[kind - 1](image, severity, seed)
        return image, int(kind > 0), kind, severity


class Materialised(Dataset):
    """A corruption grid computed once and kept as uint8, so the CNN and the baseline see the same pixels."""

    def __init__(self, grid: CorruptionGrid) -> None:
        samples = [grid.sample(i) for i in tqdm(range(len(grid)), desc="corrupting", unit="img", leave=False)]
        images, labels, kinds, severities = zip(*samples, strict=True)
        self.images = torch.stack(images)
        self.label, self.kind, self.severity = (torch.tensor(column) for column in (labels, kinds, severities))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        return normalise(self.images[index]), self.label[index], self.kind[index], self.severity[index]
