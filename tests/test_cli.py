"""The installed `corruption-detect` console script, run as a user runs it, against a real TorchServe and with
--local: folders, globs, CSV and JSON Lines, refused files in their rows, the summary and the exit codes."""

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from bench.inputs import bad_images, encode, good_images, sample_rgb
from bench.torchserve import free_port
from client.cli import COLUMNS
from tests.helpers import TIMEOUT, assert_same_answer, heavy_noise

# Installed by `make install` from pyproject.toml's [project.scripts].
CLI = Path(sys.executable).with_name("corruption-detect")


def corruption_detect(*args: str) -> subprocess.CompletedProcess:
    assert CLI.is_file(), f"{CLI} missing: `make install` installs the project's console script"
    return subprocess.run([str(CLI), "--no-progress", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, subset) -> Path:
    """Photos as a user keeps them: nested folders, several formats, a file that is not an image, a hidden folder
    and a non-image suffix that a folder search skips."""
    root = tmp_path_factory.mktemp("photos")
    good = good_images(subset)
    (root / "2024" / "june").mkdir(parents=True)
    (root / ".thumbnails").mkdir()
    (root / "a.png").write_bytes(good["png"])
    (root / "2024" / "b.jpg").write_bytes(good["jpeg"])
    (root / "2024" / "june" / "c.webp").write_bytes(good["large_webp"])
    (root / "2024" / "june" / "d.JPEG").write_bytes(good["exif_rotated_jpeg"])
    (root / "broken.png").write_bytes(bad_images(subset)["truncated_png"][0])
    (root / ".thumbnails" / "a.png").write_bytes(good["png"])
    (root / "notes.txt").write_text("not an image")
    return root


def server_answer(server, path: Path) -> dict:
    response = requests.post(f"{server.inference}/predictions/corruption", data=path.read_bytes(), timeout=TIMEOUT)
    return response.json()


def test_a_folder_becomes_a_csv_with_one_row_per_file(torchserve, folder, tmp_path):
    out = tmp_path / "scores.csv"
    done = corruption_detect(str(folder), "--server", torchserve.inference, "-o", str(out), "-c", "3")
    assert done.returncode == 3, done.stderr  # one file was refused
    rows = list(csv.DictReader(out.open()))
    expected_files = ["2024/b.jpg", "2024/june/c.webp", "2024/june/d.JPEG", "a.png", "broken.png"]
    assert [Path(row["file"]).relative_to(folder).as_posix() for row in rows] == expected_files
    for row in rows:
        answer = server_answer(torchserve, Path(row["file"]))
        if row["file"].endswith("broken.png"):
            assert row["label"] == "" and row["error"].startswith("truncated_image: ")
            continue
        assert row["error"] == ""
        shown = {"p_clean": "clean", "p_corrupted": "corrupted"}
        probs = {name: float(row[column]) for column, name in shown.items()}
        assert_same_answer({"label": row["label"], "confidence": float(row["confidence"]), "probs": probs}, answer)
    assert "5 files" in done.stderr and "1 not scored" in done.stderr and str(out) in done.stderr


def test_json_lines_globs_and_explicit_files(torchserve, folder):
    done = corruption_detect(
        f"{folder}/**/*.jp*g", str(folder / "notes.txt"), "--server", torchserve.inference, "--format", "jsonl"
    )
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [Path(r["file"]).name for r in records] == ["b.jpg", "notes.txt"], "glob matches are case-sensitive"
    assert records[0]["probs"] == pytest.approx(server_answer(torchserve, folder / "2024" / "b.jpg")["probs"], abs=1e-5)
    assert records[1]["error"]["type"] == "not_an_image" and records[1]["error"]["status"] == 400
    assert done.returncode == 3


def test_fail_on_corrupted_gates_a_ci_job(torchserve, subset, tmp_path):
    noisy = encode(heavy_noise(sample_rgb(subset).resize((256, 256))), "PNG")
    (tmp_path / "noisy.png").write_bytes(noisy)
    assert server_answer(torchserve, tmp_path / "noisy.png")["label"] == "corrupted", "precondition"
    gate = corruption_detect(str(tmp_path), "--server", torchserve.inference, "--fail-on-corrupted")
    assert gate.returncode == 1, gate.stderr
    assert corruption_detect(str(tmp_path), "--server", torchserve.inference).returncode == 0


def test_local_mode_needs_no_server_and_agrees_with_it(torchserve, folder):
    remote = corruption_detect(str(folder), "--server", torchserve.inference, "--format", "jsonl")
    local = corruption_detect(str(folder), "--local", "--format", "jsonl")
    assert local.returncode == remote.returncode == 3, local.stderr
    here, there = ([json.loads(line) for line in run.stdout.splitlines()] for run in (local, remote))
    assert [record["file"] for record in here] == [record["file"] for record in there]
    for mine, theirs in zip(here, there, strict=True):
        assert mine["error"] == theirs["error"]
        if mine["error"] is None:
            assert_same_answer({key: mine[key] for key in ("label", "confidence", "probs")},
                               {key: theirs[key] for key in ("label", "confidence", "probs")})  # fmt: skip


def test_a_server_that_is_down_exits_4_with_a_hint(folder):
    done = corruption_detect(str(folder), "--server", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 4
    assert "make serve" in done.stderr and "--local" in done.stderr


def test_nothing_to_score_exits_2(tmp_path):
    done = corruption_detect(str(tmp_path / "*.png"))
    assert done.returncode == 2 and "no images found" in done.stderr


def test_a_path_that_does_not_exist_exits_2_before_scoring(folder, tmp_path):
    """As the README's exit codes say: a bad argument, not a file left unscored (3)."""
    done = corruption_detect(str(folder / "a.png"), str(tmp_path / "missing.png"), "--local")
    assert done.returncode == 2, done.stderr
    assert f"{tmp_path / 'missing.png'}: no such file or folder" in done.stderr and done.stdout == ""


def test_a_json_output_is_one_array_and_a_server_needs_no_scheme(torchserve, folder, tmp_path):
    """`-o x.json` writes JSON (`.jsonl`: JSON Lines), and `--server HOST:PORT` means http://HOST:PORT."""
    address = torchserve.inference.removeprefix("http://")
    for name in ("one.json", "one.jsonl"):
        done = corruption_detect(str(folder / "a.png"), "--server", address, "-o", str(tmp_path / name))
        assert done.returncode == 0, done.stderr
        assert "corruption-detect: 1 file in " in done.stderr
    (record,) = json.loads((tmp_path / "one.json").read_text())
    assert [record] == [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert record["file"] == str(folder / "a.png") and record["error"] is None
    assert_same_answer({key: record[key] for key in ("label", "confidence", "probs")},
                       server_answer(torchserve, folder / "a.png"))  # fmt: skip
    empty = corruption_detect(str(folder / "notes.txt"), "--server", address, "--format", "json")
    assert empty.returncode == 3 and json.loads(empty.stdout)[0]["error"]["type"] == "not_an_image"


def test_a_server_url_of_another_scheme_is_a_usage_error(folder):
    done = corruption_detect(str(folder / "a.png"), "--server", "ftp://127.0.0.1:8080")
    assert done.returncode == 2 and "http://HOST:PORT" in done.stderr


def test_csv_columns_are_documented():
    """The README documents these columns; a rename must update it."""
    header = io.StringIO()
    csv.writer(header).writerow(COLUMNS)
    assert header.getvalue().strip() == "file,label,confidence,p_clean,p_corrupted,corruption_type,error"
