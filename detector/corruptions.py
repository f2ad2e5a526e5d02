"""The corruption table: the single definition of what "corrupted" means, at photo scale.

Training, evaluation and the tests import `CORRUPTIONS` from here, so a severity changed in this
file changes all of them at once. Every corruption works on a uint8 (3, H, W) tensor at the image's
native resolution, and every spatial parameter is relative to the image's shorter side, so a
severity looks the same to the eye on a 640 px snapshot and on a 12 MP photo. Each kind is made the
way cameras and pipelines make it; what a camera or pipeline does afterwards (saving the result as a
JPEG) is the photo pipeline's job (`training.photo_data`, `evaluation.photo_eval`), not the table's.

Severity 1 is subtle, 3 is plainly visible on a photo (the targets' "visible severities" start
there), 5 is unmistakable. Each kind belongs to a family: the corruption type the model's second
head predicts (`TYPES`, with `CLEAN` first).

| kind               | family      | parameter (% = of the shorter side)   | 1     | 2     | 3    | 4    | 5    |
|--------------------|-------------|---------------------------------------|-------|-------|------|------|------|
| gaussian_noise     | noise       | noise std on [0, 1]                   | 0.015 | 0.025 | 0.04 | 0.06 | 0.09 |
| photon_noise       | noise       | Poisson shot-noise std at mid grey    | 0.015 | 0.025 | 0.04 | 0.06 | 0.09 |
| gaussian_blur      | blur        | blur sigma, %                         | 0.25  | 0.4   | 0.6  | 1.0  | 1.6  |
| lens_blur          | blur        | defocus disk radius, %                | 0.5   | 0.8   | 1.2  | 2.0  | 3.2  |
| shake_blur         | motion      | streak length at a random angle, %    | 0.7   | 1.2   | 2.0  | 3.5  | 6.0  |
| jpeg_compression   | compression | JPEG quality                          | 30    | 22    | 15   | 10   | 6    |
| jpeg_recompression | compression | quality of 3 downscale-and-save steps | 45    | 35    | 25   | 18   | 12   |
| exposure           | exposure    | stops of linear light, +/- at random  | 0.5   | 1.0   | 2.0  | 2.5  | 3.0  |
| low_contrast       | contrast    | contrast kept (towards mean or haze)  | 0.75  | 0.55  | 0.4  | 0.3  | 0.2  |
| saturation         | colour      | saturation stops, loss or gain        | 0.8   | 1.2   | 1.6  | 2.0  | 2.5  |
| occlusion          | occlusion   | area: solid, textured or soft blob    | 0.05  | 0.08  | 0.12 | 0.2  | 0.3  |
| pixelation         | pixelation  | downscale factor (box down, nearest up) | 3   | 4     | 6    | 10   | 16   |

Clean stays clean: photos resized to any size, saved as JPEG at quality `MIN_CLEAN_JPEG_QUALITY` (70)
or above (the web's common 75-85 and every camera's 85-100; below 70 blocks start to show on flat areas,
and the compression family starts at 30, leaving 31-69 as neither), PNG, greyscale photos, and shallow
depth of field (a soft background behind a sharp subject is a lens at work, not damage: the blur
family blurs the whole frame, and the evaluation's clean photos include such shots, e.g. the nuthatch
and the dandelions).

The CIFAR grid (32x32 images) keeps its own severities, `CIFAR_ROWS`, in the same units, for the five
kinds it always had. At 32 px, photo severities of blur are sub-pixel and invisible, so the CIFAR rows
are stronger where pixels demand it:

| CIFAR kind       | CIFAR rows (sev 1..5), same units     | before this table (unchanged)  | photo severity |
|------------------|---------------------------------------|--------------------------------|----------------|
| gaussian_noise   | 0.02, 0.04, 0.06, 0.09, 0.13          | the same                       | 1.5 .. >5      |
| gaussian_blur    | 1.56, 2.19, 3.13, 4.06, 5.31 %        | sigma 0.5 .. 1.7 px at 32 px   | all >5         |
| jpeg_compression | 55, 40, 25, 15, 8                     | the same qualities             | <1 .. 4.5      |
| exposure         | 0.55, 1.1, 2.2, 3.3, 4.4 linear stops | 0.25 .. 2 stops on sRGB values | 1 .. >5        |
| occlusion        | 0.03, 0.06, 0.12, 0.2, 0.3, solid     | the same rectangles            | <1 .. 5        |
"""

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image, ImageFilter

