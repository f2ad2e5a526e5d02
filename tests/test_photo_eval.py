"""The photo evaluation: cases made once at every size, every scorer on the same bytes, and the tables."""

import json
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFilter

from detector.corruptions import KINDS, encode_jpeg
from detector.model import is_corrupted, lineage, read_checkpoint
from detector.paths import SHIPPED_WEIGHTS
from evaluation import evaluate
from evaluation.photo_eval import (
    BUCKETS,
    HELD_OUT,
    SEEN_IN_CALIBRATION,
    SEEN_IN_TRAINING,
    SHIPPED_MODEL_PHOTOS,
    CaseSet,
    FixedBrisque,
    ModelPhotos,
    PhotoCase,
    Scorer,
    Source,
    brisque_score,
    bucket_of,
    by_group,
    by_tag,
    false_alarms,
    laplacian_peer,
    laplacian_variance,
    model_photos,
    photo_cases,
    photo_sources,
    photo_tags,
    summarise,
    worst_group,
)
from evaluation.report import SHEET_COLUMNS, THUMBNAIL, draw_contact_sheet
from tests.test_photo_data import built
from training.corpus import load_built


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


def case(
    case_id: str, label: int, family: str | None = None, severity: int = 0, variant: str = "clean q92", photo="p"
) -> PhotoCase:
    return PhotoCase(case_id, photo, "640", 640, 480, variant, family and "k", family, severity, label)


def index_cases(folder: Path, cases: list[PhotoCase]) -> Path:
    """`folder` holding an index of `cases` as CaseSet.build writes it (no image files: the tests read scores)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cases.json").write_text(json.dumps({"key": {}, "cases": [asdict(c) for c in cases]}))
    return folder


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


def test_the_laplacian_peer_alone_scores_every_case_and_blur_higher(tmp_path, mini_corpus):
    """`--laplacian-only`: the blur peer without BRISQUE's seconds per image; higher scores mean more corrupted."""
    cases = CaseSet(tmp_path)
    cases.build(load_built(mini_corpus, "test")[:1], mini_corpus, severities=(3,))
    scorer = laplacian_peer(cases)
    assert set(scorer.score) == {case.id for case in cases.cases()}
    clean = max(scorer.score[case.id] for case in cases.cases() if case.label == 0)
    assert all(scorer.score[case.id] > clean for case in cases.cases() if case.family == "blur")


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
            "--save-scores",
            str(tmp_path / "scores.json"),
        ]
    )
    results = json.loads((reports / "robustness.json").read_text())
    assert len(json.loads((tmp_path / "scores.json").read_text())) == 2 + len(KINDS), "the detector's, per case"
    photos = results["photos"]
    held_out = photos["held_out"]
    assert set(held_out["scorers"]) == {"detector", "laplacian var < 100", "BRISQUE", "heuristic baseline"}
    assert photos["model_photos"] == "the checkpoint's own record"
    assert photos["groups"]["matplotlib"]["seen"] == HELD_OUT and photos["worst_group"] == "matplotlib"
    assert next(iter(photos["parts"])) == "sources never seen (held out)"
    assert results["cifar"]["training_kinds"]["samples"] == 12 * (1 + 5 * 5)
    report = (reports / "robustness.md").read_text()
    sections = ("## Targets", "## Camera photos, by source", "### Every source group", "content tag", "### Side by")
    for section in (*sections, "## CIFAR-10", "### CIFAR-10-C kinds", "leave-one-group-out"):
        assert section in report
    for figure in ("photo_detection_by_severity", "detection_by_severity", "heldout_by_severity", "reliability"):
        assert (reports / f"{figure}.png").stat().st_size > 1000 and f"({figure}.png)" in report
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("photos, sources never seen (held out): 1 source groups, 1 photos")
    assert f"report: {reports / 'robustness.md'}" in printed
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


def test_each_set_of_groups_keeps_its_cases_in_a_folder_of_its_own():
    assert evaluate.case_folder("test", None) == "test" and evaluate.case_folder("all", None) == "all"
    one, same, other = (evaluate.case_folder("groups", g) for g in (["a", "b"], ["b", "a"], ["a"]))
    assert one == same and one != other and one.startswith("groups-")


