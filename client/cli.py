"""corruption-detect: score image files, folders and globs; write CSV, JSON or JSON Lines; exit codes for CI.

    corruption-detect photos/ -o scores.csv                 # against the server at --server
    corruption-detect --local photos/ -o scores.csv         # in-process, no server, the shipped weights
    corruption-detect 'incoming/**/*.jpg' --fail-on-corrupted --format jsonl

Every file gets one row, in the order found (folders are searched recursively, sorted); a file the
service refuses gets its error in its row and never ends the run. A summary goes to stderr.
"""

import argparse
import csv
import glob
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from client.api import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    Client,
    ClientError,
    LocalClient,
    Prediction,
    ServerUnreachable,
    server_url,
)
from detector.paths import IMAGE_SUFFIXES, SHIPPED_WEIGHTS

# Exit codes (documented in --help and the README).
OK, CORRUPTED_FOUND, USAGE, NOT_SCORED, UNREACHABLE = 0, 1, 2, 3, 4
COLUMNS = ("file", "label", "confidence", "p_clean", "p_corrupted", "error")
# Output formats by --output's suffix (anything else: CSV).
FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
SERVER_ENV = "CORRUPTION_DETECT_SERVER"

EPILOG = """exit codes:
  0  every file scored (and, with --fail-on-corrupted, none corrupted)
  1  --fail-on-corrupted and at least one file is corrupted
  2  bad arguments: a path that does not exist, or no image found
  3  some files were not scored (refused by the service, unreadable, timeouts, server errors)
  4  the server cannot be reached (start it with `make serve`, or use --local)
"""


def server_argument(value: str) -> str:
    """--server's value as a URL (http:// when none is given), or argparse's usage error (exit 2)."""
    try:
        return server_url(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="corruption-detect",
        description="Score images as clean or corrupted with the corruption detector.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", help="image files, folders (searched recursively) or quoted globs")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--server", type=server_argument, default=os.environ.get(SERVER_ENV, DEFAULT_URL),
                       help=f"inference API of a running server, http://HOST:PORT or HOST:PORT "
                            f"(default ${SERVER_ENV} or %(default)s)")  # fmt: skip
    where.add_argument("--local", action="store_true", help="score in this process: no server needed")
    parser.add_argument(
        "--weights", type=Path, default=SHIPPED_WEIGHTS, help="checkpoint for --local (default: shipped)"
    )
    parser.add_argument(
        "--version", dest="model_version", help="model version to ask the server for (default: its default)"
    )
    parser.add_argument("-o", "--output", type=Path, help="write results here (default: stdout)")
    parser.add_argument("--format", choices=("csv", "json", "jsonl"),
                        help="csv, json (one array) or jsonl (JSON Lines); default: from --output's suffix "
                             "(.json, .jsonl), else csv")  # fmt: skip
    parser.add_argument("-c", "--concurrency", type=int, default=4, help="requests in flight (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per request")
    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES, help="retries of a 503 (overloaded) answer")
    parser.add_argument("--fail-on-corrupted", action="store_true", help="exit 1 if any image is corrupted")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args


def expand(path: str) -> list[Path]:
    """The files one argument names: itself, a folder's images (recursive, sorted), or a glob's matches."""
    candidate = Path(path)
    if candidate.is_dir():
        return sorted(
            file
            for file in candidate.rglob("*")
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES and not _hidden(file.relative_to(candidate))
        )
    if candidate.exists() or not glob.has_magic(path):
        return [candidate]
    return sorted(Path(match) for match in glob.glob(path, recursive=True) if Path(match).is_file())


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def missing(paths: list[str]) -> list[str]:
    """The arguments naming a file or folder that does not exist (a glob may match nothing: it is no error)."""
    return [path for path in paths if not glob.has_magic(path) and not Path(path).exists()]


def find_files(paths: list[str]) -> list[Path]:
    """Every file to score, once each, in argument order."""
    seen: dict[Path, None] = {}
    for path in paths:
        matches = expand(path)
        if not matches:
            print(f"corruption-detect: {path}: no images found", file=sys.stderr)
        seen.update(dict.fromkeys(matches))
    return list(seen)


