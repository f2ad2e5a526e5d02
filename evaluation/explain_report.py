"""Grad-CAM report on photos: the example-overlay figure and the occluded-quadrant check, in-process.

python -m evaluation.explain_report --photos data/photos --figure reports/gradcam_examples.png

Each test photo (at 640 px) gets a solid square of random colour inside one quadrant, 12-20% of the image
(occlusion severities 3-4); the report prints how often the heaviest quadrant of the explanation heatmap is
the occluded one (chance: 1 in 4). tests/test_explanations.py sends such cases through TorchServe's
explanations API.
"""

import argparse
import base64
import io
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure
from PIL import Image

from detector.corruptions import corrupt, from_pil, to_pil
from detector.decoding import decode_image
from detector.inference import CorruptionDetector
from detector.paths import SHIPPED_WEIGHTS
from detector.preprocessing import image_to_views
from evaluation.photo_eval import camera_save
from training.corpus import load_built
from training.photo_data import at_long_side

# Share of the image the occluding square covers, inside one quadrant (occlusion severities 3 to 4).
AREA = (0.12, 0.20)
SIDE = 640
SEED = 0
FIGURE_KINDS = ("clean", "occlusion", "gaussian_blur", "gaussian_noise", "exposure")
FIGURE_SEVERITY = 4


def sample_photos(folder: Path, split: str = "test", count: int | None = None) -> list[torch.Tensor]:
    """A corpus split's photos at SIDE px on the longer side, uint8 CHW."""
    photos = load_built(folder, split)[:count]
    return [from_pil(at_long_side(decode_image((folder / p.file).read_bytes()), SIDE)) for p in photos]


def occlude_quadrant(image: torch.Tensor, quadrant: int, generator: torch.Generator) -> torch.Tensor:
    """A solid square of random colour covering AREA of the image, entirely inside `quadrant` (0 TL .. 3 BR)."""
    height, width = image.shape[-2:]
    share = AREA[0] + (AREA[1] - AREA[0]) * float(torch.rand((), generator=generator))
    side = min(height // 2, width // 2, round((share * height * width) ** 0.5))
    top = (quadrant // 2) * (height // 2) + int(torch.randint(0, height // 2 - side + 1, (), generator=generator))
    left = (quadrant % 2) * (width // 2) + int(torch.randint(0, width // 2 - side + 1, (), generator=generator))
    occluded = image.clone()
    occluded[:, top : top + side, left : left + side] = torch.randint(0, 256, (3, 1, 1), generator=generator)
    return occluded


def quadrant_cases(images: Sequence[torch.Tensor], seed: int = SEED) -> list[tuple[torch.Tensor, int]]:
    """Each image occluded in one quadrant, quadrants taken in turn so each gets a quarter of the cases."""
    generator = torch.Generator().manual_seed(seed)
    return [(occlude_quadrant(image, index % 4, generator), index % 4) for index, image in enumerate(images)]


def heaviest_quadrant(heatmap: torch.Tensor) -> int:
    """The quadrant (0 TL, 1 TR, 2 BL, 3 BR) holding the most heatmap mass, for a map of any size."""
    height, width = heatmap.shape[-2:]
    rows, columns = torch.arange(height)[:, None] >= height / 2, torch.arange(width)[None, :] >= width / 2
    masses = [float(heatmap[(rows == bool(q // 2)) & (columns == bool(q % 2))].sum()) for q in range(4)]
    return max(range(4), key=masses.__getitem__)


def quadrant_hits(detector: CorruptionDetector, cases: Sequence[tuple[torch.Tensor, int]]) -> int:
    """How many cases have their explanation's heaviest quadrant where the occlusion is."""
    hits = 0
    for image, quadrant in cases:
        (body,) = detector.answer([image_to_views(to_pil(image))], explain=[True])
        hits += heaviest_quadrant(torch.tensor(body["explanation"]["heatmap"])) == quadrant
    return hits


def variant(image: torch.Tensor, kind: str, seed: int) -> bytes:
    """A photo clean or under one kind at FIGURE_SEVERITY, saved as a camera saves it."""
    damaged = image if kind == "clean" else corrupt(image, kind, FIGURE_SEVERITY, seed)
    return camera_save(damaged)


def save_figure(detector: CorruptionDetector, images: Sequence[torch.Tensor], out: Path, seed: int = SEED) -> None:
    """A grid of the API's overlays: one row per photo, clean then a few kinds at one severity."""
    figure = Figure(figsize=(3 * len(FIGURE_KINDS), 2.6 * len(images)))
    axes = figure.subplots(len(images), len(FIGURE_KINDS), squeeze=False)
    for row, image in enumerate(images):
        payloads = [variant(image, kind, seed + row) for kind in FIGURE_KINDS]
        records = detector.run(payloads, explain=[True] * len(payloads))
        for axis, kind, record in zip(axes[row], FIGURE_KINDS, records, strict=True):
            body = record.body
            axis.imshow(Image.open(io.BytesIO(base64.b64decode(body["explanation"]["overlay_png"]))))
            axis.set_title(f"{kind}\np(corrupted) = {body['probs']['corrupted']:.2f}", fontsize=9)
            axis.axis("off")
    figure.suptitle(f"Explanations of the view that decided; damage at severity {FIGURE_SEVERITY}")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=72)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A 256-colour palette keeps the committed PNG small at no visible cost.
    Image.open(buffer).convert("RGB").quantize(256).save(out, optimize=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=SHIPPED_WEIGHTS)
    parser.add_argument("--photos", type=Path, default=Path("data/photos"), help="the corpus (make photos)")
    parser.add_argument("--figure", type=Path, default=None, help="write the example-overlay figure here (PNG)")
    args = parser.parse_args(argv)

    detector = CorruptionDetector(args.weights)
    photos = sample_photos(args.photos)
    cases = quadrant_cases(photos)
    hits = quadrant_hits(detector, cases)
    print(f"heaviest heatmap quadrant = occluded quadrant: {hits}/{len(cases)} ({hits / len(cases):.0%}; chance 25%)")
    if args.figure:
        save_figure(detector, photos[:3], args.figure)
        print(args.figure)


if __name__ == "__main__":
    main()
