"""The photo evaluation: cases made once at every size, every scorer on the same bytes, and the tables."""

import json

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFilter

from detector.corruptions import KINDS
from evaluation import evaluate
from evaluation.photo_eval import (
    BUCKETS,
    CaseSet,
    FixedBrisque,
    PhotoCase,
    Scorer,
    brisque_score,
    bucket_of,
    laplacian_variance,
    photo_cases,
    summarise,
)
from training.corpus import load_built
from training.photo_data import encode_jpeg


@pytest.fixture(scope="module")
def photo(mini_corpus):
    built = load_built(mini_corpus, "test")[0]
    return built, Image.open(mini_corpus / built.file).convert("RGB")


def test_every_size_quality_kind_and_severity_is_a_case(photo):
    built, image = photo
    cases = list(photo_cases(built, image, severities=(1, 3)))
    assert len(cases) == 2 + len(KINDS) * 2, "one size (640 px or smaller): two clean saves and 12 kinds x 2"
    assert [case.label for case, _ in cases[:2]] == [0, 0] and all(case.label for case, _ in cases[2:])
    assert {case.bucket for case, _ in cases} == {"640"}
    assert all(data[:2] == b"\xff\xd8" for _, data in cases), "every case is saved as a JPEG"
    again = list(photo_cases(built, image, severities=(1, 3)))
    assert [data for _, data in cases] == [data for _, data in again], "cases are reproducible"


def test_case_sets_are_written_once(tmp_path, mini_corpus):
    photos = load_built(mini_corpus, "test")[:1]
    cases = CaseSet(tmp_path)
    cases.build(photos, mini_corpus, severities=(3,))
    written = (tmp_path / "cases.json").stat().st_mtime_ns
    cases.build(photos, mini_corpus, severities=(3,))
    assert (tmp_path / "cases.json").stat().st_mtime_ns == written
    assert cases.read(cases.cases()[0])[:2] == b"\xff\xd8"


@pytest.mark.parametrize(
    ("long_side", "bucket"),
    [(466, "640"), (640, "640"), (1000, "1024"), (1600, "1600"), (3088, BUCKETS[-1]), (6000, BUCKETS[-1])],
)
def test_sizes_fall_in_their_bucket(long_side, bucket):
    assert bucket_of(long_side) == bucket


def case(case_id: str, label: int, family: str | None = None, severity: int = 0, variant: str = "clean q92"):
    return PhotoCase(case_id, "p", "640", 640, 480, variant, family and "k", family, severity, label)


def test_summary_counts_false_positives_detection_and_auroc():
    cases = [
        case("c1", 0),
        case("c2", 0, variant="clean q80"),
        case("n3", 1, "noise", 3, "k"),
        case("n5", 1, "noise", 5, "k"),
        case("b3", 1, "blur", 3, "k"),
        case("b1", 1, "blur", 1, "k"),
    ]
    scores = {"c1": 0.1, "c2": 0.7, "n3": 0.9, "n5": 0.95, "b3": 0.4, "b1": 0.2}
    summary = summarise(cases, Scorer("s", scores, lambda s: s > 0.5))
    assert summary["clean_fpr"] == 0.5
    assert summary["clean_fpr_by_bucket_quality"]["640"] == {"clean q92": 0.0, "clean q80": 1.0}
    assert summary["detection_visible"]["noise"] == 1.0 and summary["detection_visible"]["blur"] == 0.0
    assert summary["auroc"]["noise"] == 1.0 and summary["auroc"]["blur"] == pytest.approx(0.5)
    assert summary["balanced_accuracy"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert set(summary["misses"]) == {"c2", "b3"}


def test_the_laplacian_rule_is_the_one_users_copy(photo):
    _, image = photo
    data = encode_jpeg(image, 92)
    grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert laplacian_variance(data) == cv2.Laplacian(grey, cv2.CV_64F).var()
    blurred = encode_jpeg(image.filter(ImageFilter.GaussianBlur(4)), 92)
    assert laplacian_variance(blurred) < laplacian_variance(data)


def test_brisque_runs_offline_and_scores_damage_worse(photo):
    _, image = photo
    scorer = FixedBrisque(url=False)
    clean = brisque_score(scorer, encode_jpeg(image, 92))
    noise = np.random.default_rng(0).normal(0, 25, (image.height, image.width, 3))
    noisy = np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255)
    noisy_score = brisque_score(scorer, encode_jpeg(Image.fromarray(noisy.astype(np.uint8)), 92))
    assert np.isfinite(clean) and noisy_score > clean


def test_evaluate_writes_the_photo_and_cifar_report(trained, mini_corpus, tmp_path, capsys):
    reports = tmp_path / "reports"
    evaluate.main(
        [
            "--model",
            str(trained / "model.pt"),
            "--photos",
            str(mini_corpus),
            "--cases",
            str(tmp_path / "cases"),
            "--photo-limit",
            "1",
            "--severities",
            "3",
            "--limit",
            "12",
            "--baseline-images",
            "60",
            "--reports",
            str(reports),
        ]
    )
    results = json.loads((reports / "robustness.json").read_text())
    assert set(results["photos"]["scorers"]) == {"detector", "laplacian var < 100", "BRISQUE", "heuristic baseline"}
    assert results["cifar"]["training_kinds"]["samples"] == 12 * (1 + 5 * 5)
    report = (reports / "robustness.md").read_text()
    for section in ("## Targets", "## Camera photos", "### Side by side", "## CIFAR-10", "### CIFAR-10-C kinds"):
        assert section in report
    for figure in ("photo_detection_by_severity", "detection_by_severity", "heldout_by_severity", "reliability"):
        assert (reports / f"{figure}.png").stat().st_size > 1000 and f"({figure}.png)" in report
    printed = capsys.readouterr().out
    assert "photos (1 test photos" in printed and f"report: {reports / 'robustness.md'}" in printed
    with pytest.raises(SystemExit) as failed:
        evaluate.main(
            [
                "--model",
                str(trained / "model.pt"),
                "--no-photos",
                "--limit",
                "12",
                "--baseline-images",
                "60",
                "--reports",
                str(reports),
                "--check",
            ]
        )
    assert failed.value.code == 1, "a ten-step model meets no target: --check fails"
