"""The `points` rows a re-sync replaces: deleted where they were when the run started (a few row groups), not by a
scan of the whole table on every completion, and still all deleted when a checkpoint moved them meanwhile."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from qsync.ledger.batches import BatchWork, Completion, batches_replacing_points, point_key, record_points
from qsync.ledger.hosts import stop_host
from qsync.ledger.ledger import Ledger
from qsync.spec.target import point_id

TARGET = "local:x|c|"
ROWS = 300_000  # a few of DuckDB's row groups (122,880 rows each)


class Recording:
    """A DuckDB connection that remembers the statements it ran."""

    def __init__(self, con: Any) -> None:
        self.con, self.statements = con, list[str]()

    def execute(self, sql: str, *args: Any) -> Any:
        self.statements.append(" ".join(sql.split()))
        return self.con.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.con, name)


def _file(tmp_path: Path, changed: range) -> duckdb.DuckDBPyConnection:
    """A checkpoint file whose target holds ROWS points (job `old`), and job `new`'s batch 0: the records `changed`."""
    db = tmp_path / "q.duckdb"
    with Ledger(db) as ledger:
        ledger.open()
    stop_host(db)  # the file to this test's own connection
    con = duckdb.connect(str(db))
    ids = [str(i) for i in range(ROWS)]
    con.register("old", pa.table({"record_id": ids, "point_id": [point_id(point_key(i, 0)) for i in ids]}))
    con.execute(
        "INSERT INTO points (target, record_id, point_id, source_hash, vector_hash, embedder, payload, job_id, "
        "updated_at, chunk_no) SELECT ?, record_id, point_id, 'h', 'h', 'e', '{}', 'old', now(), 0 FROM old",
        [TARGET],
    )
    con.unregister("old")
    con.execute(
        "INSERT INTO manifest (job_id, ordinal, record_id, content_hash, batch_no, token_estimate, text, payload) "
        "SELECT 'new', range, CAST(range AS VARCHAR), 'h2', 0, 1, 't', '{}' FROM range(?, ?)",
        [changed.start, changed.stop],
    )
    con.execute("CHECKPOINT")
    return con


def _complete(con: Any, changed: range) -> Completion:
    ids = [str(i) for i in changed]
    work = BatchWork(0, 1, list(changed), ids, ["h2"] * len(ids), ["t"] * len(ids), [1] * len(ids), ["{}"] * len(ids))
    return Completion(work, 0, 0, 0.0)


def _rows_per_point(con: Any) -> tuple[int, int, int]:
    row = con.execute("SELECT count(*), count(DISTINCT point_id), count(*) FILTER (job_id = 'new') FROM points")
    return tuple(row.fetchall()[0])


def _scans(statements: list[str]) -> list[str]:
    return [s for s in statements if s.startswith("DELETE FROM points") and "rowid" not in s]


def test_a_replacing_completion_deletes_old_rows_where_they_were_not_by_scanning_the_table(tmp_path: Path) -> None:
    changed = range(150_000, 150_100)
    con = _file(tmp_path, changed)
    replacing = batches_replacing_points(con, "new", TARGET)
    assert 0 in replacing and replacing.old[0].count == 100
    recording = Recording(con)
    record_points(recording, "new", TARGET, "e", [_complete(con, changed)], datetime.now(), replacing)
    assert _rows_per_point(con) == (ROWS, ROWS, 100)  # each changed point's old row gone, its new row there
    deletes = [s for s in recording.statements if s.startswith("DELETE FROM points")]
    assert len(deletes) == 2 and _scans(deletes) == []  # where they were, and the rows appended since: no scan


def test_old_rows_a_checkpoint_moved_are_deleted_by_scanning_the_table(tmp_path: Path) -> None:
    changed = range(ROWS - 100, ROWS)
    con = _file(tmp_path, changed)
    replacing = batches_replacing_points(con, "new", TARGET)
    # Meanwhile most rows before them go, and a checkpoint compacts the row groups: the old rows move down.
    con.execute("DELETE FROM points WHERE CAST(record_id AS BIGINT) < ? AND CAST(record_id AS BIGINT) % 10 <> 0",
                [changed.start])  # fmt: skip
    con.execute("CHECKPOINT")
    moved = con.execute("SELECT min(rowid) FROM points WHERE record_id = ?", [str(changed.start)]).fetchall()[0]
    assert moved is not None and moved[0] < replacing.old[0].low
    recording = Recording(con)
    record_points(recording, "new", TARGET, "e", [_complete(con, changed)], datetime.now(), replacing)
    left = changed.start // 10 + 100
    assert _rows_per_point(con) == (left, left, 100)
    assert len(_scans(recording.statements)) == 1


def test_a_fresh_backfill_and_new_records_delete_nothing(tmp_path: Path) -> None:
    new = range(ROWS, ROWS + 100)  # records the target does not hold
    con = _file(tmp_path, new)
    replacing = batches_replacing_points(con, "new", TARGET)
    assert 0 not in replacing
    recording = Recording(con)
    record_points(recording, "new", TARGET, "e", [_complete(con, new)], datetime.now(), replacing)
    assert not [s for s in recording.statements if s.startswith("DELETE")]
    assert _rows_per_point(con) == (ROWS + 100, ROWS + 100, 100)
