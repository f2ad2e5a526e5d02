"""Grad-CAM explanations: the documented body in-process and through TorchServe's explanations API, an overlay
that keeps the view's aspect ratio, carries a colour scale and paints no heat on a clean verdict, and a
sensibility check: the heatmap finds a one-quadrant occlusion far more often than chance."""

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from bench.inputs import bad_images, encode, good_images
from detector.explain import (
    BAR_GAP,
    BAR_LABELS,
    BAR_WIDTH,
    CAPTION_HEIGHT,
    OVERLAY_SIZE,
    GradCamExplainer,
    explanation_body,
    jet,
    overlay_area,
    overlay_png,
)
from detector.preprocessing import CANDIDATES, grid_side, image_to_views, normalise
from evaluation.explain_report import SIDE, heaviest_quadrant, quadrant_cases
from tests.helpers import TIMEOUT, assert_prediction_schema, run_batch
from tests.test_preprocessing import gradient
from training.corpus import INSTALLED_TEST_PHOTOS, installed_photo
from training.photo_data import at_long_side

# Heaviest heatmap quadrant = occluded quadrant, over the installed test photos each occluded in every quadrant
# (python -m evaluation.explain_report measures it on the whole test split: MODEL_CARD.md). Chance is 25%.
MIN_QUADRANT_RATE = 0.5
# Test-split photos the test environment has installed (no download).
PHOTOS = INSTALLED_TEST_PHOTOS
# The overlay's colour scale: its width beside the image area.
SCALE_WIDTH = BAR_GAP + BAR_WIDTH + BAR_LABELS
GREY = (128, 128, 128)


@pytest.fixture(scope="module")
def explainer(handler) -> GradCamExplainer:
    return handler.detector.explainer


def decode_overlay(body: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(body["explanation"]["overlay_png"], validate=True)))


def assert_explanation_schema(body: dict) -> None:
    """The prediction schema plus "explanation": a heatmap in [0, 1] peaking at 1 (or all zero: nothing in the view
    raises the corrupted logit), whether it is evidence (only
    for a corrupted verdict) and a note, and a PNG of the view at its aspect ratio (a colour scale with evidence)."""
    assert_prediction_schema({key: value for key, value in body.items() if key != "explanation"})
    explanation = body["explanation"]
    assert set(explanation) == {"method", "target", "layer", "heatmap", "evidence", "note", "overlay_png"}
    assert explanation["method"] in ("grad-cam", "crop-evidence") and explanation["target"] == "corrupted"
    assert explanation["evidence"] == (body["label"] == "corrupted")
    assert ("not evidence" in explanation["note"]) == (not explanation["evidence"])
    heatmap = torch.tensor(explanation["heatmap"])
    assert heatmap.ndim == 2
    assert heatmap.min() >= 0 and heatmap.max() in (0, 1)
    overlay = decode_overlay(body)
    width, height = overlay_area(*heatmap.shape)  # the heatmap covers the explained view, at its aspect ratio
    assert (overlay.format, overlay.mode, overlay.height) == ("PNG", "RGB", height + CAPTION_HEIGHT)
    assert overlay.width == width + SCALE_WIDTH if explanation["evidence"] else overlay.width >= width


def photos() -> list[torch.Tensor]:
    """The installed test-split photos at the explanation report's size, uint8 CHW."""
    return [
        F.pil_to_tensor(at_long_side(Image.open(io.BytesIO(installed_photo(name))).convert("RGB"), SIDE))
        for name in PHOTOS
    ]


def test_whole_view_heatmaps_are_view_sized_and_peak_at_one(explainer):
    for photo in photos()[:3]:
        views = image_to_views(F.to_pil_image(photo))
        heatmap = explainer.whole_heatmap(views.whole)
        assert heatmap.shape == views.whole.shape[-2:]
        assert heatmap.min() >= 0 and heatmap.max() == 1 and heatmap.std() > 0.05, "a heatmap is flat"


def image_area(png: bytes, height: int, width: int) -> Image.Image:
    """The part of an overlay PNG that shows the view (the rest is the colour scale and the caption)."""
    return Image.open(io.BytesIO(png)).crop((0, 0, *overlay_area(height, width)))


