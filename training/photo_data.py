"""Training samples made the way users' images are made and seen: photos at many sizes, corrupted at photo scale,
saved as a camera saves them, then cut into exactly the views the server computes (detector/preprocessing.py).

Three streams, each a map-style dataset whose item randomness depends on (seed, stream, index) only:

- `WholeViewSamples`: a random part of a training photo, scaled to a random "native" size, clean or
  corrupted (every family, severity drawn in [min_severity, 5]; training.train.MIN_SEVERITY), saved as JPEG, and
  seen as the whole view.
  Noise, compression and pixelation are drawn only at sizes where the whole view can see them (within
  CROPS_FROM_DOWNSCALE of its size): on larger photos only the crops can, and the whole view is not
  asked to guess. A batch shares one aspect ratio and one view size (`ViewBatches`).
- `CropSamples`: native crops (from photos kept at full resolution, or shrunk up to 4x) clean or with
  noise, blur, motion, compression or pixelation, saved as JPEG on the grid the server's crops sit on, and
  placed where the server places them: on one of the photo's most detailed candidate boxes
  (detector.preprocessing.detail_boxes). Blur is made on the crop's surroundings at the radius it has
  on the whole photo, so a crop of a blurred 12 MP photo is as soft as the server's crop of it.
- `CifarSamples`: 32x32 images, clean or under the CIFAR table and the size-free photo kinds, so small
  images keep working.

Clean samples are saved at JPEG quality MIN_CLEAN_JPEG_QUALITY..100 or kept lossless; corrupted ones at
camera quality, so "corrupted" is never "saved at a lower quality than clean ones". A share of clean whole views
(`clean_jitter`) is made a little brighter or darker, flatter, or more or less colourful than the photo was
(`jitter_clean`): clean photos vary in light and colour, and a model that learnt the training photos' own
balance as "clean" reads a bright, saturated or hazy scene it never saw as exposure, colour or contrast damage.
"""

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torch.utils.data import Dataset, Sampler

from detector.corruptions import (
    CAMERA_JPEG_QUALITY,
    CIFAR_CORRUPTIONS,
    CORRUPTIONS,
    KIND_TYPES,
    MIN_CLEAN_JPEG_QUALITY,
    SAMPLE_KINDS,
    SEVERITIES,
    apply_seeded,
    camera_jpeg,
    encode_jpeg,
    to_pil,
)
from detector.decoding import decode_image
from detector.model import CROP_TYPES, FINE_TYPES
from detector.preprocessing import (
    CROP_GRID,
    CROP_SIZE,
    CROPS_FROM_DOWNSCALE,
    GLOBAL_SIDE,
    MIN_SIDE,
    detail_boxes,
    has_crops,
    normalise,
    whole_view,
)
from training.corpus import SPLITS, BuiltPhoto, load_built

# Photos are kept in memory twice: at full resolution for crops, and at most this long for whole views.
WHOLE_CACHE_LONG_SIDE = 1280
# Whole-view samples are made at a "native" shorter side up to this many times the view's.
MAX_DOWNSCALE = 5.0
# Aspect ratios (width / height) a batch of whole views is drawn with: the common camera and phone shapes.
ASPECTS = (1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3, 16 / 9)
# Share of whole-view batches made of images smaller than the view (seen at their own size).
SMALL_BATCH_SHARE = 0.15
CLEAN_SHARE = 0.5
# The photometric kinds a clean whole view may be jittered by, by up to this share of the table's mildest
# severity: half of severity 1 (a quarter stop, 0.4 saturation stops, 87.5% of the contrast kept) is a
# photographer's taste, not damage.
CLEAN_JITTER_KINDS = ("exposure", "low_contrast", "saturation")
CLEAN_JITTER_REACH = 0.5
GREYSCALE_SHARE = 0.05
LOSSLESS_CLEAN_SHARE = 0.3
# Kinds the crop head learns (their family is one of FINE_TYPES).
CROP_KINDS = tuple(kind for kind, c in CORRUPTIONS.items() if c.family in FINE_TYPES)
# Kinds a downscale hides: whole-view samples draw them only at sizes where the whole view can still see them.
DOWNSCALE_HIDDEN_FAMILIES = ("noise", "compression", "pixelation")
DOWNSCALE_HIDDEN_KINDS = tuple(kind for kind, c in CORRUPTIONS.items() if c.family in DOWNSCALE_HIDDEN_FAMILIES)
# Pixels of a crop's surroundings (a multiple of CROP_GRID) made and damaged with it: what a blur draws in.
CROP_CONTEXT = 4 * CROP_GRID
# Photo kinds that mean the same at 32 px as on a photo (no spatial parameter), added to the CIFAR table's.
SIZE_FREE_KINDS = ("photon_noise", "low_contrast", "saturation", "pixelation")
CIFAR_KINDS = (*CIFAR_CORRUPTIONS, *SIZE_FREE_KINDS)


