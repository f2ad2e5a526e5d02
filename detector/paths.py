"""Where a checkout keeps the project's files, and which file names are images: one definition for every package.

Packed into archives with the rest of `detector/`, where nothing reads these: the served model comes from the
archive, never from a checkout's weights/.
"""

from pathlib import Path

# The repository root (the checkout, or an editable install of it).
ROOT = Path(__file__).resolve().parent.parent
# The default model the project ships (MODEL_CARD.md).
SHIPPED_WEIGHTS = ROOT / "weights" / "model.pt"
# The suffixes a folder search takes as images: the formats decoding.py reads (a file named explicitly is tried
# whatever its name).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"})
