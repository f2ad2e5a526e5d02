"""Checkpoints carry their contract (labels, types, input, calibration) and loading checks it."""

import pytest
import torch

from detector.corruptions import TYPES
from detector.model import (
    CALIBRATION_BUFFERS,
    CheckpointMismatchError,
    build_model,
    contract,
    is_corrupted,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from training.archive import SHIPPED_WEIGHTS
from training.calibrate import TEMPERATURE_BOUNDS, calibrate_checkpoint


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    model = build_model()
    model.temperature.fill_(1.2345678)
    model.corrupted_logit_offset.fill_(-1.0000123)
    save_checkpoint(model, path, {"epoch": 1})
    return path


def test_the_shipped_checkpoint_fits_this_code():
    checkpoint = read_checkpoint(SHIPPED_WEIGHTS)
    assert {key: checkpoint[key] for key in contract()} == contract()


def test_weights_are_fp16_and_calibration_fp32(checkpoint):
    state = read_checkpoint(checkpoint)["state_dict"]
    assert state["binary_head.weight"].dtype == torch.float16
    for name in CALIBRATION_BUFFERS:
        assert state[name].dtype == torch.float32, name
    model = load_model(checkpoint)
    assert float(model.temperature) == pytest.approx(1.2345678, rel=1e-7)
    assert float(model.corrupted_logit_offset) == pytest.approx(-1.0000123, rel=1e-7)


@pytest.mark.parametrize(
    "field, value",
    [
        ("types", list(reversed(TYPES))),
        ("labels", ["corrupted", "clean"]),
        ("input", {**contract()["input"], "size": 64}),
        ("architecture", "resnet50"),
    ],
)
def test_a_checkpoint_with_another_contract_is_refused_naming_the_difference(checkpoint, field, value):
    saved = torch.load(checkpoint, weights_only=True)
    torch.save({**saved, field: value}, checkpoint)
    with pytest.raises(CheckpointMismatchError, match=field):
        load_model(checkpoint)


def test_the_decision_rule_is_strictly_above_one_half():
    assert is_corrupted(torch.tensor([0.5, 0.5001, 0.4999])).tolist() == [False, True, False]


class ConstantOutputs(torch.utils.data.Dataset):
    """A degenerate validation split: every image the same, half labelled corrupted."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        return torch.zeros(3, 32, 32), index % 2, index % 2, 3 * (index % 2)


def test_calibrating_a_degenerate_run_stores_a_bounded_fp32_temperature(checkpoint):
    """A short run whose outputs cannot tell the classes apart once asked for T -> infinity (stored as inf)."""
    calibration = calibrate_checkpoint(checkpoint, ConstantOutputs(), target_fpr=0.02, device=torch.device("cpu"))
    model = load_model(checkpoint)
    assert TEMPERATURE_BOUNDS[0] <= float(model.temperature) <= TEMPERATURE_BOUNDS[1]
    assert float(model.temperature) == pytest.approx(calibration["temperature"], rel=1e-3)
    assert torch.isfinite(model.corrupted_logit_offset)
    assert read_checkpoint(checkpoint)["state_dict"]["temperature"].dtype == torch.float32