def test_overlay_shows_the_image_where_cold_and_colours_it_where_hot():
    image = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    heatmap = torch.zeros(32, 32)
    cold = image_area(overlay_png(image, heatmap), 32, 32)
    assert cold.getcolors() == [(OVERLAY_SIZE * OVERLAY_SIZE, GREY)]
    heatmap[:4, :4] = 1.0
    hot = image_area(overlay_png(image, heatmap), 32, 32)
    assert hot.getpixel((0, 0)) != GREY
    assert hot.getpixel((OVERLAY_SIZE - 1, OVERLAY_SIZE - 1)) == GREY


@pytest.mark.parametrize("height, width", [(20, 30), (30, 20), (32, 32), (240, 360), (600, 400)])
def test_overlay_keeps_the_views_aspect_ratio_whatever_the_heatmaps_size(height, width):
    """A 3:2 view stays 3:2 (the page showed a squashed square); the heatmap is stretched over the view."""
    image = torch.full((3, height, width), 128, dtype=torch.uint8)
    heatmap = torch.zeros(8, 8)
    heatmap[-1, -1] = 1.0  # heat in the bottom-right corner only
    png = overlay_png(image, heatmap)
    area_width, area_height = overlay_area(height, width)
    assert max(area_width, area_height) == OVERLAY_SIZE
    assert area_width / area_height == pytest.approx(width / height, rel=0.01)
    assert Image.open(io.BytesIO(png)).size == (area_width + SCALE_WIDTH, area_height + CAPTION_HEIGHT)
    area = image_area(png, height, width)
    assert area.getpixel((0, 0)) == GREY and area.getpixel((area_width - 1, area_height - 1)) != GREY


def test_overlay_carries_a_colour_scale_from_cold_to_hot():
    png = overlay_png(torch.full((3, 32, 32), 128, dtype=torch.uint8), torch.rand(32, 32))
    overlay = Image.open(io.BytesIO(png))
    column = OVERLAY_SIZE + BAR_GAP + BAR_WIDTH // 2
    top, bottom = overlay.getpixel((column, 0)), overlay.getpixel((column, OVERLAY_SIZE - 1))
    assert top == tuple(round(c * 255) for c in jet(np.array(1.0)))  # dark red: strongest evidence
    assert bottom == tuple(round(c * 255) for c in jet(np.array(0.0)))  # dark blue: none
    assert jet(np.array(0.5)).tolist() != jet(np.array(0.0)).tolist()


def test_a_clean_verdict_paints_no_hot_spot_and_says_the_map_is_not_evidence():
    image = torch.full((3, 20, 30), 128, dtype=torch.uint8)
    heatmap = torch.zeros(20, 30)
    heatmap[5:10, 5:10] = 1.0  # the peak every normalised map has
    clean = {"label": "clean", "confidence": 0.976, "probs": {"clean": 0.976, "corrupted": 0.024}}
    body = explanation_body(clean, image, heatmap, "grad-cam", "_blocks.10")
    assert body["explanation"]["evidence"] is False and "not evidence" in body["explanation"]["note"]
    assert body["explanation"]["heatmap"][5][5] == 1.0, "the numbers stay for clients"
    assert image_area(base64.b64decode(body["explanation"]["overlay_png"]), 20, 30).getcolors() == [
        (OVERLAY_SIZE * overlay_area(20, 30)[1], GREY)
    ]
    corrupted = explanation_body({**clean, "label": "corrupted", "confidence": 0.9}, image, heatmap, "grad-cam", "x")
    assert corrupted["explanation"]["evidence"] is True
    assert image_area(base64.b64decode(corrupted["explanation"]["overlay_png"]), 20, 30).getpixel((64, 64)) != GREY


@pytest.mark.parametrize("quadrant", range(4))
def test_quadrants_are_numbered_row_by_row(quadrant):
    heatmap = torch.zeros(32, 32)
    row, column = divmod(quadrant, 2)
    heatmap[row * 16 + 5, column * 16 + 9] = 1.0
    assert heaviest_quadrant(heatmap) == quadrant


