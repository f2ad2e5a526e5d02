"""The web page in a real browser (Debian's headless Chromium, driven by Playwright) against a real TorchServe.

The page is served as web/README.md says (`python -m http.server`'s server and
handler) at the origin config.properties allows (cors_allowed_origin), so Chromium
applies CORS and its local-network rules to the page's calls as it does for a user.
Screenshots go to test-artifacts/screenshots/ (untracked; they show the run's random ports), or to
$SCREENSHOT_DIR: `SCREENSHOT_DIR=reports/screenshots make test` refreshes the ones the README shows.
"""

import base64
import contextlib
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from bench.inputs import encode, sample_rgb
from bench.torchserve import ROOT, free_port
from detector.corruptions import TYPES
from tests.helpers import heavy_noise
from training.data import find_images

WEB = ROOT / "web"
SCREENSHOTS = ROOT / os.environ.get("SCREENSHOT_DIR", "test-artifacts/screenshots")
ORIGIN = re.search(r"^cors_allowed_origin=(.+)$", (ROOT / "config.properties").read_text(), re.M)[1].strip()
# Debian's package (.ci/run installs it): Playwright's own browser download is not used.
CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The page waits up to 60 s for TorchServe; the assertions wait as long.
TIMEOUT_MS = 60_000
# style.css's --clean and --corrupted, as the browser computes them.
LABEL_COLOURS = {"clean": "rgb(46, 125, 50)", "corrupted": "rgb(198, 40, 40)"}


class StaticHandler(SimpleHTTPRequestHandler):
    """`python -m http.server --directory web`'s handler, without its access log on stderr."""

    def log_message(self, format: str, *args) -> None:
        pass


@contextlib.contextmanager
def static_server(port: int) -> Iterator[str]:
    """Serve web/ on loopback `port` (retrying a while if another test run holds it); yield its origin."""
    deadline = time.monotonic() + 60
    while True:
        try:
            server = ThreadingHTTPServer(("127.0.0.1", port), partial(StaticHandler, directory=str(WEB)))
            break
        except OSError as error:
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {port} of the page's origin (cors_allowed_origin) stays busy") from error
            time.sleep(1)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def origins() -> Iterator[tuple[str, str]]:
    """The page at the origin TorchServe allows, and at another one."""
    with static_server(urlsplit(ORIGIN).port) as allowed, static_server(free_port()) as other:
        assert allowed == ORIGIN
        yield allowed, other


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[BrowserContext]:
    """Chromium with a fresh profile."""
    assert CHROMIUM, "chromium not found: apt-get install chromium (see .ci/run)"
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 840, "height": 600},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: BrowserContext, origins) -> Iterator[Page]:
    page = browser.new_page()
    try:
        yield page
    finally:
        page.close()


def open_page(page: Page, server: str, origin: str = ORIGIN) -> None:
    page.goto(f"{origin}/?server={server}")
    expect(page.locator("#server")).to_have_value(server)


def predict(torchserve, data: bytes) -> dict:
    response = requests.post(f"{torchserve.inference}/predictions/corruption", data=data, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def clean_and_corrupted(torchserve, subset, tmp_path_factory) -> tuple[Path, Path]:
    """PNG files of the test image the model finds cleanest of the first 20, and of it under heavy noise."""
    folder = tmp_path_factory.mktemp("uploads")
    images = [Image.open(path).convert("RGB") for path in find_images(subset / "test")[:20]]
    pngs = [encode(image, "PNG") for image in images]
    best = max(range(len(pngs)), key=lambda i: predict(torchserve, pngs[i])["probs"]["clean"])
    noisy = encode(heavy_noise(images[best]), "PNG")
    assert predict(torchserve, pngs[best])["label"] == "clean", "precondition: no test image is predicted clean"
    assert predict(torchserve, noisy)["label"] == "corrupted", "precondition: heavy noise is not predicted corrupted"
    (folder / "clean.png").write_bytes(pngs[best])
    (folder / "corrupted.png").write_bytes(noisy)
    return folder / "clean.png", folder / "corrupted.png"


def drop_file(page: Page, path: Path, mime: str) -> None:
    """Drag-and-drop a file onto the drop zone, as the browser does with a file from the desktop."""
    transfer = page.evaluate_handle(
        """([name, mime, data]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: mime}));
            return transfer;
        }""",
        [path.name, mime, base64.b64encode(path.read_bytes()).decode()],
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})


