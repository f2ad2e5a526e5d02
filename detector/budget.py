"""The work one request may ask for, counted from headers before any pixel is decoded.

TorchServe hands a worker a dynamic batch of up to batchSize requests in one call and kills the worker
when the call outlasts responseTimeout, failing every request in it. So every request is held to the
same budget here, and one call's work is at most batchSize budgets by construction, whatever the
requests are (a KServe body may carry many images, a plain one carries one):

- images: MAX_IMAGES per request (each costs a pass of the model over its views: about 80 ms on one core
  for a photo's whole view and crops, so 64 images a request would make a call of 8 such requests ~40 s);
- pixels decoded: MAX_PIXELS per request, summed over its images as their headers declare them: one image
  at the decoder's own limit, or several smaller ones (the container walks of detector.structure bound the
  work before the pixels). Twice that let a call of 8 requests decode 800 MP: 45 s on a shared core here;
- explanations: MAX_EXPLANATIONS images per request (a Grad-CAM pass each, 0.1-0.4 s, and 30-120 KB of
  answer each, so an answer stays far inside TorchServe's max_response_size; 64 made 12 MB and killed the
  worker).

README "Reliability" states the budget beside the memory budget; `python -m bench.budget` measures the
most expensive call that fits it on one core (the figure must stay well under responseTimeout).
"""

from collections.abc import Sequence
from dataclasses import dataclass

from detector.decoding import MAX_PIXELS as DECODER_MAX_PIXELS
from detector.decoding import BadImageError

MAX_IMAGES = 16
MAX_PIXELS = DECODER_MAX_PIXELS
MAX_EXPLANATIONS = 8


@dataclass(frozen=True)
class Work:
    """What one request asks the worker to do."""

    images: int
    pixels: int
    explanations: int


def refusal(work: Work) -> BadImageError | None:
    """Why a request over the budget is refused (a typed 400 before decoding), or None when it fits."""
    if work.images > MAX_IMAGES:
        return BadImageError(
            "too_many_images", f"the request holds {work.images} images; at most {MAX_IMAGES} per request"
        )
    if work.explanations > MAX_EXPLANATIONS:
        return BadImageError(
            "too_many_explanations",
            f"the request asks to explain {work.explanations} images; at most {MAX_EXPLANATIONS} per request "
            "(ask for predictions of the rest)",
        )
    if work.pixels > MAX_PIXELS:
        return BadImageError(
            "too_much_work",
            f"the request's images declare {work.pixels / 1e6:.0f} MP together; at most {MAX_PIXELS / 1e6:.0f} MP "
            "per request: send fewer images per request",
        )
    return None


def over_budget(
    sizes: Sequence[tuple[int, int] | None], explain: Sequence[bool], requests: Sequence[int]
) -> dict[int, BadImageError]:
    """The requests over the budget, with why: image i declares `sizes[i]` (None: refused already), asks for an
    explanation if `explain[i]`, and came in request `requests[i]`."""
    work: dict[int, Work] = {}
    for size, wanted, request in zip(sizes, explain, requests, strict=True):
        pixels = size[0] * size[1] if size else 0
        so_far = work.get(request, Work(0, 0, 0))
        work[request] = Work(so_far.images + 1, so_far.pixels + pixels, so_far.explanations + int(wanted))
    refused = {request: refusal(asked) for request, asked in work.items()}
    return {request: error for request, error in refused.items() if error is not None}
