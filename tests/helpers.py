"""Helpers shared by the tests: TorchServe's own Context as the handler's test double, the handler set up as
TorchServe sets it up, the response schema checks, and one HTTP timeout."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from ts.context import Context, RequestProcessor

from detector.paths import SHIPPED_WEIGHTS
from handler.archive import MODEL_CONFIG
from handler.corruption_handler import CorruptionHandler

# Seconds any test waits for one HTTP answer from a local server.
TIMEOUT = 60


def context(headers: list[dict[str, str]], model_dir: Path | str = "", **options) -> Context:
    """TorchServe's Context for one batch, one request per entry of `headers` (that request's headers)."""
    batch = Context("corruption", str(model_dir), {"model": {"serializedFile": "model.pt"}}, len(headers), None,
                    "0.12.0", **options)  # fmt: skip
    batch.request_processor = [RequestProcessor(request_headers) for request_headers in headers]
    return batch


def start_handler(model_dir: Path, **settings) -> CorruptionHandler:
    """A handler set up as TorchServe does it: the shipped weights, model-config.yaml plus `settings`."""
    shutil.copy(SHIPPED_WEIGHTS, model_dir / "model.pt")
    config = yaml.safe_load(MODEL_CONFIG.read_text())
    config["handler"].update(settings)
    service = CorruptionHandler()
    service.initialize(context([{}], model_dir, model_yaml_config=config))
    return service


def run_batch(handler: CorruptionHandler, rows: list[dict], explain: list[bool] | None = None) -> tuple[list, list]:
    """Handle one batch as TorchServe would; returns the bodies and per-item status codes.

    `explain[i]` marks request i as sent to /explanations (the frontend's "explain" header).
    """
    explain = explain or [False] * len(rows)
    batch = context([{"explain": str(flag)} for flag in explain])
    bodies = handler.handle(rows, batch)
    return bodies, [batch.get_response_status(i)[0] for i in range(len(rows))]


def assert_prediction_schema(body: dict) -> None:
    """Exactly {"label", "confidence", "probs"}, probabilities summing to 1, label = the likelier class."""
    assert set(body) == {"label", "confidence", "probs"}
    assert set(body["probs"]) == {"clean", "corrupted"}
    assert body["probs"]["clean"] + body["probs"]["corrupted"] == pytest.approx(1.0, abs=1e-6)
    assert body["confidence"] == max(body["probs"].values())
    assert body["label"] == max(body["probs"], key=body["probs"].get)


def heavy_noise(image: Image.Image, sigma: float = 60, seed: int = 0) -> Image.Image:
    """The image under strong Gaussian pixel noise: corrupted for any model, without the corruption table's API."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0, sigma, pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


def assert_same_answer(actual: dict, expected: dict, tolerance: float = 1e-5) -> None:
    """The same prediction up to batching noise: TorchServe batches concurrent requests, and a forward pass
    over another batch moves the probabilities in their sixth decimal."""
    assert actual["label"] == expected["label"]
    assert set(actual) == set(expected)
    assert actual["confidence"] == pytest.approx(expected["confidence"], abs=tolerance)
    assert actual["probs"] == pytest.approx(expected["probs"], abs=tolerance)