SEVERITIES = (1, 2, 3, 4, 5)
# The severity from which every family is plainly visible on a photo: the detection targets start here.
VISIBLE_SEVERITY = 3
# The severities whose damage is plainly visible: the detection targets, "severities 3-5" in the reports.
VISIBLE_SEVERITIES = tuple(severity for severity in SEVERITIES if severity >= VISIBLE_SEVERITY)
CLEAN = "clean"
# A JPEG saved at or above this quality is not a corruption (see the module docstring for why 70).
MIN_CLEAN_JPEG_QUALITY = 70
# What cameras and phones save at: training re-saves clean and corrupted photos in this range.
CAMERA_JPEG_QUALITY = (85, 95)
# Linear light: sRGB is close to a 2.2 power law, so k stops of linear light multiply sRGB values by 2**(k / 2.2).
GAMMA = 2.2
# Blurs wider than this (pixels) are made at a reduced scale and resized back: a kernel this size covers any
# photo quickly, and what the downscale removes is finer than what the blur would remove anyway.
MAX_KERNEL_RADIUS = 8

Parameter = float | tuple[float, ...]


@dataclass(frozen=True)
class Corruption:
    """One corruption kind: its family, its parameter per severity and how to apply it.

    Used for the training table here and for the evaluation-only held-out table
    (evaluation/heldout.py), so both are applied, seeded and tested the same way.
    """

    kind: str
    family: str
    parameter: str
    values: tuple[Parameter, ...]
    apply: Callable[[torch.Tensor, Any], torch.Tensor]
    relative: bool = False  # the parameter is a share of the image's shorter side
    unchanged: float | None = None  # the parameter that leaves an image as it was, where the kind has one

    def value(self, severity: float) -> Parameter:
        """The parameter for a severity in [1, 5]: the table's row at 1..5, linear in between.

        Training draws severities between the rows, so the model learns every strength
        of a family rather than five recipes; evaluation uses the rows. Only numeric
        parameters can be interpolated.
        """
        if not SEVERITIES[0] <= severity <= SEVERITIES[-1]:
            raise ValueError(f"severity must be within {SEVERITIES[0]}..{SEVERITIES[-1]}, got {severity}")
        if float(severity).is_integer():
            return self.values[int(severity) - 1]
        if not all(isinstance(value, int | float) for value in self.values):
            raise ValueError(f"{self.kind} has tuple parameters: use a severity of 1..5, got {severity}")
        return float(np.interp(severity, SEVERITIES, self.values))

    def __call__(
        self, image: torch.Tensor, severity: float, seed: int, whole_short_side: int | None = None
    ) -> torch.Tensor:
        """This corruption at `severity` on a uint8 (3, H, W) image; the same seed gives the same result.

        With `whole_short_side`, the image is a part of a larger one whose shorter side that is: a parameter
        relative to the shorter side (a blur's radius) takes the whole image's, so the part is damaged as it
        would be inside the whole (how training makes native crops of a blurred photo without blurring all of it).
        """
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a uint8 (3, H, W) image, got {image.dtype} {tuple(image.shape)}")
        value = self.value(severity)
        if whole_short_side is not None and self.relative:
            value = value * whole_short_side / short_side(image)
        return apply_seeded(self.apply, image, value, seed)


