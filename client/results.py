"""A run's results, one record per file, and the files they are written to: CSV, JSON, JSON Lines or Parquet.

A record is {"file", "label", "confidence", "probs", "corruption_type", "error"}: the prediction (with the
likeliest kind of damage when the answer carries types), or the error in words. Every engine makes its records
with `record` and writes them with `Writer`, so the columns are the same whichever engine scored.
"""

import csv
import json
import sys
from pathlib import Path
from types import TracebackType

from client.api import ClientError, Prediction

COLUMNS = ("file", "label", "confidence", "p_clean", "p_corrupted", "corruption_type", "error")
# Output formats by --output's suffix (anything else: CSV).
FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
# Parquet rows are written in row groups of this many: memory stays bounded, a reader can skip groups.
ROW_GROUP = 10_000
# The type head's name for "no damage" (detector.corruptions.CLEAN; imported from there it would load torch).
NO_DAMAGE = "clean"


def likeliest_damage(body: dict) -> str | None:
    """The kind of damage most likely in an image labelled corrupted; None for a clean one, or when the answer has
    no types (a server whose model-config.yaml leaves corruption_type off)."""
    types = body.get("corruption_type")
    if body["label"] != "corrupted" or not types:
        return None
    damage = {name: probability for name, probability in types.items() if name != NO_DAMAGE}
    return max(damage, key=damage.get)


def record(file: str, result: Prediction | ClientError) -> dict:
    """One output record: the prediction, or the error in words (type, message, HTTP status if any)."""
    if isinstance(result, ClientError):
        return {"file": file, "label": None, "confidence": None, "probs": None, "corruption_type": None,
                "error": {"type": result.kind, "message": result.message, "status": result.status}}  # fmt: skip
    return {"file": file, "label": result.label, "confidence": result.confidence, "probs": result.probs,
            "corruption_type": likeliest_damage(result.body), "error": None}  # fmt: skip


def flat(record: dict) -> dict:
    """The record as one row of COLUMNS (None where empty): CSV's and Parquet's shape."""
    probs, error = record["probs"] or {}, record["error"]
    return {"file": record["file"], "label": record["label"], "confidence": record["confidence"],
            "p_clean": probs.get("clean"), "p_corrupted": probs.get("corrupted"),
            "corruption_type": record["corruption_type"],
            "error": f"{error['type']}: {error['message']}" if error else None}  # fmt: skip


def output_format(output: Path | None, fmt: str | None) -> str:
    """--format, else by --output's suffix, else CSV."""
    if fmt:
        return fmt
    return FORMATS.get(output.suffix.lower(), "csv") if output else "csv"


def parquet_schema():
    """COLUMNS as Parquet types. pyarrow comes with the [ray] extra: ModuleNotFoundError without it."""
    import pyarrow as pa

    text, number = pa.string(), pa.float64()
    types = {"file": text, "label": text, "corruption_type": text, "error": text}
    return pa.schema([(name, types.get(name, number)) for name in COLUMNS])


class Writer:
    """Records to `path` (or stdout): CSV (one flat row per file), JSON (one array of objects), JSON Lines (one
    object per line), each flushed file by file; or Parquet (flat rows, typed, in row groups). Use it in a `with`:
    leaving it ends the JSON array or the Parquet file."""

    def __init__(self, path: Path | None, fmt: str) -> None:
        self.path = path
        self.fmt = fmt
        self.written = 0
        if fmt == "parquet":
            if path is None:
                raise ValueError("Parquet needs --output: it cannot go to a terminal")
            import pyarrow.parquet as pq

            self.parquet = pq.ParquetWriter(path, parquet_schema())
            self.pending: list[dict] = []
            return
        self.stream = path.open("w", newline="") if path else sys.stdout
        if fmt == "csv":
            self.csv = csv.DictWriter(self.stream, fieldnames=COLUMNS, lineterminator="\n")
            self.csv.writeheader()
        elif fmt == "json":
            self.stream.write("[")

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()

    def write(self, record: dict) -> None:
        if self.fmt == "parquet":
            self.pending.append(flat(record))
            if len(self.pending) == ROW_GROUP:
                self._write_row_group()
        elif self.fmt == "jsonl":
            self.stream.write(json.dumps(record) + "\n")
        elif self.fmt == "json":
            self.stream.write(("," if self.written else "") + "\n" + json.dumps(record))
        else:
            self.csv.writerow({name: _text(value) for name, value in flat(record).items()})
        self.written += 1
        if self.fmt != "parquet":
            self.stream.flush()

    def _write_row_group(self) -> None:
        import pyarrow as pa

        self.parquet.write_table(pa.Table.from_pylist(self.pending, schema=self.parquet.schema))
        self.pending = []

    def close(self) -> None:
        if self.fmt == "parquet":
            if self.pending:
                self._write_row_group()
            self.parquet.close()
            return
        if self.fmt == "json":
            self.stream.write("\n]\n" if self.written else "]\n")
            self.stream.flush()
        if self.path:
            self.stream.close()


def _text(value: str | float | None) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value
