"""client/parts.py: a batch's part is whole or absent, and what the parts hold is read back once per file, in the
order of the files."""

import pyarrow.parquet as pq

from client.parts import Parts, part_rows
from client.sources import Source

A, B, C = Source("a.png", 10, 1.5), Source("b.png", 20, None), Source("c.png", 30, 2.5)


def record(source: Source, label: str) -> dict:
    return {"file": source.path, "label": label}


def test_parts_skip_what_is_done_and_give_records_in_file_order(tmp_path):
    parts = Parts(tmp_path / "out.parts")
    parts.write(part_rows([C, A], [record(C, "clean"), record(A, "corrupted")]))
    assert parts.done() == {A.key, C.key}
    assert list(parts.records([A, B, C])) == [record(A, "corrupted"), None, record(C, "clean")]
    changed = Source("a.png", 11, 1.5)
    assert changed.key not in parts.done(), "a file rewritten since is scored again"


def test_a_part_a_killed_run_was_writing_is_never_read_and_is_cleared(tmp_path):
    folder = tmp_path / "out.parts"
    Parts(folder).write(part_rows([A], [record(A, "clean")]))
    pq.write_table(part_rows([B], [record(B, "clean")]), folder / ".unfinished.tmp")
    parts = Parts(folder)
    assert parts.done() == {A.key}
    assert not list(folder.glob(".*.tmp"))
    assert Parts(tmp_path / "new.parts").done() == set()