def apply_seeded(
    apply: Callable[[torch.Tensor, Any], torch.Tensor], image: torch.Tensor, value: Any, seed: int
) -> torch.Tensor:
    """`apply(image, value)` under torch's global generator forked and seeded with `seed`.

    The corruptions draw from torch's global generator: forking it makes results depend on the seed
    alone (not on what ran before, nor on DataLoader workers) and leaves the caller's generator untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return apply(image, value)


def short_side(image: torch.Tensor) -> int:
    return min(image.shape[-2:])


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def from_pil(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def _sign() -> float:
    return -1.0 if torch.rand(()) < 0.5 else 1.0


def _gaussian_noise(image: torch.Tensor, sigma: float) -> torch.Tensor:
    noisy = F.gaussian_noise(F.to_dtype(image, torch.float32, scale=True), sigma=sigma, clip=True)
    return F.to_dtype(noisy, torch.uint8, scale=True)


def _photon_noise(image: torch.Tensor, sigma_at_mid_grey: float) -> torch.Tensor:
    """Shot noise of a sensor: Poisson counts, so the noise grows with the square root of the signal."""
    photons = 0.5 / sigma_at_mid_grey**2
    signal = F.to_dtype(image, torch.float32, scale=True)
    # Poisson(n) is Normal(n, sqrt(n)) to the eye at these photon counts, and many times faster to draw.
    noisy = signal + torch.randn_like(signal) * torch.sqrt(signal / photons)
    return F.to_dtype(noisy.clamp(0, 1), torch.uint8, scale=True)


def _convolve_at_scale(image: torch.Tensor, radius: float, kernel: Callable[[float], torch.Tensor]) -> torch.Tensor:
    """Convolve with `kernel(radius)` (a 2-D kernel summing to 1), at a reduced scale when the radius is large.

    A radius beyond MAX_KERNEL_RADIUS is met by shrinking the image by radius / MAX_KERNEL_RADIUS, convolving
    there and resizing back: cheap for any photo, and the shrinking only removes detail the blur removes too.
    """
    height, width = image.shape[-2:]
    scale = max(1.0, radius / MAX_KERNEL_RADIUS)
    work = image
    if scale > 1:
        work = F.resize(image, [max(1, round(height / scale)), max(1, round(width / scale))], antialias=True)
    weights = kernel(radius / scale)
    pad = [weights.shape[1] // 2, weights.shape[1] // 2, weights.shape[0] // 2, weights.shape[0] // 2]
    padded = torch.nn.functional.pad(work.float()[None], pad, mode="replicate")
    blurred = torch.nn.functional.conv2d(padded, weights.expand(3, 1, *weights.shape), groups=3)[0]
    blurred = blurred.round().clamp(0, 255).to(torch.uint8)
    if scale > 1:
        blurred = F.resize(blurred, [height, width], interpolation=F.InterpolationMode.BICUBIC, antialias=False)
    return blurred


def _gaussian_blur(image: torch.Tensor, percent: float) -> torch.Tensor:
    sigma = percent / 100 * short_side(image)
    if 3 * sigma <= MAX_KERNEL_RADIUS:  # exact and cheap at this size
        kernel = 2 * math.ceil(3 * sigma) + 1
        return F.gaussian_blur(image, kernel_size=[kernel, kernel], sigma=[sigma, sigma])
    return from_pil(to_pil(image).filter(ImageFilter.GaussianBlur(radius=sigma)))


def disk_kernel(radius: float) -> torch.Tensor:
    """An anti-aliased disk of `radius` pixels (4x supersampled), summing to 1: a lens out of focus."""
    half = math.ceil(radius)
    samples = (torch.arange(-half * 4 - 2, half * 4 + 2) + 0.5) / 4
    ys, xs = torch.meshgrid(samples, samples, indexing="ij")
    inside = ((xs**2 + ys**2) <= max(radius, 0.5) ** 2).float()
    kernel = torch.nn.functional.avg_pool2d(inside[None, None], 4)[0, 0]
    return kernel / kernel.sum()


def _lens_blur(image: torch.Tensor, percent: float) -> torch.Tensor:
    return _convolve_at_scale(image, percent / 100 * short_side(image), disk_kernel)


def line_kernel(length: float, angle: float) -> torch.Tensor:
    """A straight streak of `length` pixels at `angle` radians (anti-aliased by 8 samples per pixel), summing to 1."""
    half = math.ceil(length / 2) + 1
    kernel = torch.zeros(2 * half + 1, 2 * half + 1)
    for t in torch.linspace(-length / 2, length / 2, max(2, round(8 * length))):
        x, y = half + float(t) * math.cos(angle), half + float(t) * math.sin(angle)
        x0, y0 = math.floor(x), math.floor(y)
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
            weight = (1 - abs(x - x0 - dx)) * (1 - abs(y - y0 - dy))
            if 0 <= y0 + dy < kernel.shape[0] and 0 <= x0 + dx < kernel.shape[1]:
                kernel[y0 + dy, x0 + dx] += weight
    return kernel / kernel.sum()


def _shake_blur(image: torch.Tensor, percent: float) -> torch.Tensor:
    angle = _uniform(0, math.pi)
    return _convolve_at_scale(image, percent / 100 * short_side(image) / 2, lambda r: line_kernel(2 * r, angle))


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    """The image as a JPEG file at `quality`: Pillow's libjpeg, 4:2:0 chroma as cameras and browsers use.
    Every JPEG the project saves (corruptions, training samples, evaluation cases) is saved here."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


