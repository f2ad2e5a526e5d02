"""The accelerator's path, run on CPU tensors (the same torchvision and torch calls take a CUDA device): views of
the CPU path's shapes and boxes, answers within PROBABILITY_TOLERANCE at every precision, refusals unchanged,
other images on the CPU path, decoding bounded in pixels, and the GPU benchmark's table."""

import io
from pathlib import Path

import pytest
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from bench import gpu
from bench.inputs import bad_images, encode, good_images
from detector.decoding import chroma_subsampling, open_image
from detector.device_path import (
    PRECISIONS,
    PROBABILITY_TOLERANCE,
    DctScaling,
    chunk_views,
    dct_reduce,
    dct_scaling,
    device_whole_view,
    pixel_chunks,
    takes_device_path,
)
from detector.inference import CorruptionDetector
from detector.model import build_model, save_checkpoint
from detector.preprocessing import (
    Views,
    box_detail,
    detail_map,
    image_bytes_to_views,
    image_to_views,
    whole_view,
)
from tests.helpers import assert_same_answer
from tests.test_preprocessing import exif_rotated
from training.corpus import installed_photo

JPEG_PHOTOS = ("matplotlib--grace-hopper", "scikit-image--rocket", "scikit-learn--china", "scikit-learn--flower")
CPU = torch.device("cpu")
NEAR_TIE = 0.02


def photo(photo_id: str) -> Image.Image:
    return Image.open(io.BytesIO(installed_photo(photo_id))).convert("RGB")


@pytest.fixture(scope="module")
def jpegs() -> dict[str, bytes]:
    """Real photos as the device path gets them: as shipped, enlarged to phone sizes (the CPU path decodes those
    DCT-scaled, and cuts the 12 MP one's crops from the compressed data), a panorama and a grey photo."""
    made = {name: installed_photo(name) for name in JPEG_PHOTOS}
    made["coffee-2400x1600"] = encode(photo("scikit-image--coffee").resize((2400, 1600)), "JPEG", quality=90)
    made["astronaut-4000x3000"] = encode(photo("scikit-image--astronaut").resize((4000, 3000)), "JPEG", quality=90)
    made["china-panorama"] = encode(photo("scikit-learn--china").resize((2400, 600)), "JPEG", quality=90)
    made["camera-grey"] = encode(photo("scikit-image--camera").convert("L").resize((1024, 1024)), "JPEG")
    return made


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A v2 checkpoint of seeded random weights: the device path must agree with the CPU path whatever they are."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    save_checkpoint(build_model("efficientnet-lite0"), path, {})
    return path


@pytest.fixture(scope="module")
def cpu_path(weights: Path) -> CorruptionDetector:
    return CorruptionDetector(weights, pipeline="cpu")


@pytest.fixture(scope="module")
def device_path(weights: Path) -> CorruptionDetector:
    return CorruptionDetector(weights, pipeline="device", precision="fp32")


def test_the_device_takes_upright_huffman_jpegs_and_nothing_else(jpegs, subset):
    for data in jpegs.values():
        assert takes_device_path(open_image(data), data)
    others = good_images(subset)
    rotated = encode(photo("scikit-learn--china"), "JPEG", exif=exif_rotated())
    arithmetic = encode(photo("scikit-learn--china"), "JPEG")
    arithmetic = arithmetic.replace(b"\xff\xc0", b"\xff\xc9", 1)  # the frame marker of arithmetic coding
    for name, data in {**others, "rotated": rotated, "arithmetic": arithmetic}.items():
        if name != "jpeg":
            assert not takes_device_path(open_image(data), data), name


def test_a_jpeg_without_its_end_marker_stays_on_the_cpu_path(jpegs):
    data = jpegs["scikit-learn--china"]
    assert takes_device_path(open_image(data), data)
    cut = data[: len(data) - 100]
    assert not takes_device_path(open_image(cut), cut)