# The sizes (longer side) and JPEG qualities clean photos are judged at: by the calibration and the evaluation.
# None is the photo's own size, for photos of at least LARGE_PHOTO px.
PHOTO_SIZES = (640, 1024, 1600, None)
LARGE_PHOTO = 3000
CLEAN_QUALITIES = (92, 80)
# Each stream draws from its own generators, so adding one stream never changes another's samples.
WHOLE_STREAM, SHAPE_STREAM, CROP_STREAM, CIFAR_STREAM = range(4)


def sample_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator of one sample: a function of (seed, stream, index) alone, whatever the worker."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


def torch_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**62))


def group_draw_weights(photos: Sequence[BuiltPhoto], exponent: float) -> np.ndarray | None:
    """Each photo's chance of being drawn when a source group's share of the draws goes as its number of photos
    to the power `exponent`: 1 draws every photo alike (None: plain uniform draws), 0 every group alike, 0.5 in
    between. Three of the training corpus's 81 groups hold 104 of its 269 photos; drawn per photo, those three sources
    get twice the draws of its 48 groups of one photo together."""
    if exponent == 1:
        return None
    sizes = Counter(photo_group(photo) for photo in photos)
    weights = np.array([sizes[photo_group(photo)] ** (exponent - 1.0) for photo in photos])
    return weights / weights.sum()


@dataclass
class PhotoSet:
    """Training photos in memory: full resolution (for crops) and shrunk (for whole views), uint8 CHW, and the
    chance each is drawn (None: all alike; `group_draw_weights`)."""

    native: list[torch.Tensor]
    shrunk: list[torch.Tensor]
    weights: np.ndarray | None = None

    def draw(self, rng: np.random.Generator) -> int:
        """The index of a photo drawn from `rng` by the set's weights."""
        if self.weights is None:
            return int(rng.integers(0, len(self.native)))
        return int(rng.choice(len(self.native), p=self.weights))

    @classmethod
    def load(cls, folder: str, photos: Sequence[BuiltPhoto], group_exponent: float = 1.0) -> "PhotoSet":
        natives, shrunks = [], []
        for photo in photos:
            with open(f"{folder}/{photo.file}", "rb") as file:
                image = decode_image(file.read())
            if photo.half_size:  # saved below the clean quality cut-off: only its half-size self is clean
                image = image.reduce(2)
            natives.append(F.pil_to_tensor(image))
            if max(image.size) > WHOLE_CACHE_LONG_SIDE:
                image = at_long_side(image, WHOLE_CACHE_LONG_SIDE)
            shrunks.append(F.pil_to_tensor(image))
        return cls(natives, shrunks, group_draw_weights(photos, group_exponent))


def save_like_a_camera(image: torch.Tensor, corrupted: bool, rng: np.random.Generator) -> torch.Tensor:
    """Clean: a JPEG at MIN_CLEAN_JPEG_QUALITY..100 or lossless; corrupted: a JPEG at camera quality."""
    if not corrupted and rng.random() < LOSSLESS_CLEAN_SHARE:
        return image
    return camera_jpeg(image, rng, CAMERA_JPEG_QUALITY if corrupted else (MIN_CLEAN_JPEG_QUALITY, 100))


