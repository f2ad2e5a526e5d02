"""--report: the audit page a run writes, rendered in a real headless Chromium (test_web's) at a phone's width and a
desktop's, from runs of the real CLI with --local and against a real TorchServe."""

import csv
import io
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import BrowserContext, Page

from bench.inputs import bad_images, encode
from client.report import EXPLAINED, GALLERY_PER_KIND, NO_KIND, Report
from tests.helpers import heavy_noise
from tests.test_cli import corruption_detect
from tests.test_web import SCREENSHOTS, browser  # noqa: F401  (test_web's Chromium fixture)
from training.data import find_images

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1100, "height": 800}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, subset) -> Path:
    """CIFAR-10 test images, some under heavy noise (flagged), and a truncated file."""
    root = tmp_path_factory.mktemp("audit")
    for index, path in enumerate(find_images(subset / "test")[:30:3]):
        image = Image.open(path)
        (root / f"photo-{index:02d}.png").write_bytes(encode(image, "PNG"))
        if index % 2 == 0:
            (root / f"noisy-{index:02d}.jpg").write_bytes(encode(heavy_noise(image, seed=index), "JPEG"))
    (root / "truncated.png").write_bytes(bad_images(subset)["truncated_png"][0])
    return root


def scored(folder: Path, output: Path, *where: str) -> list[dict]:
    """The CLI's rows for the folder (with a report beside them)."""
    done = corruption_detect(str(folder), *where, "-o", str(output), "--report", str(output.with_suffix(".html")))
    assert done.returncode == 3, done.stderr  # the truncated file
    return list(csv.DictReader(output.open()))


def open_report(browser: BrowserContext, path: Path, viewport: dict) -> Page:  # noqa: F811
    page = browser.new_page()
    page.set_viewport_size(viewport)
    page.goto(path.as_uri())
    page.wait_for_function("[...document.images].every((image) => image.complete)")
    return page


def assert_readable(page: Page, name: str) -> None:
    """Nothing wider than the screen, every image decoded, and a screenshot that is not blank."""
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], f"{name}: the page scrolls sideways ({width} px)"
    broken = page.evaluate("[...document.images].filter((image) => !image.naturalWidth).map((image) => image.alt)")
    assert broken == [], f"{name}: images that do not decode"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    assert image.width == page.viewport_size["width"]
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 100, f"{name}: the screenshot is nearly blank"


def test_the_local_report_counts_groups_and_explains_as_the_rows_say(browser, folder, tmp_path):  # noqa: F811
    rows = scored(folder, tmp_path / "scores.csv", "--local")
    labels = Counter(row["label"] or "error" for row in rows)
    flagged = [row for row in rows if row["label"] == "corrupted"]
    kinds = Counter(row["corruption_type"] for row in flagged)
    assert labels["clean"] and flagged and labels["error"] == 1, "precondition: every section has something to show"
    assert all(kinds), "--local gives every corrupted image its likeliest kind of damage"

    page = open_report(browser, tmp_path / "scores.html", PHONE)
    text = page.inner_text("main")
    assert f"{len(rows)} files: {labels['clean']} clean, {labels['corrupted']} corrupted" in text
    for kind, count in kinds.items():
        assert re.search(rf"^{kind}: {count} files?$", text, re.M), kind
        gallery = page.locator(f"h3:has-text('{kind}:') + .grid figure")
        assert gallery.count() == min(count, GALLERY_PER_KIND)
        captions = gallery.locator("figcaption").all_inner_texts()
        shown = [float(caption.split("P = ")[1]) for caption in captions]
        assert shown == sorted(shown, reverse=True), "the most confident first"
    assert page.locator(".grid.wide figure img").count() == min(len(flagged), EXPLAINED), "heat maps of the top ones"
    assert "truncated_image" in page.inner_text("main")
    bars = page.evaluate("[...document.querySelectorAll('svg rect title')].map((title) => title.textContent)")
    assert sum(int(re.search(r": (\d+) files", bar)[1]) for bar in bars) == labels["clean"] + labels["corrupted"]
    assert_readable(page, "report-phone")
    page.set_viewport_size(DESKTOP)
    assert_readable(page, "report-desktop")
    page.close()


def test_a_server_report_without_kinds_groups_its_flagged_images_and_explains_them(
    torchserve,
    browser,  # noqa: F811
    folder,
    tmp_path,
):
    """A server answers without corruption types (model-config.yaml's default): one group, heat maps from the
    server's /explanations."""
    rows = scored(folder, tmp_path / "scores.csv", "--server", torchserve.inference)
    flagged = [row for row in rows if row["label"] == "corrupted"]
    assert flagged and not any(row["corruption_type"] for row in rows)
    page = open_report(browser, tmp_path / "scores.html", PHONE)
    assert f"{NO_KIND}: {len(flagged)} file" in page.inner_text("main")
    assert page.locator(".grid.wide figure img").count() == min(len(flagged), EXPLAINED)
    assert_readable(page, "report-server-phone")
    page.close()


def test_a_large_run_keeps_only_what_it_shows():
    """Every flagged file counts; only the most confident GALLERY_PER_KIND of a kind are kept as images."""
    report = Report()
    for index in range(GALLERY_PER_KIND * 3):
        probability = 0.5 + index / (GALLERY_PER_KIND * 6)
        report.add({"file": f"{index}.png", "label": "corrupted", "confidence": probability,
                    "probs": {"clean": 1 - probability, "corrupted": probability}, "corruption_type": "blur",
                    "error": None})  # fmt: skip
    assert report.kinds == {"blur": GALLERY_PER_KIND * 3}
    kept = sorted(file for _, file in report.flagged["blur"])
    assert kept == sorted(f"{index}.png" for index in range(GALLERY_PER_KIND * 2, GALLERY_PER_KIND * 3))
    assert len(report.top) == EXPLAINED