def row(file: Path, result: Prediction | ClientError) -> dict:
    """One output record: the prediction, or the error in words (type: message)."""
    if isinstance(result, ClientError):
        return {"file": str(file), "label": None, "confidence": None, "probs": None,
                "error": {"type": result.kind, "message": result.message, "status": result.status}}  # fmt: skip
    return {"file": str(file), "label": result.label, "confidence": result.confidence, "probs": result.probs,
            "error": None}  # fmt: skip


class Writer:
    """CSV (one flat row per file), JSON (one array of objects) or JSON Lines (one object per line), written and
    flushed file by file; `close` ends the JSON array."""

    def __init__(self, stream: TextIO, fmt: str) -> None:
        self.stream = stream
        self.fmt = fmt
        self.written = 0
        if fmt == "csv":
            self.csv = csv.DictWriter(stream, fieldnames=COLUMNS, lineterminator="\n")
            self.csv.writeheader()
        elif fmt == "json":
            self.stream.write("[")

    def write(self, record: dict) -> None:
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(record) + "\n")
        elif self.fmt == "json":
            self.stream.write(("," if self.written else "") + "\n" + json.dumps(record))
        else:
            probs, error = record["probs"] or {}, record["error"]
            self.csv.writerow({"file": record["file"], "label": record["label"] or "",
                               "confidence": _number(record["confidence"]), "p_clean": _number(probs.get("clean")),
                               "p_corrupted": _number(probs.get("corrupted")),
                               "error": f"{error['type']}: {error['message']}" if error else ""})  # fmt: skip
        self.written += 1
        self.stream.flush()

    def close(self) -> None:
        if self.fmt == "json":
            self.stream.write("\n]\n" if self.written else "]\n")
            self.stream.flush()


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def output_format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    return FORMATS.get(args.output.suffix.lower(), "csv") if args.output else "csv"


def make_client(args: argparse.Namespace) -> Client | LocalClient:
    if args.local:
        return LocalClient(args.weights)
    client = Client(args.server, version=args.model_version, timeout=args.timeout, retries=args.retries)
    client.ping()
    return client


def score(client, files: list[Path], concurrency: int, progress: bool) -> Iterator[tuple[Path, object]]:
    """(file, prediction or error) in file order, with a progress bar on stderr."""
    results = client.predict_many(files, concurrency=concurrency, return_errors=True)
    bar = tqdm(total=len(files), unit="file", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    with bar:
        for file, result in zip(files, results, strict=True):
            bar.update()
            yield file, result


def summary(counts: Counter, seconds: float, destination: str) -> str:
    total = sum(counts.values())
    files = "1 file" if total == 1 else f"{total} files"
    return (f"corruption-detect: {files} in {seconds:.1f} s ({total / max(seconds, 1e-9):.1f}/s): "
            f"{counts['clean']} clean, {counts['corrupted']} corrupted, {counts['error']} not scored; "
            f"results in {destination}")  # fmt: skip


def exit_code(counts: Counter, fail_on_corrupted: bool) -> int:
    if fail_on_corrupted and counts["corrupted"]:
        return CORRUPTED_FOUND
    return NOT_SCORED if counts["error"] else OK


def run(args: argparse.Namespace) -> int:
    absent = missing(args.paths)
    for path in absent:
        print(f"corruption-detect: {path}: no such file or folder", file=sys.stderr)
    if absent:
        return USAGE
    files = find_files(args.paths)
    if not files:
        print("corruption-detect: no images found", file=sys.stderr)
        return USAGE
    try:
        client = make_client(args)
    except ServerUnreachable as error:
        print(f"corruption-detect: {error.message}; start it with `make serve`, or use --local", file=sys.stderr)
        return UNREACHABLE
    except FileNotFoundError as error:
        print(f"corruption-detect: {error}", file=sys.stderr)
        return USAGE
    counts: Counter = Counter()
    start = time.perf_counter()
    stream = args.output.open("w", newline="") if args.output else sys.stdout
    try:
        writer = Writer(stream, output_format(args))
        for file, result in score(client, files, args.concurrency, not args.no_progress):
            record = row(file, result)
            counts[record["label"] or "error"] += 1
            writer.write(record)
        writer.close()
    finally:
        if args.output:
            stream.close()
    print(summary(counts, time.perf_counter() - start, str(args.output or "stdout")), file=sys.stderr)
    return exit_code(counts, args.fail_on_corrupted)


def main(argv: list[str] | None = None) -> int:
    """The console script's entry point ([project.scripts] corruption-detect)."""
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
