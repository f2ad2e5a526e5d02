"""Bytes -> RGB and the refusals (detector/decoding.py): limits checked from the header, memory bounded by bytes."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageFile

from bench.inputs import bad_images, encode, sample_rgb
from bench.limits import MAKERS, format_cases, picture, short_scan_jpeg
from bench.torchserve import ROOT
from detector.decoding import (
    MAX_DECODE_BYTES,
    MAX_PIXELS,
    BadImageError,
    decode_bytes,
    decode_image,
    open_image,
    to_rgb,
)
from detector.preprocessing import cheap_decode_scale

MIB = 2**20
# Peak RSS growth of one decode may exceed its estimate by this much: allocator rounding, Python objects.
ESTIMATE_SLACK = 1.05
ESTIMATE_SLACK_BYTES = 8 * MIB
# Runs in a fresh interpreter: the peak RSS growth while decoding the file in argv[1], in bytes. The kernel's
# high-water mark (VmHWM) is reset first: ru_maxrss would start from the parent's peak, inherited at fork.
# argv[2] names what runs: a decode, or the views (a large JPEG's reduced decode and lossless crops).
MEASURE = """
import re, sys
from pathlib import Path
from detector.decoding import decode_image
from detector.preprocessing import image_bytes_to_views
def kib(field): return int(re.search(field + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text())[1])
data = Path(sys.argv[1]).read_bytes()
run = {"decode": decode_image, "views": image_bytes_to_views}[sys.argv[2]]
Path("/proc/self/clear_refs").write_text("5")
before = kib("VmRSS")
run(data)
print((kib("VmHWM") - before) * 1024)
"""


def test_bad_images_are_refused_with_their_reason(subset):
    for name, (data, reason) in bad_images(subset).items():
        with pytest.raises(BadImageError) as refused:
            decode_image(data)
        assert refused.value.reason == reason, name


def test_pixel_limit_is_checked_from_the_header_before_decoding(subset, monkeypatch):
    data = bad_images(subset)["over_limit_png"][0]
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded an over-limit image"))
    with pytest.raises(BadImageError, match=str(MAX_PIXELS)):
        decode_image(data)


def test_decode_memory_is_estimated_from_the_header_by_mode_and_format():
    pixels = 640 * 480
    cost = {name: decode_bytes(open_image(make(640, 480, False))) for name, make in MAKERS.items()}
    assert cost["JPEG, EXIF-rotated"] == pixels * 8  # buffer + rotated copy, no conversion for RGB
    assert cost["TIFF, float"] == pixels * (4 + 4) + 20 * MIB  # float buffer + RGB result + band temporaries
    assert cost["PNG, 16-bit grey"] == pixels * (2 + 4) + 20 * MIB
    assert cost["WebP, RGBA"] == pixels * (4 + 12) + 20 * MIB  # libwebp's canvases
    assert cost["JPEG, progressive"] == pixels * (4 + 3)  # 4:2:0 coefficients: 2 bytes x 1.5 per pixel


def test_over_the_decode_budget_is_refused_before_decoding(monkeypatch):
    """An RGBA WebP under the pixel limit whose decode would take over MAX_DECODE_BYTES: refused from the header."""
    data = MAKERS["WebP, RGBA"](6000, 6000, False)  # 36 MP, 16 bytes per pixel: 549 MiB
    assert MAX_PIXELS >= 6000 * 6000
    assert decode_bytes(open_image(MAKERS["WebP, RGBA"](4800, 4800, False))) <= MAX_DECODE_BYTES
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded an over-budget image"))
    with pytest.raises(BadImageError, match="MiB to decode") as refused:
        decode_image(data)
    assert refused.value.reason == "too_many_pixels"


def measured_peak(data: bytes, run: str, tmp_path) -> int:
    """Peak RSS growth (bytes) of `run` ("decode" or "views") on the image, in a fresh interpreter."""
    path = tmp_path / "image"
    path.write_bytes(data)
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), run], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_decoding_stays_within_its_estimate(name, tmp_path):
    """Peak memory of a real decode, in a fresh process, against the header's estimate: 6 MP of each path."""
    data = MAKERS[name](3000, 2000, False)
    estimate = decode_bytes(open_image(data))
    peak = measured_peak(data, "decode", tmp_path)
    assert peak <= estimate * ESTIMATE_SLACK + ESTIMATE_SLACK_BYTES, f"{peak / MIB:.0f} MiB > {estimate / MIB:.0f}"
    assert peak >= estimate / 3, f"measured {peak / MIB:.0f} MiB: is the measurement blind?"