def test_a_group_is_seen_under_the_name_it_was_recorded_with_or_its_name_now():
    corpus = [
        built("a", "train", "kphotoalbum", group="kphotoalbum:Ann"),
        built("b", "test", "kphotoalbum", group="kphotoalbum:Bob"),
        built("c", "test", "kphotoalbum", group="kphotoalbum:Ann"),
        built("d", "test", "plasma"),
        built("e", "val", "lomiri"),
    ]
    seen = ModelPhotos(train={"a": "kphotoalbum", "gone": "plasma"}, val={"e": "lomiri"}, record="test")
    sources = photo_sources(corpus, seen)
    assert {i: s.seen for i, s in sources.items()} == {
        "a": SEEN_IN_TRAINING,
        "b": HELD_OUT,
        "c": SEEN_IN_TRAINING,
        "d": SEEN_IN_TRAINING,
        "e": SEEN_IN_CALIBRATION,
    }


def test_the_shipped_weights_are_judged_against_every_photo_they_and_their_starting_weights_saw():
    """The shipped model was fine-tuned from weights whose record predates checkpoint records: the photos of both
    count as seen."""
    seen = model_photos(SHIPPED_WEIGHTS, [])
    metadata = read_checkpoint(SHIPPED_WEIGHTS)["metadata"]
    earlier = json.loads(SHIPPED_MODEL_PHOTOS.read_text())
    assert earlier["sha256"] in lineage(metadata) and SHIPPED_MODEL_PHOTOS.name in seen.record
    assert seen.train == {**earlier["train"], **earlier["val"], **metadata["training_photos"]}
    assert seen.train["kphotoalbum--anne-helene"] == "kphotoalbum", "a photo only the starting weights learnt from"
    assert seen.val == metadata["calibration"]["validation_photos"]


def test_a_photos_tags_are_its_recorded_content_tags():
    assert photo_tags(built("c", "test", "p", tags=("macro", "night"))) == ("macro", "night")
    assert photo_tags(built("d", "test", "p")) == ()


def test_groups_tags_and_false_alarms_are_counted_per_source(tmp_path):
    sources = {
        "p": Source("g1", ("macro",), "test", HELD_OUT),
        "q": Source("g2", (), "test", HELD_OUT),
        "r": Source("g3", ("macro",), "train", SEEN_IN_TRAINING),
    }
    cases = [
        case("p-c1", 0, photo="p"),
        case("p-c2", 0, photo="p", variant="clean q80"),
        case("p-n3", 1, "noise", 3, "k", photo="p"),
        case("q-c1", 0, photo="q"),
        case("q-n3", 1, "noise", 3, "k", photo="q"),
        case("r-c1", 0, photo="r"),
    ]
    scorer = Scorer(
        "detector", {"p-c1": 0.2, "p-c2": 0.9, "p-n3": 0.8, "q-c1": 0.1, "q-n3": 0.3, "r-c1": 0.7}, is_corrupted
    )
    groups = by_group(cases, scorer, sources)
    assert groups["g1"]["clean_fpr"] == 0.5 and groups["g2"]["clean_fpr"] == 0.0 and groups["g3"]["seen"] == "train"
    assert worst_group(groups) == "g1", "the worst of the held-out groups; g3 was seen"
    tags = by_tag(cases, scorer, sources)
    assert tags["macro"]["held_out"] == {"photos": 1, "clean_cases": 2, "clean_fpr": 0.5}
    assert tags["macro"]["seen"]["clean_fpr"] == 1.0 and tags["untagged"]["held_out"]["clean_fpr"] == 0.0
    alarms = false_alarms(CaseSet(index_cases(tmp_path, cases)), scorer, sources)
    assert [(a["photo"], a["flagged"], a["clean_cases"]) for a in alarms] == [
        ("p", ["640 q80"], 2),
        ("r", ["640 q92"], 1),
    ]
    assert alarms[0]["file"] == str(tmp_path / "p-c2.jpg")


def test_the_contact_sheet_shows_each_flagged_clean_photo(tmp_path, photo):
    _, image = photo
    (tmp_path / "a.jpg").write_bytes(encode_jpeg(image, 92))
    alarm = {"photo": "a", "group": "g", "seen": HELD_OUT, "flagged": ["640 q92"], "clean_cases": 2, "score": 0.9}
    shown = {**alarm, "file": str(tmp_path / "a.jpg")}
    draw_contact_sheet([shown, {**alarm, "file": str(tmp_path / "missing.jpg")}], tmp_path / "sheet.jpg")
    sheet = Image.open(tmp_path / "sheet.jpg")
    assert sheet.size == (SHEET_COLUMNS * (THUMBNAIL + 8), THUMBNAIL + 3 * 12 + 8)