def jpeg_roundtrip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """Save as a JPEG at `quality` (`encode_jpeg`) and decode it."""
    return from_pil(Image.open(io.BytesIO(encode_jpeg(to_pil(image), quality))))


def _jpeg(image: torch.Tensor, quality: float) -> torch.Tensor:
    return jpeg_roundtrip(image, round(quality))


def _jpeg_recompression(image: torch.Tensor, quality: float) -> torch.Tensor:
    """A re-posted picture: three generations of downscaling to 75-90% and saving at quality..quality+10."""
    height, width = image.shape[-2:]
    work = image
    for _ in range(3):
        scale = _uniform(0.75, 0.9)
        size = [max(8, round(work.shape[-2] * scale)), max(8, round(work.shape[-1] * scale))]
        work = jpeg_roundtrip(F.resize(work, size, antialias=True), round(quality + _uniform(0, 10)))
    return F.resize(work, [height, width], interpolation=F.InterpolationMode.BICUBIC, antialias=False)


def _exposure(image: torch.Tensor, stops: float) -> torch.Tensor:
    """Over- or under-exposure by `stops` of linear light (highlights clip as a sensor's do)."""
    return F.adjust_brightness(image, 2.0 ** (_sign() * stops / GAMMA))


def _low_contrast(image: torch.Tensor, kept: float) -> torch.Tensor:
    """Flat contrast (towards the image's mean) or haze (towards a light grey veil), keeping `kept` of it."""
    pixels = image.float()
    if torch.rand(()) < 0.5:
        target = pixels.mean(dim=(1, 2), keepdim=True)
    else:
        target = torch.full((3, 1, 1), 255 * _uniform(0.7, 0.9))
    return (kept * pixels + (1 - kept) * target).round().clamp(0, 255).to(torch.uint8)


def _saturation(image: torch.Tensor, stops: float) -> torch.Tensor:
    """Colours washed out or blown up by `stops` (a factor 2**stops on saturation), never fully grey."""
    return F.adjust_saturation(image, 2.0 ** (_sign() * stops))