def test_device_views_have_the_cpu_paths_shapes_and_boxes(jpegs):
    names = list(jpegs)
    scalings = [dct_scaling(open_image(jpegs[name]), crops=True) for name in names]
    made = chunk_views([jpegs[name] for name in names], CPU, scalings=scalings)
    for name, (scale, _), views in zip(names, scalings, made, strict=True):
        expected = image_bytes_to_views(jpegs[name])
        assert views.size == expected.size, name
        assert views.whole.shape == expected.whole.shape and views.whole.dtype == torch.uint8, name
        assert views.crops.shape == expected.crops.shape, name
        assert_same_boxes_but_near_ties(views, expected, name)
        # Decoded whole (libjpeg-turbo on both paths here), the view is Pillow's bit for bit; decoded DCT-scaled by
        # the CPU path, the device reduces its full decode as libjpeg would have (coffee 0.22, astronaut 0.17 grey
        # levels apart on average; 0.35 and 0.30 without the reduce). Crops are the decoded pixels.
        difference = (views.whole.float() - expected.whole.float()).abs().mean()
        assert difference == 0 if scale == 1 else difference < 0.25, (name, scale, difference)
        for box, crop in zip(views.boxes, views.crops, strict=True):
            if box in expected.boxes:
                same = expected.crops[expected.boxes.index(box)]
                assert (crop.float() - same.float()).abs().mean() < 1.0, (name, box)


# Pillow's JPEG `subsampling`: 4:4:4, 4:2:2, 4:2:0.
SUBSAMPLINGS = {0: (1, 1), 1: (2, 1), 2: (2, 2)}


