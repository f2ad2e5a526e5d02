"""The README's curl examples, run with bash as a user pastes them, against a real TorchServe and a real photo
too large for a command line once base64-encoded (the old JSON example failed with "Argument list too long")."""

import json
import re
import subprocess

import numpy as np
import pytest
from PIL import Image

from bench.inputs import encode, sample_rgb
from bench.torchserve import ROOT

README = ROOT / "README.md"
# Sections whose examples post photo.jpg to the default server; versioned examples need a registered 2.0.
SECTIONS = ("Predictions", "KServe")
LIMIT = 131072  # Linux's MAX_ARG_STRLEN: one command-line argument longer than this cannot be passed


def section(name: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {name}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def commands(text: str) -> list[str]:
    """The curl commands of a section's bash blocks, with continuation lines joined (trailing '|' or '\\')."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        pending = ""
        for line in block.splitlines():
            if not pending and (not line.strip() or line.lstrip().startswith(("#", '{"', '  {"')) or "make " in line):
                continue
            pending += line + "\n"
            if not line.rstrip().endswith(("|", "\\")):
                found.append(pending)
                pending = ""
    return [command for command in found if "curl" in command and "photo.jpg" in command and "/2.0" not in command]


@pytest.fixture(scope="module")
def photo(tmp_path_factory, subset):
    """A noisy 1600x1200 JPEG: about 1 MB, 1.4 MB of base64."""
    pixels = np.asarray(sample_rgb(subset).resize((1600, 1200)), dtype=np.float32)
    noisy = np.clip(pixels + np.random.default_rng(0).normal(0, 20, pixels.shape), 0, 255).astype(np.uint8)
    folder = tmp_path_factory.mktemp("readme")
    (folder / "photo.jpg").write_bytes(encode(Image.fromarray(noisy), "JPEG", quality=95))
    assert (folder / "photo.jpg").stat().st_size * 4 / 3 > LIMIT
    return folder


def test_the_readme_has_the_examples_this_test_runs():
    found = {name: commands(section(name)) for name in SECTIONS}
    assert len(found["Predictions"]) >= 3 and len(found["KServe"]) == 2, found


@pytest.mark.parametrize("name", SECTIONS)
def test_every_curl_example_works_with_a_real_photo(torchserve, photo, name):
    for command in commands(section(name)):
        command = command.replace("http://127.0.0.1:8080", torchserve.inference)
        command = command.replace("curl ", "curl -sS --fail-with-body ")
        done = subprocess.run(["bash", "-eo", "pipefail", "-c", command], cwd=photo, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        body = json.loads(done.stdout)
        if "predictions" in body:
            assert [answer["label"] in ("clean", "corrupted") for answer in body["predictions"]] == [True]
        elif "outputs" in body:
            assert [output["name"] for output in body["outputs"]] == ["label", "confidence", "probs"]
        else:
            assert body["label"] in ("clean", "corrupted")
