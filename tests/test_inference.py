"""The one batch pipeline of the core: records in request order, refusals in place, explanations of the view
that decided, at the image's aspect ratio."""

import statistics
import subprocess
import sys

import pytest
from PIL import Image

from bench.inputs import encode
from bench.limits import MAKERS
from bench.torchserve import ROOT
from detector.allocator import reuse_freed_memory
from detector.budget import MAX_EXPLANATIONS, MAX_IMAGES, MAX_PIXELS, Work, refusal
from detector.decoding import BadImageError, decode_bytes, open_image
from detector.explain import HEATMAP_CELLS
from detector.inference import CorruptionDetector
from detector.paths import SHIPPED_WEIGHTS
from tests.test_preprocessing import gradient


@pytest.fixture(scope="module")
def detector() -> CorruptionDetector:
    return CorruptionDetector(SHIPPED_WEIGHTS, corruption_type=True)


def test_records_keep_request_order_and_refusals_stay_in_place(detector):
    photo = encode(gradient(640, 480), "JPEG", quality=92)
    adapter_error = BadImageError("empty_body", "no body")
    records = detector.run([photo, b"not an image", adapter_error, photo])
    assert [r.error is None for r in records] == [True, False, False, True]
    assert records[1].error.reason == "not_an_image" and records[2].error is adapter_error
    assert records[2].preprocess_seconds is None and records[0].preprocess_seconds > 0
    assert records[0].body == records[3].body, "the same image gets the same answer within a batch"
    assert set(records[0].body) == {"label", "confidence", "probs", "corruption_type"}


def test_views_made_on_several_threads_give_the_same_records(detector):
    """A worker with several threads makes a batch's views that many at a time: same answers, same order."""
    photos = [encode(gradient(size, size * 3 // 4), "JPEG", quality=92) for size in (640, 2400, 320)]
    batch = [photos[0], b"not an image", photos[1], encode(gradient(300, 200), "PNG"), photos[2], photos[1]]
    threaded = CorruptionDetector(SHIPPED_WEIGHTS, corruption_type=True, view_threads=3)
    serial = CorruptionDetector(SHIPPED_WEIGHTS, corruption_type=True, view_threads=1)
    assert threaded.view_pool is not None and serial.view_pool is None
    made, expected = threaded.run(batch), serial.run(batch)
    assert [r.body for r in made] == [r.body for r in expected]
    assert [r.error and r.error.reason for r in made] == [None, "not_an_image", None, None, None, None]


def test_crops_can_be_switched_off(detector):
    plain = CorruptionDetector(SHIPPED_WEIGHTS, crops=False)
    assert len(plain.prepare(encode(gradient(1024, 768), "PNG"))[0].crops) == 0
    assert len(detector.prepare(encode(gradient(1024, 768), "PNG"))[0].crops) > 0


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (1920, 1080), (32, 32)])
def test_explanations_have_the_images_aspect_ratio(detector, size):
    (record,) = detector.run([encode(gradient(*size), "PNG")], explain=[True])
    explanation = record.body["explanation"]
    rows, columns = len(explanation["heatmap"]), len(explanation["heatmap"][0])
    assert max(rows, columns) <= HEATMAP_CELLS
    assert abs(columns / rows - min(size[0] / size[1], 2.5)) < 0.15
    assert explanation["method"] in ("grad-cam", "crop-evidence")


def test_each_request_is_held_to_the_work_budget_and_the_others_are_answered(detector):
    """Requests 1-3 exceed one limit each; their images are refused before decoding, requests 0 and 4 answered."""
    small = encode(gradient(64, 48), "PNG")
    huge = encode(Image.new("RGB", (7000, 7000)), "JPEG")  # 49 MP: three of them are over the pixel budget
    payloads = [small, *[small] * (MAX_IMAGES + 1), *[small] * (MAX_EXPLANATIONS + 1), huge, huge, huge, small]
    requests = [0, *[1] * (MAX_IMAGES + 1), *[2] * (MAX_EXPLANATIONS + 1), 3, 3, 3, 4]
    explain = [request == 2 for request in requests]
    records = detector.run(payloads, explain, requests)
    reasons: dict[int, set] = {}
    for record, request in zip(records, requests, strict=True):
        reasons.setdefault(request, set()).add(record.error.reason if record.error else None)
    assert reasons == {0: {None}, 1: {"too_many_images"}, 2: {"too_many_explanations"}, 3: {"too_much_work"}, 4: {None}}
    assert all(r.preprocess_seconds < 1 for r in records), "nothing over the budget was decoded"


def test_the_budget_admits_a_request_at_every_limit(detector):
    small = encode(gradient(64, 48), "PNG")
    assert refusal(Work(MAX_IMAGES, MAX_PIXELS, MAX_EXPLANATIONS)) is None
    records = detector.run([small] * MAX_EXPLANATIONS, [True] * MAX_EXPLANATIONS, [0] * MAX_EXPLANATIONS)
    assert all(record.error is None for record in records)


# Runs in a fresh interpreter: the peak RSS growth (bytes) of one detector call over 16 large images, each a request,
# on as many torch (and view) threads as argv[1] says.
ONE_CALL = """
import re, sys, torch
from pathlib import Path
from bench.limits import MAKERS
from detector.inference import CorruptionDetector
from detector.paths import SHIPPED_WEIGHTS
def kib(field): return int(re.search(field + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text())[1])
torch.set_num_threads(int(sys.argv[1]))  # and as many view threads
detector = CorruptionDetector(SHIPPED_WEIGHTS)
image = MAKERS["JPEG, EXIF-rotated"](2496, 2496, False)
detector.run([image], [False], [0])  # warm: the model's own buffers
Path("/proc/self/clear_refs").write_text("5")
before = kib("VmRSS")
records = detector.run([image] * 16)  # 16 requests: one of 16 such images is over the pixel budget
assert all(record.error is None for record in records)
print((kib("VmHWM") - before) * 1024)
"""


def fresh_interpreter_count(script: str, *argv: str) -> int:
    """The number a measuring script prints last, run in a fresh interpreter (its memory is the script's alone)."""
    result = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, cwd=ROOT, check=True)
    return int(result.stdout.split()[-1])


