"""`corruption-detect --engine ray`: score many files on Ray Data, on this machine or a Ray cluster.

The files (client/sources.py) go to a pool of Ray actors, each of which loads the model once (LocalClient: the
inference core the server runs) and scores batches of files it reads itself: a file that cannot be read
gets its error in its row instead of failing the run, and images never pass through the driver. Each scored
batch comes back to the driver as a part (client/parts.py), written as it arrives, so that a rerun skips what
is done. `pip install .[ray]` brings Ray; serving never needs it.
"""

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import ray
import ray.data

from client.api import LocalClient
from client.parts import part_rows
from client.results import record
from client.sources import Source


@dataclass(frozen=True)
class RaySettings:
    """Where and how wide to run: `address` None starts a local Ray (joins $RAY_ADDRESS's cluster if set);
    `actors` None is as many as the cluster's CPUs (or GPUs) hold."""

    weights: Path
    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    batch_size: int = 16


class Scorer:
    """A Ray actor: loads the model once, then scores batches of (file, size, mtime) rows into part rows."""

    def __init__(self, weights: Path, threads: int, device: str, batch_size: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.client = LocalClient(weights, batch_size=batch_size, corruption_type=True, device=device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        sources = [Source(**row) for row in batch.select(["path", "size", "mtime"]).to_pylist()]
        results = self.client.predict_many([source.path for source in sources], return_errors=True)
        return part_rows(
            sources, [record(source.path, result) for source, result in zip(sources, results, strict=True)]
        )


def start(address: str | None) -> None:
    """Join the cluster at `address` (or $RAY_ADDRESS), else start Ray on this machine; quietly either way."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the CLI draws its own, over every file
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def pool_size(settings: RaySettings) -> int:
    """--actors, else as many actors as the cluster's CPUs (GPUs with --gpus-per-actor) hold, at least one."""
    if settings.actors:
        return settings.actors
    resources = ray.cluster_resources()
    if settings.gpus_per_actor:
        return max(1, int(resources.get("GPU", 0) // settings.gpus_per_actor))
    return max(1, int(resources.get("CPU", 1) // settings.cpus_per_actor))


def score(sources: list[Source], settings: RaySettings) -> Iterator[pa.Table]:
    """Part tables (client/parts.py) of the scored sources, in the order batches finish."""
    if not sources:
        return
    start(settings.address)
    try:
        rows = [{"path": source.path, "size": source.size, "mtime": source.mtime} for source in sources]
        # One block per batch, and each block a batch of its own (batch_size=None): an actor's answer to one
        # batch comes back as one block, written as one part, as soon as it is done.
        blocks = max(1, -(-len(rows) // settings.batch_size))
        dataset = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            Scorer,
            fn_constructor_kwargs={
                "weights": settings.weights,
                "threads": max(1, int(settings.cpus_per_actor)),
                "device": "cuda" if settings.gpus_per_actor else "cpu",
                "batch_size": settings.batch_size,
            },
            batch_size=None,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=pool_size(settings)),
            num_cpus=settings.cpus_per_actor,
            num_gpus=settings.gpus_per_actor,
        )
        yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")
    finally:
        ray.shutdown()
