"""corruption-detect: score image files, folders, globs and list files; write CSV, JSON, JSON Lines or Parquet, and an
HTML audit report; exit codes for CI.

    corruption-detect photos/ -o scores.csv                 # against the server at --server
    corruption-detect --local photos/ -o scores.csv         # in-process, no server, the shipped weights
    corruption-detect 'incoming/**/*.jpg' --fail-on-corrupted --format jsonl
    corruption-detect --engine ray photos/ -o scores.parquet --report report.html   # Ray actors, resumable

Every file gets one row, in the order found (folders are searched recursively, sorted); a file the
service refuses gets its error in its row and never ends the run. A summary goes to stderr. The client
engine (the default) scores from this process, against --server or with --local; --engine ray spreads the
work over Ray actors (client/ray_engine.py) and resumes: a rerun skips the files already scored.
"""

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

from tqdm import tqdm

from client.api import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    Client,
    LocalClient,
    Prediction,
    ServerUnreachable,
    server_url,
)
from client.report import Report
from client.results import COLUMNS, Writer, output_format, record
from client.sources import Source, find_sources, listed, missing
from detector.paths import SHIPPED_WEIGHTS

__all__ = ["COLUMNS", "main"]

# Exit codes (documented in --help and the README).
OK, CORRUPTED_FOUND, USAGE, NOT_SCORED, UNREACHABLE = 0, 1, 2, 3, 4
SERVER_ENV = "CORRUPTION_DETECT_SERVER"
NEEDS_RAY = "needs the [ray] extra: pip install '.[ray]' (in a checkout: pip install -r requirements-ray.txt)"

EPILOG = """engines:
  client  (default) one process: against the server at --server, or in this process with --local
  ray     Ray actors that each load the model once (pip install '.[ray]'): a Ray started on this machine,
          or the cluster at --address ($RAY_ADDRESS); needs --output; each scored batch is kept in
          OUTPUT.parts/, and a rerun skips the files scored there (same path, size and modification time)

exit codes:
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
    parser.add_argument("paths", nargs="*", help="image files, folders (searched recursively) or quoted globs; "
                                                 "local paths or fsspec URLs (s3://bucket/photos/)")  # fmt: skip
    parser.add_argument("--files-from", metavar="LIST", help="also score the paths or URLs listed in LIST, one a line "
                                                             "('-': standard input)")  # fmt: skip
    parser.add_argument("--engine", choices=("client", "ray"), default="client", help="see below (default %(default)s)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--server", type=server_argument,
                       help=f"inference API of a running server, http://HOST:PORT or HOST:PORT "
                            f"(default ${SERVER_ENV} or {DEFAULT_URL})")  # fmt: skip
    where.add_argument("--local", action="store_true", help="score in this process: no server needed")
    parser.add_argument(
        "--weights", type=Path, default=SHIPPED_WEIGHTS, help="checkpoint for --local and Ray (default: shipped)"
    )
    parser.add_argument(
        "--version", dest="model_version", help="model version to ask the server for (default: its default)"
    )
    parser.add_argument("-o", "--output", type=Path, help="write results here (default: stdout)")
    parser.add_argument("--format", choices=("csv", "json", "jsonl", "parquet"),
                        help="csv, json (one array), jsonl (JSON Lines) or parquet; default: from --output's suffix "
                             "(.json, .jsonl, .parquet), else csv")  # fmt: skip
    parser.add_argument("--report", type=Path, help="also write an HTML audit report here (one self-contained file)")
    parser.add_argument("-c", "--concurrency", type=int, default=4, help="requests in flight (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per request")
    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES, help="retries of a 503 (overloaded) answer")
    parser.add_argument("--fail-on-corrupted", action="store_true", help="exit 1 if any image is corrupted")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    ray = parser.add_argument_group("--engine ray")
    ray.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else start Ray here)")
    ray.add_argument("--actors", type=int, help="model replicas (default: as many as the CPUs or GPUs hold)")
    ray.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs (torch threads) per actor (default 1)")
    ray.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per actor: score on CUDA (default 0)")
    ray.add_argument("--batch-size", type=int, default=16, help="files per batch and per part (default 16)")
    args = parser.parse_args(argv)
    if not args.paths and not args.files_from:
        parser.error("give files, folders, globs or --files-from")
    if args.concurrency < 1 or args.batch_size < 1 or (args.actors is not None and args.actors < 1):
        parser.error("--concurrency, --batch-size and --actors must be at least 1")
    if args.engine == "ray" and (args.server or args.local):
        parser.error("--engine ray scores in Ray actors with --weights: --server and --local are the client's")
    if args.engine == "ray" and not args.output:
        parser.error("--engine ray needs --output: its scored batches are kept beside it, to resume")
    if args.engine == "client" and not args.local and not args.server:
        args.server = server_argument(os.environ.get(SERVER_ENV, DEFAULT_URL))
    return args


def make_client(args: argparse.Namespace) -> Client | LocalClient:
    if args.local:
        return LocalClient(args.weights, corruption_type=True)
    client = Client(args.server, version=args.model_version, timeout=args.timeout, retries=args.retries)
    client.ping()
    return client


def progress_bar(total: int, progress: bool, done: int = 0) -> tqdm:
    return tqdm(total=total, initial=done, unit="file", disable=not progress, file=sys.stderr, dynamic_ncols=True)


def score(client, sources: list[Source], concurrency: int, progress: bool) -> Iterator[dict]:
    """Records in file order, with a progress bar on stderr."""
    results = client.predict_many([source.path for source in sources], concurrency=concurrency, return_errors=True)
    with progress_bar(len(sources), progress) as bar:
        for source, result in zip(sources, results, strict=True):
            bar.update()
            yield record(source.path, result)


def parts_folder(output: Path) -> Path:
    """Where --engine ray keeps each scored batch (client/parts.py), beside its output."""
    return output.with_name(output.name + ".parts")


def score_with_ray(args: argparse.Namespace, sources: list[Source]) -> Iterator[dict]:
    """Score the files the output's parts do not hold yet on Ray, keeping each batch as it comes; then return
    every file's record, in file order (the output is written from them: nothing of it exists before)."""
    from client import ray_engine
    from client.parts import Parts

    parts = Parts(parts_folder(args.output))
    done = parts.done()
    todo = [source for source in sources if source.key not in done]
    if len(todo) < len(sources):
        print(f"corruption-detect: {len(sources) - len(todo)} of {len(sources)} files already scored in "
              f"{parts.folder}; scoring the other {len(todo)}", file=sys.stderr)  # fmt: skip
    settings = ray_engine.RaySettings(args.weights, args.address, args.actors, args.cpus_per_actor,
                                      args.gpus_per_actor, args.batch_size)  # fmt: skip
    with progress_bar(len(sources), not args.no_progress, len(sources) - len(todo)) as bar:
        for table in ray_engine.score(todo, settings):
            parts.write(table)
            bar.update(table.num_rows)
    return parts.records(sources)


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