@pytest.mark.parametrize("threads", [1, 2])
def test_a_call_holds_one_decoded_image_per_thread_at_a_time(threads):
    """A call's images are opened together (for the budget) but decoded one at a time on each of the worker's
    threads, each freed before that thread's next."""
    image = MAKERS["JPEG, EXIF-rotated"](2496, 2496, False)
    one = decode_bytes(open_image(image))
    grown = fresh_interpreter_count(ONE_CALL, str(threads))
    bound = (threads + 2) * one + 64 * 2**20
    assert grown < bound, f"{grown / 2**20:.0f} MiB for 16 images of {one / 2**20:.0f} MiB each on {threads} threads"


# Runs in a fresh interpreter: the page faults of one warm call over 8 photos, with the detector's allocator
# settings or ("defaults" in argv) without them.
WARM_CALL_FAULTS = """
import resource, sys, torch
from bench.limits import MAKERS
import detector.inference as inference
from detector.paths import SHIPPED_WEIGHTS
if "defaults" in sys.argv:
    inference.reuse_freed_memory = lambda: False
torch.set_num_threads(1)
detector = inference.CorruptionDetector(SHIPPED_WEIGHTS)
images = [MAKERS["JPEG, EXIF-rotated"](1024, 768, False)] * 8
detector.run(images, [False] * 8, [0] * 8)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
detector.run(images, [False] * 8, [0] * 8)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def median_count(script: str, *argv: str, runs: int = 3) -> int:
    """The median of `runs` fresh interpreters' counts: one interpreter's page faults move with the machine's memory
    state (here 1,100-3,400 with the allocator settings and 6,600-30,000 without over single runs)."""
    return statistics.median_low(fresh_interpreter_count(script, *argv) for _ in range(runs))


def test_a_warm_call_reuses_the_memory_of_the_one_before():
    """The forward pass's buffers come back from the heap, not as fresh pages (detector.allocator): measured here
    about 1,100-3,400 page faults a warm call of 8 photos with the settings and 24,000-30,000 (once 6,600) with
    glibc's defaults."""
    assert reuse_freed_memory(), "glibc takes the thresholds"
    tuned, defaults = median_count(WARM_CALL_FAULTS), median_count(WARM_CALL_FAULTS, "defaults")
    assert tuned * 4 < defaults, f"{tuned} page faults with the allocator settings, {defaults} without (medians of 3)"