def assert_shows(page: Page, expected: dict) -> None:
    """The page shows the server's label, confidence, both probabilities as bars, and a loaded overlay at its own
    aspect ratio, captioned as evidence of corruption only for a corrupted verdict."""
    expect(page.locator("#label")).to_have_text(expected["label"], timeout=TIMEOUT_MS)
    # The page's stylesheet applies (a broken style.css would leave the verdict uncoloured).
    expect(page.locator("#label")).to_have_css("color", LABEL_COLOURS[expected["label"]])
    expect(page.locator("#confidence")).to_have_text(f"{expected['confidence'] * 100:.1f}%")
    for name, probability in expected["probs"].items():
        shown = f"{probability * 100:.1f}%"
        expect(page.locator(f"#prob-{name}")).to_have_text(shown)
        bar = page.locator(f"#bar-{name}")
        fill = bar.evaluate(
            "bar => bar.getBoundingClientRect().width / bar.parentElement.getBoundingClientRect().width"
        )
        assert fill == pytest.approx(probability, abs=0.01), f"the {name} bar is {fill:.1%} full"
    expect(page.locator("#error")).to_be_hidden()
    page.wait_for_function("document.getElementById('overlay').complete")
    natural, shown = page.locator("#overlay").evaluate(
        "image => [image.naturalWidth / image.naturalHeight, image.width / image.height]"
    )
    assert natural > 0 and shown == pytest.approx(natural, rel=0.02), "the overlay is shown at its own aspect ratio"
    caption = "Where the model sees corruption" if expected["label"] == "corrupted" else "Clean verdict: no corruption"
    expect(page.locator("#overlay-caption")).to_contain_text(caption)


def test_clean_and_corrupted_images_show_label_probabilities_and_heatmap(torchserve, page, clean_and_corrupted):
    clean, corrupted = clean_and_corrupted
    open_page(page, torchserve.inference)
    page.set_input_files("#file", clean)
    assert_shows(page, predict(torchserve, clean.read_bytes()))
    drop_file(page, corrupted, "image/png")
    assert_shows(page, predict(torchserve, corrupted.read_bytes()))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "web-corrupted.png", full_page=True)


def test_a_3_by_2_photo_keeps_its_shape(torchserve, page, subset, tmp_path):
    """The page showed a 3:2 photo squashed to a square; now both images keep their aspect ratio."""
    photo = tmp_path / "photo.png"
    photo.write_bytes(encode(sample_rgb(subset).resize((360, 240)), "PNG"))
    open_page(page, torchserve.inference)
    page.set_input_files("#file", photo)
    assert_shows(page, predict(torchserve, photo.read_bytes()))
    page.wait_for_function("document.getElementById('preview').complete")
    ratio = page.locator("#preview").evaluate("image => image.width / image.height")
    assert ratio == pytest.approx(1.5, rel=0.02)


def test_a_non_image_file_is_refused_before_sending(torchserve, page):
    open_page(page, torchserve.inference)
    sent = []
    page.on("request", lambda request: sent.append(request.url))
    page.set_input_files("#file", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"just some notes"})
    expect(page.locator("#error")).to_have_text(re.compile(r'"notes.txt" is not an image \(text/plain\)'))
    expect(page.locator("#result")).to_be_hidden()
    assert not [url for url in sent if url.startswith(torchserve.inference)]


def test_a_file_the_server_refuses_shows_its_4xx_message(torchserve, page):
    open_page(page, torchserve.inference)
    page.set_input_files("#file", {"name": "photo.png", "mimeType": "image/png", "buffer": b"not really a PNG"})
    expect(page.locator("#error")).to_have_text(
        re.compile(r"The server refused this file \(not_an_image\): the body is not a supported image"),
        timeout=TIMEOUT_MS,
    )
    expect(page.locator("#result")).to_be_hidden()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "web-error.png", full_page=True)


def test_a_server_that_is_down_gets_a_clear_message(page, clean_and_corrupted):
    """It says how the project starts a server that allows this page: the same PORT for both, or ORIGIN=."""
    port = free_port()
    open_page(page, f"127.0.0.1:{port}")  # no scheme: http:// as in the Python client
    page.set_input_files("#file", clean_and_corrupted[0])
    expect(page.locator("#error")).to_have_text(re.compile(
        rf"Cannot reach TorchServe at http://127.0.0.1:{port}\. Is it running \(make serve\)\? .*"
        rf"make serve PORT={port}, then make web PORT={port}.* make serve ORIGIN={re.escape(ORIGIN)}"))  # fmt: skip


def test_the_page_names_every_damage_family():
    intro = re.search(r'<p class="intro">(.*?)</p>', (ROOT / "web" / "index.html").read_text(), re.S)[1]
    assert [family for family in TYPES[1:] if family not in intro] == []


def test_cors_lets_only_the_configured_origin_read_answers(torchserve, page, origins, clean_and_corrupted):
    """The same page from another origin is blocked by the browser: CORS is what makes the page work."""
    other = origins[1]
    preflight = requests.options(
        f"{torchserve.inference}/explanations/corruption", headers={"Origin": other}, timeout=60
    )
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    open_page(page, torchserve.inference, other)
    page.set_input_files("#file", clean_and_corrupted[0])
    expect(page.locator("#error")).to_have_text(
        re.compile(rf"it must allow this page's origin, {other}: .* make serve ORIGIN={re.escape(other)}\.$")
    )
