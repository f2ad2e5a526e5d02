"""Calibration pieces in-process: temperature fit, operating offset, ECE, and the AUROC used by the report."""

import pytest
import torch
from sklearn.metrics import roc_auc_score

from detector.model import load_model
from detector.paths import SHIPPED_WEIGHTS
from evaluation.metrics import Scores, auroc, class_weights, expected_calibration_error
from training.calibrate import OFFSET_BOUND, TEMPERATURE_BOUNDS, fit_temperature, head_margins, operating_offset


def test_temperature_fit_recovers_the_temperature_that_generated_the_labels():
    generator = torch.Generator().manual_seed(0)
    true_margins = torch.randn(20000, generator=generator) * 3
    labels = torch.bernoulli(torch.sigmoid(true_margins), generator=generator).long()
    assert fit_temperature(true_margins * 2.5, labels) == pytest.approx(2.5, rel=0.05)


@pytest.mark.parametrize(
    "margins, labels",
    [
        (torch.zeros(200), torch.arange(200) % 2),  # constant outputs: nothing to tell apart
        (torch.randn(200, generator=torch.Generator().manual_seed(3)) * 1e-4, torch.arange(200) % 2),  # ~constant
        (torch.cat([torch.full((100,), -5.0), torch.full((100,), 5.0)]), torch.arange(200) // 100),  # separable
        (torch.cat([torch.full((100,), 5.0), torch.full((100,), -5.0)]), torch.arange(200) // 100),  # inverted
    ],
    ids=["constant", "near-constant", "separable", "inverted"],
)
def test_temperature_stays_within_bounds_on_degenerate_validation_sets(margins, labels):
    temperature = fit_temperature(margins, labels)
    assert TEMPERATURE_BOUNDS[0] <= temperature <= TEMPERATURE_BOUNDS[1]
    assert temperature == fit_temperature(margins, labels), "the fit is deterministic"


def test_operating_offset_is_bounded():
    assert operating_offset(torch.full((50,), 1e6), target_fpr=0.02) == -OFFSET_BOUND


def test_operating_offset_sets_the_clean_false_positive_rate():
    clean_margins = torch.linspace(-10, 2, 1001)
    offset = operating_offset(clean_margins, target_fpr=0.05)
    flagged = (clean_margins + offset > 0).float().mean()
    assert float(flagged) == pytest.approx(0.05, abs=0.002)


def test_ece_is_small_when_calibrated_and_large_when_over_confident():
    generator = torch.Generator().manual_seed(1)
    confidence = 0.5 + 0.5 * torch.rand(50000, generator=generator)
    calibrated = torch.bernoulli(confidence, generator=generator).bool()
    over_confident = torch.bernoulli(confidence - 0.2, generator=generator).bool()
    assert expected_calibration_error(confidence, calibrated) < 0.01
    assert expected_calibration_error(confidence, over_confident) == pytest.approx(0.2, abs=0.02)


def test_auroc_matches_scikit_learn_with_ties():
    generator = torch.Generator().manual_seed(2)
    margins = torch.randint(0, 5, (300,), generator=generator).float()
    kind = torch.randint(0, 3, (300,), generator=generator)
    margins[kind == 1] += 1
    scores = Scores(margins, margins, torch.zeros(300, 6), (kind > 0).long(), kind, torch.where(kind > 0, 3, 0))
    keep = (kind == 0) | (kind == 1)
    expected = roc_auc_score((kind[keep] == 1).numpy(), margins[keep].numpy())
    assert auroc(scores, 1) == pytest.approx(expected)
    assert auroc(scores, 1, severities=(5,)) != auroc(scores, 1, severities=(5,)), "no samples: NaN"


def test_class_weights_give_each_class_its_share():
    labels = torch.tensor([1] * 96 + [0] * 4)
    weights = class_weights(labels, corrupted_share=0.27)
    assert float(weights[labels == 1].sum()) == pytest.approx(0.27)
    assert float(weights.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("head, side", [("whole", 160), ("crop", 64)])
def test_head_margins_feed_each_batch_to_the_models_own_device(head, side):
    """Calibration batches are made on the CPU; a model on another device must get them there. The meta device
    (shapes only) stands in for a GPU: the same mismatch crashed a CUDA training run's calibration."""
    model = load_model(SHIPPED_WEIGHTS, torch.device("cpu")).to("meta")
    batches = iter([(torch.zeros(2, 3, side, side), torch.tensor([0, 1]))] * 2)
    margins, labels = head_margins(model, head, batches)
    assert margins.device.type == "meta" and margins.shape == (4,) and labels.tolist() == [0, 1, 0, 1]