def explainer(args: argparse.Namespace, client: Client | LocalClient | None) -> Callable[[str], Prediction]:
    """The report's heat maps: from the client that scored, or (Ray) from the model loaded here on first use."""
    if client is not None:
        return client.explain
    local = cache(lambda: LocalClient(args.weights))
    return lambda file: local().explain(file)


def run(args: argparse.Namespace) -> int:
    paths = args.paths + (listed(args.files_from) if args.files_from else [])
    absent = missing(paths)
    for path in absent:
        print(f"corruption-detect: {path}: no such file or folder", file=sys.stderr)
    if absent:
        return USAGE
    sources = find_sources(paths)
    if not sources:
        print("corruption-detect: no images found", file=sys.stderr)
        return USAGE
    client = None
    try:
        if args.engine == "client":
            client = make_client(args)
        start = time.perf_counter()
        records = (
            score_with_ray(args, sources)
            if client is None
            else score(client, sources, args.concurrency, not args.no_progress)
        )
        counts: Counter = Counter()
        report = Report() if args.report else None
        with Writer(args.output, output_format(args.output, args.format)) as writer:
            for result in records:
                counts[result["label"] or "error"] += 1
                writer.write(result)
                if report:
                    report.add(result)
    except ServerUnreachable as error:
        print(f"corruption-detect: {error.message}; start it with `make serve`, or use --local", file=sys.stderr)
        return UNREACHABLE
    except FileNotFoundError as error:
        print(f"corruption-detect: {error}", file=sys.stderr)
        return USAGE
    except ModuleNotFoundError as error:
        print(f"corruption-detect: {error.name} is missing: --engine ray and Parquet {NEEDS_RAY}", file=sys.stderr)
        return USAGE
    seconds = time.perf_counter() - start
    if report:
        report.write(args.report, f"Corruption audit of {len(sources)} files", explainer(args, client))
    print(summary(counts, seconds, str(args.output or "stdout")), file=sys.stderr)
    return exit_code(counts, args.fail_on_corrupted)


def main(argv: list[str] | None = None) -> int:
    """The console script's entry point ([project.scripts] corruption-detect)."""
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
