"""The one batch pipeline of the core: records in request order, refusals in place, explanations of the view
that decided, at the image's aspect ratio."""

import pytest

from bench.inputs import encode
from detector.decoding import BadImageError
from detector.explain import HEATMAP_CELLS
from detector.inference import CorruptionDetector
from detector.paths import SHIPPED_WEIGHTS
from tests.test_preprocessing import gradient


@pytest.fixture(scope="module")
def detector() -> CorruptionDetector:
    return CorruptionDetector(SHIPPED_WEIGHTS, corruption_type=True)


def test_records_keep_request_order_and_refusals_stay_in_place(detector):
    photo = encode(gradient(640, 480), "JPEG", quality=92)
    adapter_error = BadImageError("empty_body", "no body")
    records = detector.run([photo, b"not an image", adapter_error, photo])
    assert [r.error is None for r in records] == [True, False, False, True]
    assert records[1].error.reason == "not_an_image" and records[2].error is adapter_error
    assert records[2].preprocess_seconds is None and records[0].preprocess_seconds > 0
    assert records[0].body == records[3].body, "the same image gets the same answer within a batch"
    assert set(records[0].body) == {"label", "confidence", "probs", "corruption_type"}


def test_crops_can_be_switched_off(detector):
    plain = CorruptionDetector(SHIPPED_WEIGHTS, crops=False)
    assert len(plain.prepare(encode(gradient(1024, 768), "PNG"))[0].crops) == 0
    assert len(detector.prepare(encode(gradient(1024, 768), "PNG"))[0].crops) > 0


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (1920, 1080), (32, 32)])
def test_explanations_have_the_images_aspect_ratio(detector, size):
    (record,) = detector.run([encode(gradient(*size), "PNG")], explain=[True])
    explanation = record.body["explanation"]
    rows, columns = len(explanation["heatmap"]), len(explanation["heatmap"][0])
    assert max(rows, columns) <= HEATMAP_CELLS
    assert abs(columns / rows - min(size[0] / size[1], 2.5)) < 0.15
    assert explanation["method"] in ("grad-cam", "crop-evidence")
