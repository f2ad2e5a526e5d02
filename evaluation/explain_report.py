"""Grad-CAM report: the example-heatmap figure and the occluded-quadrant check, in-process.

python -m evaluation.explain_report --data ../shared/data/cifar10-subset/test --figure reports/gradcam_examples.png

Prints how often the heatmap's mass lands in the quadrant hiding a solid
occluding square (chance: 1 in 4). tests/test_explanations.py sends the very
same cases through TorchServe's explanations API.
"""

import argparse
import base64
import io
from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as F
from matplotlib.figure import Figure
from PIL import Image

from detector.corruptions import KINDS, SAMPLE_KINDS, corrupt
from detector.decoding import decode_image
from detector.explain import GradCamExplainer
from detector.inference import CorruptionDetector
from detector.preprocessing import INPUT_SIZE, resize_to_input
from training.archive import SHIPPED_WEIGHTS
from training.data import SUBSET, find_images

QUADRANT_CASES = 100
# Occluding squares of 8 to 12 px (6 to 14% of the image, occlusion severities 2 to 4) inside one 16x16 quadrant.
SQUARE_SIDES = (8, 12)
SEED = 0
FIGURE_ROWS = 4
FIGURE_SEVERITY = 4


def sample_images(data: Path, count: int) -> list[torch.Tensor]:
    """`count` images spread evenly over the sorted files (so over every class folder), at input size."""
    paths = find_images(data)
    step = max(1, len(paths) // count)
    return [resize_to_input(decode_image(path.read_bytes())) for path in paths[::step][:count]]


def occlude_quadrant(image: torch.Tensor, quadrant: int, generator: torch.Generator) -> torch.Tensor:
    """A solid square of random colour at a random place entirely inside `quadrant` (0 TL, 1 TR, 2 BL, 3 BR)."""
    half = INPUT_SIZE // 2
    side = int(torch.randint(SQUARE_SIDES[0], SQUARE_SIDES[1] + 1, (), generator=generator))
    top = (quadrant // 2) * half + int(torch.randint(0, half - side + 1, (), generator=generator))
    left = (quadrant % 2) * half + int(torch.randint(0, half - side + 1, (), generator=generator))
    colour = torch.randint(0, 256, (image.shape[0], 1, 1), generator=generator, dtype=torch.uint8)
    return F.erase(image, top, left, side, side, colour)


def quadrant_cases(images: Sequence[torch.Tensor], seed: int = SEED) -> list[tuple[torch.Tensor, int]]:
    """Each image occluded in one quadrant, quadrants taken in turn so each gets a quarter of the cases."""
    generator = torch.Generator().manual_seed(seed)
    return [(occlude_quadrant(image, index % 4, generator), index % 4) for index, image in enumerate(images)]


def heaviest_quadrant(heatmap: torch.Tensor) -> int:
    """The quadrant (0 TL, 1 TR, 2 BL, 3 BR) holding the most heatmap mass."""
    half = heatmap.shape[-1] // 2
    return int(heatmap.reshape(2, half, 2, half).sum(dim=(1, 3)).flatten().argmax())


def quadrant_hits(explainer: GradCamExplainer, cases: Sequence[tuple[torch.Tensor, int]]) -> int:
    """How many cases have their heatmap's heaviest quadrant where the occlusion is."""
    maps = explainer.heatmaps([image for image, _ in cases])
    return sum(heaviest_quadrant(heatmap) == quadrant for heatmap, (_, quadrant) in zip(maps, cases, strict=True))


def save_figure(detector: CorruptionDetector, images: Sequence[torch.Tensor], out: Path, seed: int = SEED) -> None:
    """A grid of the API's overlays: one row per image, clean then each corruption kind at one severity."""
    columns = SAMPLE_KINDS
    figure = Figure(figsize=(2 * len(columns), 2.15 * len(images)))
    axes = figure.subplots(len(images), len(columns))
    for row, image in enumerate(images):
        variants = [image] + [corrupt(image, kind, FIGURE_SEVERITY, seed + row) for kind in KINDS]
        views = [variant.unsqueeze(0) for variant in variants]  # 32x32 images: the whole view is the only one
        bodies = detector.answer(views, explain=[True] * len(views))
        for axis, column, body in zip(axes[row], columns, bodies, strict=True):
            overlay = Image.open(io.BytesIO(base64.b64decode(body["explanation"]["overlay_png"])))
            axis.imshow(overlay)
            axis.set_title(f"{column}\np(corrupted) = {body['probs']['corrupted']:.2f}", fontsize=9)
            axis.axis("off")
    figure.suptitle(f'Grad-CAM of "corrupted" ({detector.explainer.layer}); corruptions at severity {FIGURE_SEVERITY}')
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=72)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A 256-colour palette makes the committed PNG four times smaller (~110 kB) at no visible cost.
    Image.open(buffer).convert("RGB").quantize(256).save(out, optimize=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=SHIPPED_WEIGHTS)
    parser.add_argument("--data", type=Path, default=SUBSET / "test")
    parser.add_argument("--figure", type=Path, default=None, help="write the example-heatmap figure here (PNG)")
    args = parser.parse_args(argv)

    detector = CorruptionDetector(args.weights)
    cases = quadrant_cases(sample_images(args.data, QUADRANT_CASES))
    hits = quadrant_hits(detector.explainer, cases)
    print(f"heaviest heatmap quadrant = occluded quadrant: {hits}/{len(cases)} ({hits / len(cases):.0%}; chance 25%)")
    if args.figure:
        save_figure(detector, sample_images(args.data, FIGURE_ROWS), args.figure)
        print(args.figure)


if __name__ == "__main__":
    main()
