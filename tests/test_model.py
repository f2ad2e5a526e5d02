"""The detector's network, how its views combine, and checkpoints that carry (and check) their contract."""

import numpy as np
import pytest
import torch
from PIL import Image

from detector.backbones import BACKBONES, build_backbone, fold_batch_norms
from detector.corruptions import TYPES
from detector.model import (
    CALIBRATION_BUFFERS,
    CROP_TYPES,
    PASS_PIXELS,
    Calibration,
    CheckpointMismatchError,
    build_model,
    combine_margins,
    contract,
    is_corrupted,
    load_model,
    read_checkpoint,
    same_size_batches,
    save_checkpoint,
)
from detector.paths import SHIPPED_WEIGHTS
from detector.preprocessing import CROPS, image_to_views, normalise
from tests.test_preprocessing import gradient


@pytest.fixture(scope="module")
def model():
    return build_model("efficientnet-lite0").eval()


@pytest.fixture
def checkpoint(tmp_path, model):
    path = tmp_path / "model.pt"
    model.whole_temperature.fill_(1.2345678)
    model.corrupted_logit_offset.fill_(-1.0000123)
    save_checkpoint(model, path, {"steps": 1})
    return path


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_pools_any_input_size(name):
    backbone = build_backbone(name).eval()
    with torch.inference_mode():
        for shape in ((32, 32), (160, 213), (64, 64)):
            assert backbone(torch.zeros(2, 3, *shape)).shape == (2, backbone.num_features)
    assert backbone.get_submodule(backbone.cam_layer) is not None


@pytest.mark.parametrize("name", BACKBONES)
def test_folding_batch_norms_keeps_what_every_backbone_computes(name):
    torch.manual_seed(0)
    backbone = build_backbone(name)
    for norm in (module for module in backbone.modules() if isinstance(module, torch.nn.BatchNorm2d)):
        norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2)
        norm.weight.data.uniform_(0.5, 1.5), norm.bias.data.uniform_(-0.5, 0.5)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(backbone)
    images = torch.randn(2, 3, 96, 128)
    with torch.inference_mode():
        expected = backbone.eval()(images)
        fold_batch_norms(backbone)
        folded = backbone(images)
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in backbone.modules())
    assert torch.allclose(folded, expected, rtol=1e-4, atol=1e-4)
    assert backbone.get_submodule(backbone.cam_layer) is not None


def test_views_scored_several_a_pass_answer_as_one_at_a_time(monkeypatch):
    model = load_model(SHIPPED_WEIGHTS)
    views = [image_to_views(gradient(*size)) for size in ((1024, 768), (32, 32), (1024, 768), (800, 600), (32, 32))]
    views[2] = image_to_views(gradient(1024, 768).rotate(180))
    with torch.inference_mode():
        together = model.score_views(views)
        monkeypatch.setitem(PASS_PIXELS, "cpu", 1)
        alone = model.score_views(views)
    assert torch.allclose(together.probabilities, alone.probabilities, atol=1e-5)
    assert torch.allclose(together.types, alone.types, atol=1e-5)
    assert torch.equal(together.decided_by_crops, alone.decided_by_crops)


def test_same_size_batches_cover_every_image_once_within_the_pixel_bound():
    views = [image_to_views(gradient(*size)) for size in ((1024, 768), (32, 32)) * 5]
    batches = list(same_size_batches(views, 3 * 160 * 213))
    assert sorted(index for batch in batches for index in batch) == list(range(10))
    assert [batch for batch in batches if len(views[batch[0]].crops)] == [[0, 2, 4], [6, 8]]
    assert [batch for batch in batches if not len(views[batch[0]].crops)] == [[1, 3, 5, 7, 9]]
    assert list(same_size_batches(views[:1], 1)) == [[0]]


def test_both_heads_answer_for_their_views(model):
    with torch.inference_mode():
        margin, types = model.whole(torch.zeros(2, 3, 160, 213))
        assert margin.shape == (2,) and types.shape == (2, len(TYPES))
        margin, types = model.crop(torch.zeros(3, 3, 64, 64))
        assert margin.shape == (3,) and types.shape == (3, len(CROP_TYPES))


def test_images_are_scored_from_all_their_views(model):
    views = [image_to_views(gradient(1024, 768)), image_to_views(gradient(32, 32))]
    assert len(views[0].crops) == CROPS and len(views[1].crops) == 0
    with torch.inference_mode():
        outputs = model.score_views(views)
    assert outputs.probabilities.shape == (2, 2) and torch.allclose(outputs.probabilities.sum(1), torch.ones(2))
    assert outputs.types.shape == (2, len(TYPES)) and not bool(outputs.decided_by_crops[1])