def random_part(photo: torch.Tensor, aspect: float, rng: np.random.Generator) -> torch.Tensor:
    """A random part of a photo with the given aspect ratio, covering 35-100% of the largest such part."""
    height, width = photo.shape[-2:]
    full_h = min(height, width / aspect)
    part_h = full_h * math.sqrt(rng.uniform(0.35, 1.0))
    part_w = min(width, part_h * aspect)
    part_h, part_w = max(1, round(part_h)), max(1, round(part_w))
    top, left = int(rng.integers(0, height - part_h + 1)), int(rng.integers(0, width - part_w + 1))
    return photo[:, top : top + part_h, left : left + part_w]


def corrupt_or_not(
    image: torch.Tensor,
    kinds: Sequence[str],
    table: dict,
    rng: np.random.Generator,
    whole_short_side: int | None = None,
    min_severity: float = SEVERITIES[0],
) -> tuple:
    """(image, its index in SAMPLE_KINDS): clean with CLEAN_SHARE, else one of `kinds` at a random severity in
    [min_severity, the table's last] (`whole_short_side`: the image is part of a larger one,
    detector.corruptions.Corruption)."""
    if rng.random() < CLEAN_SHARE:
        return image, 0
    kind = kinds[int(rng.integers(0, len(kinds)))]
    severity = float(rng.uniform(min_severity, SEVERITIES[-1]))
    corruption = table.get(kind, CORRUPTIONS[kind])
    return corruption(image, severity, torch_seed(rng), whole_short_side), SAMPLE_KINDS.index(kind)


def jitter_clean(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A clean image under one CLEAN_JITTER_KINDS change, drawn between none and CLEAN_JITTER_REACH of the
    table's severity 1 (the table's own functions, so the jitter is the damage's direction at a harmless size)."""
    corruption = CORRUPTIONS[CLEAN_JITTER_KINDS[int(rng.integers(0, len(CLEAN_JITTER_KINDS)))]]
    value = corruption.unchanged + (corruption.values[0] - corruption.unchanged) * rng.uniform(0, CLEAN_JITTER_REACH)
    return apply_seeded(corruption.apply, image, value, torch_seed(rng))


@dataclass(frozen=True)
class WholeViewRequest:
    """One whole-view sample to make: its index and the batch's shape."""

    index: int
    aspect: float
    small_side: int | None  # the native shorter side of a batch of small images, None for photo-sized ones

    @property
    def view_shape(self) -> tuple[int, int]:
        """(height, width) every view of the batch has: the whole view of an image of this aspect and size."""
        short = self.small_side or GLOBAL_SIDE
        return (short, round(short * self.aspect)) if self.aspect >= 1 else (round(short / self.aspect), short)


class WholeViewSamples(Dataset):
    """Whole views of training photos, clean or corrupted (see the module docstring). Items are
    (normalised view, label, sample kind, type index)."""

    def __init__(
        self, photos: PhotoSet, seed: int, min_severity: float = SEVERITIES[0], clean_jitter: float = 0.0
    ) -> None:
        self.photos = photos
        self.seed = seed
        self.min_severity = min_severity
        self.clean_jitter = clean_jitter

    def __getitem__(self, request: WholeViewRequest) -> tuple[torch.Tensor, int, int, int]:
        rng = sample_rng(self.seed, WHOLE_STREAM, request.index)
        source = self.photos.shrunk[self.photos.draw(rng)]
        part = random_part(source, request.aspect, rng)
        fine = rng.random() < len(DOWNSCALE_HIDDEN_KINDS) / len(CORRUPTIONS)  # drawn first: it limits the size
        short = min(part.shape[-2:])
        if request.small_side is not None:
            side = min(short, request.small_side)
        else:
            limit = GLOBAL_SIDE * (CROPS_FROM_DOWNSCALE if fine else MAX_DOWNSCALE)
            side = round(math.exp(rng.uniform(math.log(GLOBAL_SIDE), math.log(max(GLOBAL_SIDE, min(short, limit))))))
        scale = side / short
        image = F.resize(part, [max(1, round(part.shape[-2] * scale)), max(1, round(part.shape[-1] * scale))])
        if rng.random() < 0.5:
            image = F.horizontal_flip(image)
        if rng.random() < GREYSCALE_SHARE:
            image = F.rgb_to_grayscale(image, num_output_channels=3)
        kinds = DOWNSCALE_HIDDEN_KINDS if fine else tuple(k for k in CORRUPTIONS if k not in DOWNSCALE_HIDDEN_KINDS)
        image, kind = corrupt_or_not(image, kinds, CORRUPTIONS, rng, min_severity=self.min_severity)
        if kind == 0 and self.clean_jitter and rng.random() < self.clean_jitter:  # no draw without it: runs replay
            image = jitter_clean(image, rng)
        view = whole_view(to_pil(save_like_a_camera(image, kind > 0, rng)))
        if tuple(view.shape[-2:]) != request.view_shape:  # a pixel of rounding between samples of a batch
            view = F.resize(view, list(request.view_shape), antialias=True)
        return normalise(view), int(kind > 0), kind, KIND_TYPES[kind]


class ViewBatches(Sampler[list[WholeViewRequest]]):
    """Batches of whole-view requests sharing one aspect ratio and size: a batch's tensors must match."""

    def __init__(self, batches: int, batch_size: int, seed: int, first: int = 0) -> None:
        self.batches, self.batch_size, self.seed, self.first = batches, batch_size, seed, first

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list[WholeViewRequest]]:
        for batch in range(self.first, self.first + self.batches):
            rng = sample_rng(self.seed, SHAPE_STREAM, batch)
            aspect = ASPECTS[int(rng.integers(0, len(ASPECTS)))]
            small = int(rng.integers(MIN_SIDE, GLOBAL_SIDE)) if rng.random() < SMALL_BATCH_SHARE else None
            start = batch * self.batch_size
            yield [WholeViewRequest(start + i, aspect, small) for i in range(self.batch_size)]