def test_a_large_jpegs_cheap_views_stay_within_the_decode_estimate(tmp_path):
    """The reduced decode plus the lossless crops (every DCT coefficient held at once) of a 6 MP 4:2:0 JPEG: no more
    memory than the full decode its header was admitted for."""
    data = encode(picture(3000, 2000, True), "JPEG", quality=90)
    assert cheap_decode_scale(open_image(data), crops=True) > 1
    estimate = decode_bytes(open_image(data))
    assert measured_peak(data, "views", tmp_path) <= estimate * ESTIMATE_SLACK + ESTIMATE_SLACK_BYTES


def test_every_path_decodes_to_rgb():
    for name, data in format_cases(96, 64, detailed=True).items():
        image = decode_image(data)
        assert image.mode == "RGB", name
        assert image.size == ((64, 96) if "EXIF" in name else (96, 64)), name


def test_a_jpeg_whose_scan_ends_early_is_refused_before_decoding(monkeypatch):
    """A 3 KB JPEG declaring 7000x7000, its scan cut and an end marker appended: libjpeg would fill it grey."""
    data = short_scan_jpeg()
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded a truncated scan"))
    with pytest.raises(BadImageError, match="truncated") as refused:
        decode_image(data)
    assert refused.value.reason == "truncated_image"


@pytest.mark.parametrize("progressive", [False, True])
def test_small_and_flat_jpegs_are_not_mistaken_for_truncated(progressive):
    for size in ((1, 1), (8, 8), (33, 17), (4000, 3000)):
        data = encode(Image.new("RGB", size, (128, 128, 128)), "JPEG", quality=50, progressive=progressive)
        assert decode_image(data).size == size


def test_a_jpeg_cut_short_without_an_end_marker_is_refused(subset):
    data = encode(sample_rgb(subset).resize((640, 480)), "JPEG", quality=90)
    for cut in (len(data) // 3, len(data) - 200):
        with pytest.raises(BadImageError) as refused:
            decode_image(data[:cut])
        assert refused.value.reason == "truncated_image"


def test_truncated_images_must_not_be_loaded_silently(monkeypatch, subset):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        decode_image(encode(sample_rgb(subset), "PNG"))


def test_sixteen_bit_grayscale_keeps_its_range():
    ramp = np.linspace(0, 65535, 32 * 32, dtype=np.uint16).reshape(32, 32)
    values = np.asarray(to_rgb(Image.fromarray(ramp)))
    assert values.min() == 0 and values.max() == 255
    assert np.array_equal(values[..., 0], (ramp.astype(np.float64) * 255 / 65535).astype(np.uint8))


def test_float_images_up_to_255_keep_their_values_and_nan_is_black():
    values = np.array([[0.0, 1.5, 254.9, 255.0], [-3.0, np.nan, 100.0, 7.0]], dtype=np.float32)
    rgb = np.asarray(to_rgb(Image.fromarray(values)))
    assert rgb[..., 0].tolist() == [[0, 1, 254, 255], [0, 0, 100, 7]]


def test_conversion_in_bands_covers_every_row(monkeypatch):
    """Bands of one row at a time give the same picture as one band."""
    ramp = Image.fromarray(np.arange(40 * 30, dtype=np.float32).reshape(30, 40) * 50)
    whole = np.asarray(to_rgb(ramp))
    monkeypatch.setattr("detector.decoding.BAND_PIXELS", 1)
    assert np.array_equal(np.asarray(to_rgb(ramp)), whole)


def test_transparent_pixels_are_shown_on_white():
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(to_rgb(transparent)).min() == 255
    half = np.asarray(to_rgb(Image.new("RGBA", (4, 4), (0, 0, 0, 128))))
    assert np.all(np.abs(half.astype(int) - 127) <= 1)
    palette = Image.new("P", (4, 4), 3)
    palette.info["transparency"] = 3
    assert np.asarray(to_rgb(palette)).min() == 255


def test_exif_orientation_is_applied(subset):
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = decode_image(encode(sample_rgb(subset).resize((64, 48)), "JPEG", exif=exif))
    assert upright.size == (48, 64)


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data).getpixel((0, 0)) == (255, 0, 0)


def test_the_budget_is_what_a_rotated_50_megapixel_photo_takes():
    assert MAX_DECODE_BYTES == 8 * MAX_PIXELS
