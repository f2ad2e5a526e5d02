"""The Python client of the corruption detector: one image or many, against a server or in-process.

    from client import Client
    print(Client("http://127.0.0.1:8080").predict("photo.jpg").label)

`Client` talks to a running TorchServe over HTTP (retrying 503 with backoff); `LocalClient` runs
the same inference core the handler runs (`detector.inference.CorruptionDetector`) in this process,
with the shipped weights by default. Both answer `Prediction`s and raise (or, from `predict_many`
with `return_errors=True`, return) typed `ClientError`s; each names its input (`source`: the file's path, or
`images[i]` for the i-th of many images given as bytes or PIL images).
"""

import io
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests
from PIL import Image

from client.sources import read_bytes
from detector.paths import SHIPPED_WEIGHTS

DEFAULT_URL = "http://127.0.0.1:8080"
MODEL = "corruption"
# Seconds to wait for one answer: a 50 MP photo queued behind a full batch still fits.
DEFAULT_TIMEOUT = 60.0
# 503 (queue full, no worker yet) is retried this many times, waiting BACKOFF * 2**attempt seconds.
DEFAULT_RETRIES = 4
BACKOFF = 0.5

ImageInput = str | os.PathLike | bytes | bytearray | Image.Image


@dataclass(frozen=True)
class Prediction:
    """One answer: the API's {"label", "confidence", "probs"} (plus any extra fields in `body`), and the input it
    answers (`source`: a path, `images[i]` among many, or None for one image given as bytes or a PIL image)."""

    label: str
    confidence: float
    probs: dict[str, float]
    body: dict = field(repr=False, compare=False)
    source: str | None = field(default=None, compare=False)

    @property
    def corrupted(self) -> bool:
        return self.label == "corrupted"

    @classmethod
    def from_body(cls, body: dict, source: str | None = None) -> "Prediction":
        return cls(body["label"], body["confidence"], dict(body["probs"]), body, source)


class ClientError(Exception):
    """An image that got no answer; `kind` is a stable machine-readable code (the API's error type), `source` the
    input it concerns (as Prediction.source), which the error's text starts with."""

    def __init__(self, kind: str, message: str, status: int | None = None, source: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.source = source

    def __str__(self) -> str:
        return f"{self.source}: {self.message}" if self.source else self.message


class RefusedError(ClientError):
    """The service refused the image (4xx): not an image, truncated, too many pixels, too large..."""


class OverloadedError(ClientError):
    """Still 503 after every retry: the server's queue is full or it has no worker."""


class ServerError(ClientError):
    """The server failed (5xx other than 503), or answered something that is not a prediction."""


class RequestTimeout(ClientError, TimeoutError):
    """No answer within the timeout."""


class ServerUnreachable(ClientError, ConnectionError):
    """Nothing answers at the server's address."""


def server_url(url: str) -> str:
    """The server's base URL without a trailing slash; http:// when none is given (`127.0.0.1:8080`)."""
    url = url.strip()
    if "://" not in url:
        url = f"http://{url}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not a server URL: give http://HOST:PORT (or HOST:PORT)")
    return url.rstrip("/")


def source_of(image: ImageInput, index: int | None = None) -> str | None:
    """How messages name an input: a file's path, else its place among many (`images[3]`), else nothing."""
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    return None if index is None else f"images[{index}]"


def image_bytes(image: ImageInput) -> bytes:
    """The encoded bytes to send: a file's bytes as they are (a path, or an fsspec URL), bytes as given, a PIL image
    as lossless PNG."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    try:
        return read_bytes(os.fspath(image))
    except OSError as error:
        raise ClientError("unreadable_file", f"cannot read {image}: {error.strerror or error}") from error


def error_from_response(response: requests.Response) -> ClientError:
    """The typed error for a non-200 answer, with the service's own type and message when it sent them."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    message = str(body.get("message") or body.get("error") or response.reason or "no details")
    kind = str(body.get("type") or f"http_{response.status_code}")
    if response.status_code == 503:
        return OverloadedError(kind, message, 503)
    if 400 <= response.status_code < 500:
        return RefusedError(kind, message, response.status_code)
    return ServerError(kind, message, response.status_code)