class CropSamples(Dataset):
    """Native crops of training photos where they have most detail, clean or with a CROP_KINDS corruption
    (module docstring). Items are (normalised crop, label, sample kind, crop-type index into CROP_TYPES)."""

    def __init__(self, photos: PhotoSet, seed: int, min_severity: float = SEVERITIES[0]) -> None:
        self.photos = photos
        self.seed = seed
        self.min_severity = min_severity
        # A photo's whole view at any scale is its shrunk copy's: the crops' ranking by detail, made once.
        self.views = [whole_view(to_pil(shrunk)) for shrunk in photos.shrunk]

    def __len__(self) -> int:
        return 2**31 - 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        rng = sample_rng(self.seed, CROP_STREAM, index)
        chosen = self.photos.draw(rng)
        source = self.photos.native[chosen]
        height, width = source.shape[-2:]
        smallest = min(1.0, GLOBAL_SIDE * CROPS_FROM_DOWNSCALE * 1.1 / min(height, width))
        scale = math.exp(rng.uniform(math.log(max(0.25, smallest)), 0.0))  # as shipped, or shrunk up to 4x
        size = (max(1, round(width * scale)), max(1, round(height * scale)))  # the photo as the server gets it
        boxes = detail_boxes(self.views[chosen], *size) if has_crops(*size) else ((0, 0, CROP_SIZE, CROP_SIZE),)
        box = boxes[int(rng.integers(0, len(boxes)))]
        region = (
            max(0, box[0] - CROP_CONTEXT),
            max(0, box[1] - CROP_CONTEXT),
            min(size[0], box[2] + CROP_CONTEXT),
            min(size[1], box[3] + CROP_CONTEXT),
        )
        native = [round(edge / scale) for edge in region]
        patch = source[:, native[1] : max(native[1] + 1, native[3]), native[0] : max(native[0] + 1, native[2])]
        patch = F.resize(patch, [region[3] - region[1], region[2] - region[0]], antialias=True)
        patch, kind = corrupt_or_not(patch, CROP_KINDS, CORRUPTIONS, rng, min(size), self.min_severity)
        saved = save_like_a_camera(patch, kind > 0, rng)
        left, top = box[0] - region[0], box[1] - region[1]
        crop = saved[:, top : top + CROP_SIZE, left : left + CROP_SIZE]
        family = "clean" if kind == 0 else CORRUPTIONS[SAMPLE_KINDS[kind]].family
        return normalise(crop), int(kind > 0), kind, CROP_TYPES.index(family)


