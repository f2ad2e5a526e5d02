"""The README's curl examples, run with bash as a user pastes them, against a real TorchServe and a real photo
too large for a command line once base64-encoded (the old JSON example failed with "Argument list too long"); the
model-version walkthrough and the KServe routes TorchServe does not have; no command chained after `make serve`."""

import json
import re
import subprocess

import numpy as np
import pytest
import requests
from PIL import Image

from bench.inputs import encode, sample_rgb
from bench.torchserve import ROOT
from tests.helpers import TIMEOUT

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


def bash_lines() -> list[str]:
    """Every line of every bash block of the README."""
    return [line for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S) for line in block.splitlines()]


def run_bash(command: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-eo", "pipefail", "-c", command], cwd=cwd, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_the_readme_has_the_examples_this_test_runs():
    found = {name: commands(section(name)) for name in SECTIONS}
    assert len(found["Predictions"]) >= 3 and len(found["KServe"]) == 2, found


@pytest.mark.parametrize("name", SECTIONS)
def test_every_curl_example_works_with_a_real_photo(torchserve, photo, name):
    for command in commands(section(name)):
        command = command.replace("http://127.0.0.1:8080", torchserve.inference)
        command = command.replace("curl ", "curl -sS --fail-with-body ")
        done = run_bash(command, photo)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        body = json.loads(done.stdout)
        if "predictions" in body:
            assert [answer["label"] in ("clean", "corrupted") for answer in body["predictions"]] == [True]
        elif "outputs" in body:
            assert [output["name"] for output in body["outputs"]] == ["label", "confidence", "probs"]
        else:
            assert body["label"] in ("clean", "corrupted")


def test_no_command_is_chained_after_make_serve():
    """`make serve` runs in the foreground until Ctrl-C: whatever follows it on its line never runs."""
    serves = [line for line in bash_lines() if re.match(r"\s*make serve\b", line)]
    assert serves and not [line for line in serves if re.search(r"make serve[^#]*(&&|;|\|)", line)], serves


def test_the_model_version_walkthrough_runs_and_its_canary_has_one_worker(torchserve, photo):
    """Register 2.0, scale it to one worker, predict with it, promote it, roll back, unregister: as the README says.
    TorchServe 0.12 ignores initial_workers at registration: the scaling command is what makes the canary small."""
    urls = {"http://127.0.0.1:8080": torchserve.inference, "http://127.0.0.1:8081": torchserve.management}
    steps = [line.split("  #")[0] for line in section("Model versions").splitlines() if line.startswith("curl ")]
    assert [re.search(r"-X (\w+)", step)[1] for step in steps if "-X" in step][:3] == ["POST", "PUT", "POST"], steps
    try:
        for step in steps:
            for old, new in urls.items():
                step = step.replace(old, new)
            done = run_bash(step.replace("curl ", "curl -sS --fail-with-body ", 1), photo)
            assert done.returncode == 0, f"{step}\n{done.stdout}\n{done.stderr}"
            if "min_worker=1" in step:
                (described,) = requests.get(f"{torchserve.management}/models/corruption/2.0", timeout=TIMEOUT).json()
                assert len(described["workers"]) == 1, described["workers"]
    finally:
        requests.put(f"{torchserve.management}/models/corruption/1.0/set-default", timeout=TIMEOUT)
        requests.delete(f"{torchserve.management}/models/corruption/2.0", timeout=TIMEOUT)
    default = requests.get(f"{torchserve.management}/models/corruption", timeout=TIMEOUT).json()
    assert [model["modelVersion"] for model in default] == ["1.0"]


def test_the_kserve_routes_the_readme_calls_missing_are_404_and_its_alternatives_answer(torchserve):
    missing = re.findall(r"`GET (/v[12]/[^`]+)`", section("KServe"))
    assert len(missing) >= 4, missing
    for route in missing:
        assert requests.get(f"{torchserve.inference}{route}", timeout=TIMEOUT).status_code == 404, route
    assert "`GET :8080/ping`" in section("KServe") and "`GET :8081/models/corruption`" in section("KServe")
    assert requests.get(f"{torchserve.inference}/ping", timeout=TIMEOUT).json() == {"status": "Healthy"}
    (described,) = requests.get(f"{torchserve.management}/models/corruption", timeout=TIMEOUT).json()
    assert {worker["status"] for worker in described["workers"]} == {"READY"}
