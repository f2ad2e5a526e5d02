"""Fuzzing the decoding path in-process: arbitrary and mutated bytes only ever raise BadImageError."""

import io
import resource
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bench.inputs import png_header_only
from detector.decoding import MAX_PIXELS, BadImageError, decode_image
from detector.preprocessing import image_bytes_to_views

# Pillow warns about the corrupt metadata these inputs are made of.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FUZZ = settings(
    max_examples=300, deadline=timedelta(seconds=2), suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
# Resident memory may grow by at most this much over a whole fuzz run.
MEMORY_BOUND_MB = 512


def seeds() -> list[bytes]:
    """Valid images to mutate: PNG, JPEG, GIF, BMP, TIFF and WebP of a small gradient."""
    image = Image.linear_gradient("L").resize((40, 30)).convert("RGB")
    encoded = []
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        encoded.append(buffer.getvalue())
    return encoded


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid image with bytes flipped, a slice cut out, or junk spliced in."""
    data = bytearray(draw(st.sampled_from(seeds())))
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        if action == "flip":
            data[position] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[position : position + draw(st.integers(1, 64))]
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        else:
            del data[max(position, 8) :]
        if not data:
            break
    return bytes(data)


def assert_decodes_or_refuses(data: bytes) -> None:
    """The decoder gives an RGB image or a BadImageError; the model's views of what it accepts raise nothing else."""
    try:
        image = decode_image(data)
        assert image.mode == "RGB" and min(image.size) >= 1
        image_bytes_to_views(data)
    except BadImageError as error:
        assert error.reason and error.message


@pytest.fixture(scope="module", autouse=True)
def memory_stays_bounded():
    """Peak RSS of this process must not grow by more than MEMORY_BOUND_MB while fuzzing."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < MEMORY_BOUND_MB, f"peak RSS grew by {grown_mb:.0f} MB"


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data):
    assert_decodes_or_refuses(data)


@FUZZ
@given(mutated_images())
def test_mutated_valid_images(data):
    assert_decodes_or_refuses(data)


@FUZZ
@given(st.integers(1, 60000), st.integers(1, 60000))
def test_declared_size_beyond_the_limit_is_refused_before_decoding(width, height):
    try:
        image = decode_image(png_header_only(width, height))  # pixel data is a 16-byte stub
    except BadImageError as refused:
        assert (refused.reason == "too_many_pixels") == (width * height > MAX_PIXELS)
    else:
        assert width * height <= MAX_PIXELS and image.size == (width, height)
