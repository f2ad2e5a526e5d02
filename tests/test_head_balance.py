"""The head-balance analysis: per-head evidence is what the served rule combines, and the crop shift is fitted on
clean and damaged validation evidence as stated."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from detector.model import load_model
from detector.paths import SHIPPED_WEIGHTS
from detector.preprocessing import image_to_views
from evaluation.head_balance import fit_shift, head_evidence, probabilities, shifted
from training.calibrate import clean_photo_views, operating_offset
from training.corpus import load_built


def test_unshifted_evidence_is_what_the_served_rule_combines(mini_corpus):
    model = load_model(SHIPPED_WEIGHTS)
    views = clean_photo_views(load_built(mini_corpus, "val"), str(mini_corpus))
    small = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    views.append(image_to_views(Image.fromarray(small)))  # too small for crops
    with torch.inference_mode():
        evidence = head_evidence(model, views)
        served = model.score_views(views)
    assert np.isinf(evidence[:, 1]).any() and not np.isinf(evidence[:, 1]).all()  # sizes with and without crops
    assert np.allclose(shifted(evidence, 0.0), served.margin.numpy(), atol=1e-5)
    unshifted = probabilities(evidence, 0.0, float(model.corrupted_logit_offset), float(model.small_image_offset))
    assert np.allclose(unshifted, served.probabilities[:, 1].numpy(), atol=1e-5)


def test_the_shift_that_catches_most_at_the_refitted_offset_is_found():
    rng = np.random.default_rng(0)
    # Clean photos alarm the whole view (a long tail) and never the crops; the damage shows in the crops only.
    clean = np.stack([rng.normal(0, 1, 2000), rng.normal(-4, 0.5, 2000)], axis=1)
    damaged = np.stack([rng.normal(0, 1, 500), rng.normal(0.5, 0.5, 500)], axis=1)
    rows = fit_shift(clean, damaged, target_fpr=0.015, shifts=(0.0, 1.0, 2.0, 3.0))
    whole_only = operating_offset(torch.from_numpy(clean[:, 0]), 0.015)
    assert rows[0]["offset"] == pytest.approx(whole_only)  # the crops sit below: the whole view sets the offset
    caught = [row["caught"] for row in rows]
    assert caught == sorted(caught) and caught[-1] > caught[0] + 0.3


def test_images_without_crops_keep_the_small_image_offset():
    evidence = np.array([[1.0, -math.inf], [1.0, 3.0]])
    p = probabilities(evidence, shift=-1.0, offset=-2.0, small_image_offset=0.5)
    assert p == pytest.approx([1 / (1 + math.exp(-1.5)), 1 / (1 + math.exp(0.0))])