class _Ordered:
    """predict_many's engine: run `call(item, source)` on every item with bounded concurrency, yield results in
    input order."""

    @staticmethod
    def run(call, items: Iterable, concurrency: int, return_errors: bool) -> Iterator:
        window = max(1, concurrency) * 2  # in flight: enough to keep every slot busy, never the whole folder
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            pending: deque[Future] = deque()
            for index, item in enumerate(items):
                pending.append(pool.submit(call, item, source_of(item, index)))
                if len(pending) >= window:
                    yield _Ordered.result(pending.popleft(), return_errors)
            while pending:
                yield _Ordered.result(pending.popleft(), return_errors)

    @staticmethod
    def result(future: Future, return_errors: bool):
        try:
            return future.result()
        except ClientError as error:
            if return_errors:
                return error
            raise


class Client:
    """HTTP client of a running corruption detector (TorchServe's inference API)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        model: str = MODEL,
        version: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = BACKOFF,
    ) -> None:
        self.url = server_url(url)
        self.endpoint = f"{self.url}/predictions/{model}" + (f"/{version}" if version else "")
        self.explanations = f"{self.url}/explanations/{model}" + (f"/{version}" if version else "")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._local = threading.local()  # one requests.Session per thread: sessions are not thread-safe

    @property
    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def ping(self) -> None:
        """Raise ServerUnreachable unless the server answers /ping (it does before the model has loaded)."""
        try:
            self.session.get(f"{self.url}/ping", timeout=min(self.timeout, 10)).raise_for_status()
        except requests.RequestException as error:
            raise ServerUnreachable("server_unreachable", f"no corruption detector answers at {self.url}") from error

    def predict(self, image: ImageInput) -> Prediction:
        """The prediction for one image (file path, encoded bytes or PIL image); raises a ClientError if none."""
        return self._predict(image, source_of(image))

    def predict_many(
        self, images: Iterable[ImageInput], concurrency: int = 4, return_errors: bool = False
    ) -> Iterator[Prediction | ClientError]:
        """Predictions for many images, `concurrency` requests at a time, lazily and in input order.

        A failed image raises its ClientError (the ones before it were yielded), or with
        `return_errors` takes its place in the output so that one bad file never ends the run.
        """
        return _Ordered.run(self._predict, images, concurrency, return_errors)

    def explain(self, image: ImageInput) -> Prediction:
        """The prediction for one image with where the model sees corruption: body["explanation"] holds the heat
        map and an overlay PNG (base64), as /explanations answers."""
        return self._predict(image, source_of(image), self.explanations)

    def _predict(self, image: ImageInput, source: str | None, endpoint: str | None = None) -> Prediction:
        try:
            return Prediction.from_body(self.post(image_bytes(image), endpoint), source)
        except ClientError as error:
            error.source = source
            raise

    def post(self, data: bytes, endpoint: str | None = None) -> dict:
        """POST one image's bytes (to the predictions endpoint unless told another); retry 503 with exponential
        backoff (or the server's Retry-After)."""
        for attempt in range(self.retries + 1):
            response = self._send(data, endpoint or self.endpoint)
            if response.status_code == 200:
                return self._body(response)
            error = error_from_response(response)
            if not isinstance(error, OverloadedError) or attempt == self.retries:
                raise error
            time.sleep(self._delay(response, attempt))
        raise AssertionError("unreachable")

    def _send(self, data: bytes, endpoint: str) -> requests.Response:
        try:
            headers = {"Content-Type": "application/octet-stream"}
            return self.session.post(endpoint, data=data, headers=headers, timeout=self.timeout)
        except requests.Timeout as error:
            raise RequestTimeout("timeout", f"no answer from {self.url} within {self.timeout:g} s") from error
        except requests.ConnectionError as error:
            raise ServerUnreachable("server_unreachable", f"cannot connect to {self.url}: {error}") from error

    def _delay(self, response: requests.Response, attempt: int) -> float:
        retry_after = response.headers.get("Retry-After", "")
        return float(retry_after) if retry_after.isdigit() else self.backoff * 2**attempt

    @staticmethod
    def _body(response: requests.Response) -> dict:
        try:
            body = response.json()
        except ValueError as error:
            raise ServerError("not_a_prediction", f"the server answered non-JSON: {response.text[:200]!r}") from error
        if not isinstance(body, dict) or not {"label", "confidence", "probs"} <= set(body):
            raise ServerError("not_a_prediction", f"the server answered something else: {str(body)[:200]}")
        return body


class LocalClient:
    """The same interface without a server: the handler's inference core (CorruptionDetector) in this process.

    With `corruption_type`, answers also carry the type probabilities (body["corruption_type"]), as a server
    configured with corruption_type: true; `device` is torch's ("cuda" for a GPU).
    """

    def __init__(
        self,
        weights: str | os.PathLike = SHIPPED_WEIGHTS,
        batch_size: int = 8,
        corruption_type: bool = False,
        device: str = "cpu",
    ) -> None:
        from detector.inference import CorruptionDetector  # torch loads only when scoring locally

        if not Path(weights).is_file():
            raise FileNotFoundError(f"no weights at {weights}: pass the path of a checkpoint (weights/model.pt)")
        self.detector = CorruptionDetector(Path(weights), device=device, corruption_type=corruption_type)
        self.batch_size = batch_size

    def predict(self, image: ImageInput) -> Prediction:
        return self._one(image, explain=False)

    def explain(self, image: ImageInput) -> Prediction:
        """As Client.explain, in this process."""
        return self._one(image, explain=True)

    def _one(self, image: ImageInput, explain: bool) -> Prediction:
        result = self._score([image], [source_of(image)], explain=explain)[0]
        if isinstance(result, ClientError):
            raise result
        return result

    def predict_many(
        self, images: Iterable[ImageInput], concurrency: int = 1, return_errors: bool = False
    ) -> Iterator[Prediction | ClientError]:
        """Predictions in input order, `batch_size` images per forward pass (`concurrency` is unused here:
        torch already spreads one batch over the cores)."""
        batch: list[ImageInput] = []
        for index, image in enumerate(images):
            batch.append(image)
            if len(batch) == self.batch_size:
                yield from self._checked(self._score(batch, start=index + 1 - len(batch)), return_errors)
                batch = []
        if batch:
            yield from self._checked(self._score(batch, start=index + 1 - len(batch)), return_errors)

    @staticmethod
    def _checked(results: list, return_errors: bool) -> Iterator:
        for result in results:
            if isinstance(result, ClientError) and not return_errors:
                raise result
            yield result

    def _score(
        self, images: list[ImageInput], sources: list | None = None, start: int = 0, explain: bool = False
    ) -> list:
        """Predictions (explained with `explain`) or errors for a batch; `sources` name its images (default: as the
        `start`-th of many on)."""
        sources = sources or [source_of(image, start + offset) for offset, image in enumerate(images)]
        payloads: list = []
        for image, source in zip(images, sources, strict=True):
            try:
                payloads.append(image_bytes(image))
            except ClientError as error:
                error.source = source
                payloads.append(error)
        readable = [index for index, payload in enumerate(payloads) if isinstance(payload, bytes)]
        records = self.detector.run([payloads[index] for index in readable], [explain] * len(readable))
        for index, record in zip(readable, records, strict=True):
            payloads[index] = (
                Prediction.from_body(record.body, sources[index])
                if record.error is None
                else RefusedError(record.error.reason, record.error.message, 400, sources[index])
            )
        return payloads