def test_photos_and_small_images_each_get_their_own_operating_offset():
    model = build_model("efficientnet-lite0").eval()
    views = [image_to_views(gradient(1024, 768)), image_to_views(gradient(32, 32))]
    with torch.inference_mode():
        margins = model.score_views(views).margin
        model.corrupted_logit_offset.fill_(-2.0)
        model.small_image_offset.fill_(1.0)
        shipped = model.score_views(views).probabilities[:, 1]
        small_alone = model.outputs(normalise(views[1].whole[None])).probabilities[:, 1]
    assert torch.allclose(shipped, torch.sigmoid(margins + torch.tensor([-2.0, 1.0])))
    assert torch.allclose(small_alone, shipped[1:])


def test_the_model_holds_sets_and_resets_its_calibration():
    model = build_model("efficientnet-lite0").eval()
    assert model.calibration() == Calibration(1.0, 1.0, 0.0, 0.0)
    fitted = Calibration(whole_temperature=2.0, crop_temperature=4.0, corrupted_logit_offset=-1.5, small_image_offset=1)
    model.set_calibration(fitted)
    assert model.calibration() == fitted
    assert {name: float(getattr(model, name)) for name in CALIBRATION_BUFFERS} == {
        "whole_temperature": 2.0,
        "crop_temperature": 4.0,
        "corrupted_logit_offset": -1.5,
        "small_image_offset": 1.0,
    }
    crops = normalise(image_to_views(gradient(1024, 768)).crops)
    with torch.inference_mode():
        assert torch.allclose(model.calibrated_crop(crops)[0], model.crop(crops)[0] / 4.0)
    model.reset_calibration()
    assert model.calibration() == Calibration()


def test_crops_decide_only_when_their_median_is_stronger():
    whole = torch.tensor([0.0, 0.0, 0.0, 1.0])
    crops = [
        torch.tensor([5.0, -3.0, -3.0, -3.0]),
        torch.tensor([1.0, 2.0, 3.0, 4.0]),
        torch.empty(0),
        torch.tensor([0.5, 0.5, 0.9, 0.9]),
    ]
    combined, decided = combine_margins(whole, crops)
    assert decided.tolist() == [False, True, False, False], "one alarmed crop of four does not decide"
    assert combined.tolist() == [0.0, 2.5, 0.0, 1.0]


def test_a_batch_mixing_photos_and_small_images_stays_on_the_models_device():
    """A GPU worker's batch mixes photos (with crops) and small images (none): what stands in for the missing crops
    (a -inf median, zero type probabilities) must be made on the model's device, or stacking them with the photos'
    fails. The meta device stands in for CUDA, which CI lacks: a CPU tensor among meta ones fails as among CUDA's."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for shape in [(300, 400, 3), (48, 64, 3)]]
    views = [image_to_views(image) for image in images]
    assert [len(view.crops) > 0 for view in views] == [True, False]
    with torch.inference_mode():
        outputs = build_model("efficientnet-lite0").eval().to("meta").score_views(views)
    assert outputs.probabilities.device.type == "meta" and outputs.types.shape == (2, len(TYPES))


def test_the_shipped_checkpoint_fits_this_code():
    checkpoint = read_checkpoint(SHIPPED_WEIGHTS)
    assert {key: checkpoint[key] for key in contract()} == contract()


def test_weights_are_fp16_and_calibration_fp32(checkpoint):
    state = read_checkpoint(checkpoint)["state_dict"]
    assert state["whole_head.weight"].dtype == torch.float16
    for name in CALIBRATION_BUFFERS:
        assert state[name].dtype == torch.float32, name
    loaded = load_model(checkpoint)
    assert float(loaded.whole_temperature) == pytest.approx(1.2345678, rel=1e-7)
    assert float(loaded.corrupted_logit_offset) == pytest.approx(-1.0000123, rel=1e-7)
    assert loaded.backbone == "efficientnet-lite0"


@pytest.mark.parametrize(
    "field, value",
    [
        ("types", list(reversed(TYPES))),
        ("crop_types", list(reversed(CROP_TYPES))),
        ("labels", ["corrupted", "clean"]),
        ("input", {**contract()["input"], "global_side": 224}),
        ("architecture", "resnet18-stem3x3s2-typehead"),
        ("calibration_buffers", ["whole_temperature", "crop_temperature", "corrupted_logit_offset"]),
    ],
)
def test_a_checkpoint_with_another_contract_is_refused_naming_the_difference(checkpoint, field, value):
    saved = torch.load(checkpoint, weights_only=True)
    torch.save({**saved, field: value}, checkpoint)
    with pytest.raises(CheckpointMismatchError, match=field):
        load_model(checkpoint)


def test_the_decision_rule_is_strictly_above_one_half():
    assert is_corrupted(torch.tensor([0.5, 0.5001, 0.4999])).tolist() == [False, True, False]
