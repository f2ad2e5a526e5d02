"""Grad-CAM explanations: where in an image the model sees corruption.

Server-agnostic: the inference core (detector/inference.py) calls it for the
requests of a batch that asked for an explanation. Captum's LayerGradCam weighs the activations of one
ResNet stage by the gradient of the "corrupted" logit, so the heatmap shows the
evidence for "corrupted" whatever the predicted label (read it together with
the probabilities: a clean image's map is normalised too).

The stage is layer2, 8x8 cells for a 32x32 input: it finds a one-quadrant
occlusion about as often as the coarser stages (98/100 against 100 for
layer3's 4x4 cells with the shipped weights; `python -m evaluation.explain_report`,
observability/README.md) and draws finer maps; layer4's 2x2 cells are whole
quadrants, too coarse to show where.
"""

import base64
import io
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as nnf
from captum.attr import LayerAttribution, LayerGradCam
from matplotlib import colormaps
from PIL import Image

from detector.model import LABELS, CorruptionNet
from detector.preprocessing import INPUT_SIZE, normalise

TARGET = "corrupted"
LAYER = "layer2"
# The overlay shows the model's 32x32 view at 8x, large enough to see on a page.
OVERLAY_SIZE = 256
COLORMAP = "jet"
# Heat is blended in proportion to its strength: cold regions show the image as it is.
MAX_ALPHA = 0.6
HEATMAP_DECIMALS = 3


def overlay_png(image: torch.Tensor, heatmap: torch.Tensor) -> bytes:
    """PNG of the model's view (uint8 CHW, nearest-upscaled) with the heatmap blended over it."""
    size = (OVERLAY_SIZE, OVERLAY_SIZE)
    view = np.asarray(Image.fromarray(image.permute(1, 2, 0).numpy()).resize(size, Image.Resampling.NEAREST)) / 255
    heat = nnf.interpolate(heatmap[None, None].float(), size=size, mode="bilinear")[0, 0].clamp(0, 1).numpy()
    alpha = MAX_ALPHA * heat[..., None]
    blended = (1 - alpha) * view + alpha * colormaps[COLORMAP](heat)[..., :3]
    buffer = io.BytesIO()
    Image.fromarray((blended * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def explanation_body(prediction: dict, image: torch.Tensor, heatmap: torch.Tensor, layer: str = LAYER) -> dict:
    """The prediction body plus "explanation": the heatmap as rows of floats and as a base64 PNG overlay."""
    return {
        **prediction,
        "explanation": {
            "method": "grad-cam",
            "target": TARGET,
            "layer": layer,
            "heatmap": heatmap.double().round(decimals=HEATMAP_DECIMALS).tolist(),
            "overlay_png": base64.b64encode(overlay_png(image, heatmap)).decode("ascii"),
        },
    }


class GradCamExplainer:
    """Grad-CAM of the "corrupted" logit over one stage of a model."""

    def __init__(self, model: CorruptionNet, device: torch.device, layer: str = LAYER) -> None:
        self.device = device
        self.layer = layer
        self.gradcam = LayerGradCam(model, model.trunk.get_submodule(layer))

    def heatmaps(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """(N, 32, 32) maps in [0, 1] for uint8 CHW images at input size, each scaled so its peak is 1."""
        batch = normalise(torch.stack(list(images))).to(self.device)
        with torch.enable_grad():  # servers often run handlers under no_grad; Grad-CAM needs gradients
            cam = self.gradcam.attribute(batch, target=LABELS.index(TARGET), relu_attributions=True)
        cam = LayerAttribution.interpolate(cam.detach(), (INPUT_SIZE, INPUT_SIZE), "bilinear").squeeze(1).cpu()
        peak = cam.flatten(1).amax(dim=1).clamp_min(torch.finfo(cam.dtype).tiny)
        return cam / peak.view(-1, 1, 1)