def _rectangle(height: int, width: int, area_fraction: float) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a rectangle of random aspect covering `area_fraction`, anywhere, edges included."""
    aspect = math.exp(math.log(2.0) * (2 * float(torch.rand(())) - 1))
    area = area_fraction * height * width
    h = min(height, max(1, round(math.sqrt(area / aspect))))
    w = min(width, max(1, round(math.sqrt(area * aspect))))
    # Positions are drawn as fractions of the free room: the same seed places it alike at any size.
    return round(float(torch.rand(())) * (height - h)), round(float(torch.rand(())) * (width - w)), h, w


def _solid_rectangle(image: torch.Tensor, area_fraction: float) -> torch.Tensor:
    """One solid rectangle of random colour, aspect ratio and position."""
    top, left, h, w = _rectangle(*image.shape[-2:], area_fraction)
    colour = torch.randint(0, 256, (image.shape[0], 1, 1), dtype=torch.uint8)
    return F.erase(image, top, left, h, w, colour)


def _textured_rectangle(image: torch.Tensor, area_fraction: float) -> torch.Tensor:
    """A rectangle of a smooth random texture (a label, a strap, a printed sticker)."""
    top, left, h, w = _rectangle(*image.shape[-2:], area_fraction)
    coarse = torch.rand(3, 4, 4) * 255
    texture = F.resize(coarse, [h, w], interpolation=F.InterpolationMode.BICUBIC, antialias=False)
    stripes = torch.sin(torch.arange(w) * 2 * math.pi / max(4.0, w / _uniform(2, 12)))
    texture = (texture + 40 * stripes).clamp(0, 255).round().to(torch.uint8)
    occluded = image.clone()
    occluded[:, top : top + h, left : left + w] = texture
    return occluded


def _soft_blob(image: torch.Tensor, area_fraction: float) -> torch.Tensor:
    """A soft-edged ellipse pushed in from an edge or corner: a finger over the lens, a sticker, a strap."""
    height, width = image.shape[-2:]
    aspect = math.exp(math.log(2.5) * (2 * float(torch.rand(())) - 1))
    radius_y = math.sqrt(area_fraction * height * width / math.pi / aspect) * 1.25  # part of it falls outside
    radius_x = radius_y * aspect
    centre_y = height * float(torch.randint(0, 3, ())) / 2 + _uniform(-0.1, 0.1) * height
    centre_x = width * float(torch.randint(0, 3, ())) / 2 + _uniform(-0.1, 0.1) * width
    if abs(centre_y - height / 2) < height / 4 and abs(centre_x - width / 2) < width / 4:
        centre_x = 0.0  # never the exact centre: a finger comes from the side
    # The mask is drawn on a grid of at most 512 px and resized: a soft edge needs no finer drawing.
    step = max(1.0, max(height, width) / 512)
    grid_y = torch.arange(math.ceil(height / step)).float() * step
    grid_x = torch.arange(math.ceil(width / step)).float() * step
    ys, xs = torch.meshgrid(grid_y, grid_x, indexing="ij")
    distance = torch.sqrt(((ys - centre_y) / radius_y) ** 2 + ((xs - centre_x) / radius_x) ** 2)
    distance = F.resize(distance[None], [height, width], antialias=False)[0]
    feather = _uniform(0.05, 0.3)
    mask = ((1 - distance) / feather).clamp(0, 1)
    colour = torch.tensor([_uniform(40, 230), _uniform(20, 180), _uniform(10, 160)])[:, None, None]
    shade = 1 - 0.25 * distance.clamp(0, 1)  # a lit, rounded surface
    blended = mask * colour * shade + (1 - mask) * image.float()
    return blended.round().clamp(0, 255).to(torch.uint8)


def _occlusion(image: torch.Tensor, area_fraction: float) -> torch.Tensor:
    """One occluder covering about `area_fraction` of the image: solid, textured or a soft blob, at random."""
    style = int(torch.randint(0, 3, ()))
    return (_solid_rectangle, _textured_rectangle, _soft_blob)[style](image, area_fraction)


def _pixelation(image: torch.Tensor, factor: float) -> torch.Tensor:
    height, width = image.shape[-2:]
    small = to_pil(image).resize((max(1, round(width / factor)), max(1, round(height / factor))), Image.Resampling.BOX)
    return from_pil(small.resize((width, height), Image.Resampling.NEAREST))


CORRUPTIONS: dict[str, Corruption] = {
    c.kind: c
    for c in (
        Corruption("gaussian_noise", "noise", "noise std", (0.015, 0.025, 0.04, 0.06, 0.09), _gaussian_noise),
        Corruption("photon_noise", "noise", "std at mid grey", (0.015, 0.025, 0.04, 0.06, 0.09), _photon_noise),
        Corruption(
            "gaussian_blur",
            "blur",
            "sigma, % of shorter side",
            (0.25, 0.4, 0.6, 1.0, 1.6),
            _gaussian_blur,
            relative=True,
        ),
        Corruption(
            "lens_blur", "blur", "disk radius, % of shorter side", (0.5, 0.8, 1.2, 2.0, 3.2), _lens_blur, relative=True
        ),
        Corruption(
            "shake_blur", "motion", "streak, % of shorter side", (0.7, 1.2, 2.0, 3.5, 6.0), _shake_blur, relative=True
        ),
        Corruption("jpeg_compression", "compression", "JPEG quality", (30, 22, 15, 10, 6), _jpeg),
        Corruption("jpeg_recompression", "compression", "3 x quality", (45, 35, 25, 18, 12), _jpeg_recompression),
        Corruption("exposure", "exposure", "linear stops (+/-)", (0.5, 1.0, 2.0, 2.5, 3.0), _exposure, unchanged=0),
        Corruption(
            "low_contrast", "contrast", "contrast kept", (0.75, 0.55, 0.4, 0.3, 0.2), _low_contrast, unchanged=1
        ),
        Corruption(
            "saturation", "colour", "saturation stops (+/-)", (0.8, 1.2, 1.6, 2.0, 2.5), _saturation, unchanged=0
        ),
        Corruption("occlusion", "occlusion", "covered area fraction", (0.05, 0.08, 0.12, 0.2, 0.3), _occlusion),
        Corruption("pixelation", "pixelation", "downscale factor", (3, 4, 6, 10, 16), _pixelation),
    )
}
KINDS: tuple[str, ...] = tuple(CORRUPTIONS)
# What the corruption-type head predicts: CLEAN, then each family once, in table order.
TYPES: tuple[str, ...] = (CLEAN, *dict.fromkeys(corruption.family for corruption in CORRUPTIONS.values()))
# A sample's kind: CLEAN or one of KINDS. Datasets and metrics number kinds by their place here (0 is clean).
SAMPLE_KINDS: tuple[str, ...] = (CLEAN, *KINDS)
# The explicit kind -> type mapping: for each of SAMPLE_KINDS, the index in TYPES the type head is trained to say.
KIND_TYPES: tuple[int, ...] = tuple(
    TYPES.index(CLEAN if kind == CLEAN else CORRUPTIONS[kind].family) for kind in SAMPLE_KINDS
)
# The CIFAR grid's own rows for its five kinds (see the module docstring for the mapping to photo severities).
CIFAR_ROWS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.02, 0.04, 0.06, 0.09, 0.13),
    "gaussian_blur": tuple(100 * px / 32 for px in (0.5, 0.7, 1.0, 1.3, 1.7)),
    "jpeg_compression": (55, 40, 25, 15, 8),
    "exposure": tuple(GAMMA * stops for stops in (0.25, 0.5, 1.0, 1.5, 2.0)),
    "occlusion": (0.03, 0.06, 0.12, 0.2, 0.3),
}
# The CIFAR grid's table: the same kinds and code at CIFAR rows; occlusion is the solid rectangle it always was.
CIFAR_CORRUPTIONS: dict[str, Corruption] = {
    kind: replace(
        CORRUPTIONS[kind], values=rows, apply=_solid_rectangle if kind == "occlusion" else CORRUPTIONS[kind].apply
    )
    for kind, rows in CIFAR_ROWS.items()
}


def corrupt(image: torch.Tensor, kind: str, severity: float, seed: int) -> torch.Tensor:
    """Apply one training corruption at a severity in [1, 5] to a uint8 CHW image (seeded: see `apply_seeded`)."""
    return CORRUPTIONS[kind](image, severity, seed)


def camera_jpeg(
    image: torch.Tensor, rng: np.random.Generator, quality: tuple[int, int] = CAMERA_JPEG_QUALITY
) -> torch.Tensor:
    """The image saved as a camera would save it: a JPEG at a quality drawn by `rng` from `quality` (inclusive)."""
    return jpeg_roundtrip(image, int(rng.integers(quality[0], quality[1] + 1)))
