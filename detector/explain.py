"""Grad-CAM explanations: where in an image the model sees corruption, on the view that decided.

Server-agnostic: the inference core (detector/inference.py) calls it for the requests of a batch that
asked for an explanation. When the whole view decided, Captum's LayerGradCam weighs the activations of
the backbone's `cam_layer` (a stride-16 stage: 10x13 cells for a 160x213 view) by the gradient of the
whole view's "corrupted" logit, and the map has the image's own aspect ratio. When the native crops
decided (damage too fine for the whole view), each crop stands for its cell of the candidates' grid (the
crops sit where the image has most detail, detector/preprocessing.py): the map shades those cells by their
crop's P(corrupted) ("method": "crop-evidence"), which says where the damage was seen; a Grad-CAM of a
64-pixel crop would be a few pixels of the overview.

Every map is scaled to peak at 1 (a Grad-CAM is all zero where no region of the view raises the "corrupted"
logit), so a clean verdict's map would still show a hot spot: its body says the map is not evidence
("evidence": false) and its overlay shows the image plain.
"""

import base64
import io

import numpy as np
import torch
import torch.nn.functional as nnf
from captum.attr import LayerAttribution, LayerGradCam
from PIL import Image, ImageDraw, ImageFont

from detector.corruptions import to_pil
from detector.model import CorruptionNet
from detector.preprocessing import CANDIDATES, Views, grid_side, normalise

TARGET = "corrupted"
# The overlay shows the explained view with its longer side at this many pixels, at the view's own aspect
# ratio (nearest-neighbour when enlarging: pixels as the model sees them).
OVERLAY_SIZE = 256
# Heat is blended in proportion to its strength: cold regions show the image as it is.
MAX_ALPHA = 0.6
HEATMAP_DECIMALS = 3
# The heatmap a body carries has at most this many cells on its longer side, at the view's aspect ratio:
# finer than the Grad-CAM layer's own cells, and a few kilobytes of JSON.
HEATMAP_CELLS = 32
# matplotlib's "jet" colour map as (position, value) knots per channel, so the serving core needs no matplotlib.
JET = {
    "red": ((0.0, 0.35, 0.66, 0.89, 1.0), (0.0, 0.0, 1.0, 1.0, 0.5)),
    "green": ((0.0, 0.125, 0.375, 0.64, 0.91, 1.0), (0.0, 0.0, 1.0, 1.0, 0.0, 0.0)),
    "blue": ((0.0, 0.11, 0.34, 0.65, 1.0), (0.5, 1.0, 1.0, 0.0, 0.0)),
}
# The colour scale beside the image: a gap, the bar, and room for its tick labels; a caption line below.
BAR_GAP, BAR_WIDTH, BAR_LABELS, CAPTION_HEIGHT = 8, 12, 30, 18
BACKGROUND, INK = (255, 255, 255), (32, 33, 36)
CAPTIONS = {
    True: "Grad-CAM: where the model sees corruption",
    False: "clean verdict: no corruption to locate",
}
NOTES = {
    True: "The heatmap marks where the model sees evidence of corruption (Grad-CAM of the corrupted logit, "
    "scaled to peak at 1).",
    False: "The verdict is clean: the heatmap is scaled to peak at 1 whatever the evidence, so it is not evidence "
    "of corruption, and the overlay shows the image without it.",
}


def jet(values: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] of matplotlib's "jet" colour map for values in [0, 1] (shape (..., 3))."""
    return np.stack([np.interp(values, *JET[channel]) for channel in ("red", "green", "blue")], axis=-1)


