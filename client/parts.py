"""Resumable results: each finished batch is one Parquet part file in a folder, and a rerun skips what they hold.

A part is written to a hidden temporary name and renamed into place (atomic on one filesystem), so a part is
either whole or absent: a run killed at any moment loses only the batches it had not yet written, and a rerun
scores exactly those. A part row is a file's key (path, size, modification time: client/sources.py) and its
record as JSON (client/results.py); a file changed since it was scored has another key and is scored again.
"""

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from client.sources import Source

SCHEMA = pa.schema([("file", pa.string()), ("size", pa.int64()), ("mtime", pa.float64()), ("record", pa.string())])
KEY = ("file", "size", "mtime")


def part_rows(sources: list[Source], records: list[dict]) -> pa.Table:
    """A batch's part: each source's key beside its record."""
    return pa.Table.from_pylist(
        [
            {"file": source.path, "size": source.size, "mtime": source.mtime, "record": json.dumps(record)}
            for source, record in zip(sources, records, strict=True)
        ],
        schema=SCHEMA,
    )


class Parts:
    """The part files of one output (`folder`, created if need be)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for leftover in folder.glob(".*.tmp"):  # a part a killed run was writing: never renamed, never read
            leftover.unlink()

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet"))

    def write(self, table: pa.Table) -> Path:
        """Write one batch's part whole, or not at all."""
        name = uuid.uuid4().hex
        temporary, final = self.folder / f".{name}.tmp", self.folder / f"part-{name}.parquet"
        pq.write_table(table.cast(SCHEMA), temporary)
        temporary.replace(final)
        return final

    def table(self, columns: tuple[str, ...] = (*KEY, "record")) -> pa.Table:
        tables = [pq.read_table(path, columns=list(columns), schema=SCHEMA) for path in self.files()]
        return pa.concat_tables(tables) if tables else SCHEMA.empty_table().select(list(columns))

    def done(self) -> set[tuple]:
        """The keys of every file scored so far."""
        return set(zip(*(self.table(KEY).column(name).to_pylist() for name in KEY), strict=True))

    def records(self, sources: list[Source]) -> Iterator[dict | None]:
        """Each source's record, in the sources' order (None for one not scored yet); each once, however many
        parts hold it."""
        table = self.table()
        keys = zip(*(table.column(name).to_pylist() for name in KEY), strict=True)
        where = {key: index for index, key in enumerate(keys)}
        texts = table.column("record").to_pylist()
        for source in sources:
            index = where.get(source.key)
            yield None if index is None else json.loads(texts[index])