class CifarSamples(Dataset):
    """32x32 images, clean (a quarter re-saved as JPEG) or corrupted by CIFAR_KINDS. Items as WholeViewSamples."""

    def __init__(self, images: torch.Tensor, seed: int, min_severity: float = SEVERITIES[0]) -> None:
        self.images = images
        self.seed = seed
        self.min_severity = min_severity

    def __len__(self) -> int:
        return 2**31 - 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        rng = sample_rng(self.seed, CIFAR_STREAM, index)
        image = self.images[int(rng.integers(0, len(self.images)))]
        if rng.random() < 0.5:
            image = F.horizontal_flip(image)
        image, kind = corrupt_or_not(image, CIFAR_KINDS, CIFAR_CORRUPTIONS, rng, min_severity=self.min_severity)
        if kind == 0 and rng.random() < 0.25:
            image = save_like_a_camera(image, True, rng)  # clean at camera quality stays clean
        return normalise(image), int(kind > 0), kind, KIND_TYPES[kind]


class SharedSourceError(ValueError):
    """Two splits of a corpus share a source: validation or test figures would measure a source trained on."""


def photo_group(photo: BuiltPhoto) -> str:
    """The independent source a photo comes from: its manifest's group (the photographer or camera where the
    package says so), else its package. Corpora built before groups were recorded give the package."""
    group = getattr(photo, "group", None)
    if group:
        return group
    return photo.source.split(":")[1].split("=")[0] if ":" in photo.source else photo.source


def shared_groups(photos: Sequence[BuiltPhoto]) -> dict[str, list[str]]:
    """Each group found in more than one split, with those splits."""
    splits: dict[str, set[str]] = {}
    for photo in photos:
        splits.setdefault(photo_group(photo), set()).add(photo.split)
    return {group: sorted(found, key=SPLITS.index) for group, found in sorted(splits.items()) if len(found) > 1}


def check_split_by_group(photos: Sequence[BuiltPhoto]) -> None:
    """Refuse a corpus split by photo rather than by source: each group must lie in one split only."""
    shared = shared_groups(photos)
    if shared:
        listed = "; ".join(f"{group} in {', '.join(splits)}" for group, splits in shared.items())
        raise SharedSourceError(
            f"{len(shared)} source group(s) span splits ({listed}): split training/photo_corpus.json by group, "
            "so that validation and test hold sources training never sees"
        )


def load_split(folder: Path, split: str, exclude_groups: Sequence[str] = ()) -> list[BuiltPhoto]:
    """The photos of one split of a corpus split by source (refused otherwise), less any excluded groups
    (a leave-one-group-out fold)."""
    photos = [photo for name in SPLITS for photo in load_built(folder, name)]
    check_split_by_group(photos)
    return [p for p in photos if p.split == split and photo_group(p) not in exclude_groups]


def photo_sizes(width: int, height: int) -> list[int]:
    """The PHOTO_SIZES (longer side, px) a photo of this size is judged at: never enlarged, so a photo smaller
    than the first size is judged at its own size in its place."""
    long = max(width, height)
    sizes = [size or long for size in PHOTO_SIZES if (size or LARGE_PHOTO) <= long]
    return sizes or [long]


def at_long_side(image: Image.Image, long_side: int) -> Image.Image:
    """The image resized (antialiased) to this longer side; itself at its own size."""
    if max(image.size) == long_side:
        return image
    scale = long_side / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)


def clean_variants(path: str) -> list[bytes]:
    """A clean photo at every size it is judged at, saved at each CLEAN_QUALITIES: what a camera or site sends."""
    with open(path, "rb") as file:
        image = decode_image(file.read())
    return [encode_jpeg(at_long_side(image, size), q) for size in photo_sizes(*image.size) for q in CLEAN_QUALITIES]