@pytest.mark.parametrize("subsampling", SUBSAMPLINGS)
@pytest.mark.parametrize("scale", [2, 4, 8])
def test_the_device_reduces_a_full_decode_as_libjpeg_scales_it(subsampling, scale):
    """libjpeg's DCT-scaled decode (Pillow's draft, the CPU path's) against `dct_reduce` of the full decode: within
    rounding of it (0.20-0.34 grey levels on average here), and for subsampled chroma closer than the plain block
    means that stood in for it (4:2:2 at 1/8: 1.66 apart, reduced as libjpeg reduces it 0.21)."""
    image = photo("scikit-image--coffee").resize((1203, 797))  # odd sizes: blocks cut at the edges
    data = encode(image, "JPEG", quality=90, subsampling=subsampling)
    opened = open_image(data)
    assert chroma_subsampling(opened) == SUBSAMPLINGS[subsampling]
    opened.draft("RGB", (opened.width // scale, opened.height // scale))
    libjpeg = F.pil_to_tensor(opened.convert("RGB")).float()
    full = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    reduced = dct_reduce(full, DctScaling(scale, SUBSAMPLINGS[subsampling]))
    block_means = dct_reduce(full, DctScaling(scale))
    assert reduced.shape == libjpeg.shape
    error = (reduced.float() - libjpeg).abs().mean()
    assert error < 0.36, error
    if subsampling:
        assert error < (block_means.float() - libjpeg).abs().mean()


def assert_same_boxes_but_near_ties(views: Views, expected: Views, name: str) -> None:
    """The device's crops lie where the CPU path's do, but where the CPU path's own whole view ranks a candidate
    within NEAR_TIE of its last chosen one: there a fraction of a grey level decides (coffee: 0.0923 vs 0.0922)."""
    width, height = expected.size
    energy = detail_map(expected.whole)
    last_chosen = min((box_detail(energy, box, width, height) for box in expected.boxes), default=0.0)
    for box in set(views.boxes) - set(expected.boxes):
        assert box_detail(energy, box, width, height) >= last_chosen * (1 - NEAR_TIE), (name, box)


@pytest.mark.parametrize(
    "size",
    [(350, 263), (1024, 768), (768, 1024), (503, 1230), (2400, 600), (4000, 3000), (161, 170), (976, 2010)],
)
def test_the_device_whole_view_is_pillows_on_the_same_pixels(size):
    """Landscape, portrait (Pillow passes vertically first), a panorama, box-reduced or not: bit for bit."""
    torch.manual_seed(sum(size))
    pixels = torch.randint(0, 256, (3, size[1], size[0]), dtype=torch.uint8)
    assert torch.equal(device_whole_view(pixels), whole_view(Image.fromarray(pixels.permute(1, 2, 0).numpy())))


def test_the_device_whole_view_of_a_photo_is_the_training_paths():
    upright = photo("scikit-image--astronaut").resize((4000, 3000))
    assert torch.equal(device_whole_view(F.pil_to_tensor(upright)), image_to_views(upright).whole)


def test_the_whole_view_of_a_small_image_is_its_pixels():
    pixels = torch.randint(0, 256, (3, 120, 150), dtype=torch.uint8)
    assert torch.equal(device_whole_view(pixels), pixels)


def test_answers_agree_with_the_cpu_path(jpegs, cpu_path, device_path):
    payloads = list(jpegs.values())
    for expected, actual in zip(cpu_path.run(payloads), device_path.run(payloads), strict=True):
        assert actual.error is None and expected.error is None
        assert actual.body["label"] == expected.body["label"]
        assert actual.body["probs"]["corrupted"] == pytest.approx(
            expected.body["probs"]["corrupted"], abs=PROBABILITY_TOLERANCE
        )


@pytest.mark.parametrize("precision", sorted(set(PRECISIONS) - {"fp32"}))
def test_reduced_precision_stays_within_the_tolerance_of_fp32(jpegs, weights, device_path, precision):
    """The CPU runs fp16 and bf16 autocast too: the rounding the model's answers take at each precision."""
    reduced = CorruptionDetector(weights, pipeline="device", precision=precision)
    payloads = list(jpegs.values())
    for expected, actual in zip(device_path.run(payloads), reduced.run(payloads), strict=True):
        assert actual.body["label"] == expected.body["label"]
        assert actual.body["probs"]["corrupted"] == pytest.approx(
            expected.body["probs"]["corrupted"], abs=PROBABILITY_TOLERANCE
        )


def test_the_precision_is_explicit(weights):
    assert CorruptionDetector(weights).precision == "fp32" and CorruptionDetector(weights).pipeline == "cpu"
    with pytest.raises(KeyError):
        CorruptionDetector(weights, precision="fp8")


def test_refusals_are_the_cpu_paths(subset, jpegs, cpu_path, device_path):
    bad = [data for data, _ in bad_images(subset).values()]
    cut = jpegs["scikit-learn--china"][:-100]  # a scan cut short: opens, then fails to decode
    payloads = [*bad, cut, jpegs["scikit-learn--china"]]
    expected, actual = cpu_path.run(payloads), device_path.run(payloads)
    assert [r.error.reason if r.error else None for r in actual] == [
        r.error.reason if r.error else None for r in expected
    ]
    assert actual[-2].error.reason == "truncated_image" and actual[-1].error is None


def test_rotated_jpegs_and_other_formats_take_the_cpu_path_and_are_answered(subset, cpu_path, device_path):
    images = good_images(subset)
    images["rotated_photo"] = encode(photo("scikit-learn--flower"), "JPEG", exif=exif_rotated())
    images["png_photo"] = encode(photo("scikit-image--coffee"), "PNG")
    payloads = list(images.values())
    for name, expected, actual in zip(images, cpu_path.run(payloads), device_path.run(payloads), strict=True):
        assert actual.error is None, name
        # The same views: only the model's memory layout (channels_last) differs.
        assert_same_answer(actual.body, expected.body, tolerance=1e-4)


def test_decoding_is_bounded_in_pixels():
    assert list(pixel_chunks([30, 30, 30, 100, 10], 64)) == [[0, 1], [2], [3], [4]]
    assert list(pixel_chunks([], 64)) == []


def test_chunks_change_no_answer(jpegs, weights, device_path):
    """A call decoded 1 MP at a time (every photo alone) answers as one decoded at once."""
    payloads = list(jpegs.values())
    chunked = CorruptionDetector(weights, pipeline="device", precision="fp32", chunk_pixels=1_000_000)
    for expected, actual in zip(device_path.run(payloads), chunked.run(payloads), strict=True):
        assert actual.body == expected.body


def test_explanations_work_on_the_device_path(jpegs, device_path):
    (record,) = device_path.run([jpegs["scikit-learn--china"]], explain=[True])
    assert record.body["explanation"]["overlay_png"]


def test_the_gpu_benchmark_runs_on_the_cpu(weights, capsys):
    gpu.main(["--device", "cpu", "--weights", str(weights), "--batch", "2", "--seconds", "0", "--sizes", "320x240"])
    table = capsys.readouterr().out
    assert "| 320x240 | 0.1 |" in table and "pipeline / decoder" in table