def test_crop_evidence_shades_each_crops_cell_by_its_calibrated_probability(explainer):
    views = image_to_views(gradient(1024, 768))
    heatmap, model = explainer.crop_evidence(views), explainer.model
    with torch.inference_mode():
        probabilities = torch.sigmoid(model.crop(normalise(views.crops))[0] / model.crop_temperature)
    height, width = heatmap.shape
    side = grid_side(CANDIDATES)
    shaded = torch.zeros(side, side, dtype=torch.bool)
    for (left, top, right, bottom), probability in zip(views.boxes, probabilities / probabilities.max(), strict=True):
        row, column = (top + bottom) // 2 * side // 768, (left + right) // 2 * side // 1024
        cell = heatmap[
            row * height // side : (row + 1) * height // side, column * width // side : (column + 1) * width // side
        ]
        assert torch.allclose(cell, probability.expand_as(cell)), (row, column)
        shaded[row, column] = True
    for row, column in (~shaded).nonzero().tolist():
        cell = heatmap[
            row * height // side : (row + 1) * height // side, column * width // side : (column + 1) * width // side
        ]
        assert not cell.any(), "a cell without a crop has no evidence"


def test_the_handler_routes_each_request_of_a_batch_by_its_explain_header(handler, subset):
    """TorchServe batches /predictions and /explanations requests together; each gets its own kind of answer."""
    png, jpeg = good_images(subset)["png"], good_images(subset)["jpeg"]
    rows = [{"body": png}, {"body": png}, {"body": jpeg}, {"body": b"no"}]
    bodies, statuses = run_batch(handler, rows, explain=[True, False, True, True])
    assert statuses == [200, 200, 200, 400]
    assert_explanation_schema(bodies[0])
    assert_prediction_schema(bodies[1])
    assert_explanation_schema(bodies[2])
    assert bodies[3]["type"] == "not_an_image"
    assert {key: bodies[0][key] for key in bodies[1]} == bodies[1]


@pytest.mark.parametrize("transport", ["raw", "multipart", "json"])
def test_the_explanations_api_answers_with_the_documented_body(torchserve, subset, transport):
    data = good_images(subset)["png"]
    url = f"{torchserve.inference}/explanations/corruption"
    if transport == "raw":
        response = requests.post(url, data=data, timeout=TIMEOUT)
    elif transport == "multipart":
        response = requests.post(url, files={"data": ("photo.png", data, "image/png")}, timeout=TIMEOUT)
    else:
        body = json.dumps({"data": base64.b64encode(data).decode()})
        response = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert_explanation_schema(response.json())
    prediction = requests.post(f"{torchserve.inference}/predictions/corruption", data=data, timeout=TIMEOUT).json()
    assert {key: response.json()[key] for key in prediction} == prediction


@pytest.mark.parametrize("name", ["random_bytes", "truncated_png", "pdf"])
def test_the_explanations_api_refuses_non_images_with_400(torchserve, subset, name):
    data, reason = bad_images(subset)[name]
    response = requests.post(f"{torchserve.inference}/explanations/corruption", data=data, timeout=TIMEOUT)
    assert response.status_code == 400, response.text
    assert response.json()["type"] == reason


def test_the_heatmap_finds_a_one_quadrant_occlusion_far_more_often_than_chance(torchserve):
    cases = quadrant_cases([photo for photo in photos() for _ in range(4)])  # each photo in every quadrant
    url = f"{torchserve.inference}/explanations/corruption"

    def heaviest(image: torch.Tensor) -> int:
        response = requests.post(url, data=encode(F.to_pil_image(image), "JPEG", quality=95), timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        return heaviest_quadrant(torch.tensor(response.json()["explanation"]["heatmap"]))

    with ThreadPoolExecutor(max_workers=8) as pool:
        found = list(pool.map(heaviest, [image for image, _ in cases]))
    hits = sum(quadrant == occluded for quadrant, (_, occluded) in zip(found, cases, strict=True))
    assert hits / len(cases) >= MIN_QUADRANT_RATE, f"occluded quadrant found in {hits}/{len(cases)} (chance 25%)"