def overlay_area(height: int, width: int) -> tuple[int, int]:
    """(width, height) of the image area for a view of height x width: its longer side OVERLAY_SIZE, same aspect."""
    scale = OVERLAY_SIZE / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _view_pixels(image: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """The uint8 CHW view resized to `size` (nearest when enlarging), as floats in [0, 1], HWC."""
    view = to_pil(image)
    enlarging = size[0] >= view.width and size[1] >= view.height
    resample = Image.Resampling.NEAREST if enlarging else Image.Resampling.BILINEAR
    return np.asarray(view.resize(size, resample), dtype=np.float64) / 255


def _colour_bar(canvas: Image.Image, left: int, height: int) -> None:
    """A vertical jet scale from 1 (top) to 0 (bottom) at x = left, with its ends and middle labelled."""
    ramp = jet(np.linspace(1, 0, height))[:, None, :].repeat(BAR_WIDTH, axis=1)
    canvas.paste(Image.fromarray((ramp * 255).round().astype(np.uint8)), (left, 0))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for value, y in (("1", 0), ("0.5", height // 2 - 5), ("0", height - 11)):
        draw.text((left + BAR_WIDTH + 3, max(0, y)), value, fill=INK, font=font)


def overlay_png(image: torch.Tensor, heatmap: torch.Tensor, evidence: bool = True) -> bytes:
    """PNG of the explained view (uint8 CHW, any size) at its aspect ratio, with the heatmap ((h, w), any size)
    blended over it and a colour scale beside it; a caption says how to read it.

    Without `evidence` (a clean verdict) the view is shown plain, without heat or scale: a map scaled to peak
    at 1 would paint a hot spot on an image the model finds clean.
    """
    width, height = overlay_area(*image.shape[1:])
    view = _view_pixels(image, (width, height))
    if evidence:
        heat = nnf.interpolate(heatmap[None, None].float(), size=(height, width), mode="bilinear")
        heat = heat[0, 0].clamp(0, 1).numpy()[..., None]
        view = (1 - MAX_ALPHA * heat) * view + MAX_ALPHA * heat * jet(heat[..., 0])
    font = ImageFont.load_default()
    scale = BAR_GAP + BAR_WIDTH + BAR_LABELS if evidence else 0
    canvas_width = max(width + scale, round(font.getlength(CAPTIONS[evidence])) + 4)
    canvas = Image.new("RGB", (canvas_width, height + CAPTION_HEIGHT), BACKGROUND)
    canvas.paste(Image.fromarray((view * 255).round().astype(np.uint8)), (0, 0))
    if evidence:
        _colour_bar(canvas, width + BAR_GAP, height)
    ImageDraw.Draw(canvas).text((2, height + 4), CAPTIONS[evidence], fill=INK, font=font)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def explanation_body(prediction: dict, image: torch.Tensor, heatmap: torch.Tensor, method: str, layer: str) -> dict:
    """The prediction body plus "explanation": the heatmap as rows of floats, whether it is evidence of
    corruption (only for a corrupted verdict), a note saying how to read it, and a base64 PNG overlay."""
    evidence = prediction["label"] == TARGET
    return {
        **prediction,
        "explanation": {
            "method": method,
            "target": TARGET,
            "layer": layer,
            "heatmap": heatmap.double().round(decimals=HEATMAP_DECIMALS).tolist(),
            "evidence": evidence,
            "note": NOTES[evidence],
            "overlay_png": base64.b64encode(overlay_png(image, heatmap, evidence)).decode("ascii"),
        },
    }


class GradCamExplainer:
    """Where the view that decided sees corruption: Grad-CAM of the whole view, or the crops' evidence."""

    def __init__(self, model: CorruptionNet, device: torch.device) -> None:
        self.model = model
        self.device = device
        self.layer = model.trunk.cam_layer
        self.gradcam = LayerGradCam(model, model.trunk.get_submodule(self.layer))

    def explain(self, views: Views, crops_decided: bool) -> tuple[str, torch.Tensor]:
        """(method, map in [0, 1] peaking at 1 or all zero, at the whole view's aspect ratio) for the view that
        decided."""
        if crops_decided and len(views.crops):
            method, heatmap = "crop-evidence", self.crop_evidence(views)
        else:
            method, heatmap = "grad-cam", self.whole_heatmap(views.whole)
        return method, peak_one(coarsen(heatmap))

    def whole_heatmap(self, whole: torch.Tensor) -> torch.Tensor:
        """Grad-CAM of the whole view's "corrupted" logit, at the view's size."""
        batch = normalise(whole[None]).to(self.device)
        with torch.enable_grad():  # servers often run handlers under no_grad; Grad-CAM needs gradients
            cam = self.gradcam.attribute(batch, relu_attributions=True).detach().cpu()
        return peak_one(LayerAttribution.interpolate(cam, tuple(whole.shape[-2:]), "bilinear")[0, 0])

    @torch.inference_mode()
    def crop_evidence(self, views: Views) -> torch.Tensor:
        """The cell of the candidates' grid each crop was chosen from, over the whole view, shaded by that native
        crop's calibrated P(corrupted); cells without a crop stay at zero."""
        margins = self.model.calibrated_crop(normalise(views.crops).to(self.device))[0]
        height, width = views.whole.shape[-2:]
        side = grid_side(CANDIDATES)
        heatmap = torch.zeros(height, width)
        for (left, top, right, bottom), probability in zip(views.boxes, torch.sigmoid(margins).cpu(), strict=True):
            row, column = (top + bottom) // 2 * side // views.size[1], (left + right) // 2 * side // views.size[0]
            rows = slice(row * height // side, (row + 1) * height // side)
            heatmap[rows, column * width // side : (column + 1) * width // side] = probability
        return peak_one(heatmap)


def coarsen(heatmap: torch.Tensor) -> torch.Tensor:
    """The map averaged down to at most HEATMAP_CELLS on its longer side, aspect ratio kept."""
    height, width = heatmap.shape
    scale = min(1.0, HEATMAP_CELLS / max(height, width))
    cells = (max(1, round(height * scale)), max(1, round(width * scale)))
    return torch.nn.functional.adaptive_avg_pool2d(heatmap[None, None], cells)[0, 0]


def peak_one(heatmap: torch.Tensor) -> torch.Tensor:
    """The map scaled to peak at 1 (an all-zero map stays zero)."""
    return heatmap / heatmap.max().clamp_min(torch.finfo(heatmap.dtype).tiny)
