"""`--changed-since COLUMN`: a re-sync reads only the rows whose column is at or above the largest value the last
completed job read, takes the rows it did not read as unchanged, and finds deletions by reading the ids alone. Here on
Parquet files and DuckDB SQL (read where they live, as a database is); tests/test_postgres.py has PostgreSQL's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest

import qsync
from qsync.cli import main
from qsync.errors import ConfigError, MissingColumn, SourceError

ROWS = 200


def _write(folder: Path, name: str, rows: list[tuple[int, str, int]]) -> None:
    folder.mkdir(exist_ok=True)
    frame = pd.DataFrame(rows, columns=["id", "text", "seq"])
    frame.to_parquet(folder / name, index=False)


def _options(db: Path, **extra: Any) -> dict[str, Any]:
    return {"collection": "c", "db": str(db), "embedder": "hash", "dimensions": 8, "changed_since": "seq", **extra}


def _figures(job: str, db: Path) -> tuple[int, ...]:
    info = qsync.status(job, db=str(db))
    return (info["total_records"], info["loaded_records"], info["unchanged_records"], info["deleted_records"],
            info["embedded_texts"])  # fmt: skip


def test_a_resync_reads_only_rows_changed_since_the_last_job_and_deletes_by_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder of Parquet files written by a pipeline: each write is a new file, `seq` grows with every row written.
    Rows deleted from the table are gone from every file (the folder is rewritten without them)."""
    folder, db = tmp_path / "table", tmp_path / "q.duckdb"
    _write(folder, "part-0.parquet", [(i, f"record number {i}", i) for i in range(ROWS)])
    first = qsync.run(str(folder), delete_missing=True, **_options(db))
    assert first.status == "completed"
    info = qsync.status(first.job_id, db=str(db))
    assert (info["since_column"], info["since_value"], info["high_water"]) == ("seq", None, str(ROWS - 1))
    assert _figures(first.job_id, db) == (ROWS, ROWS, 0, 0, ROWS)

    # Three records rewritten, one new, two deleted (ids 10 and 11 no longer in any file).
    kept = [(i, f"record number {i}", i) for i in range(ROWS) if i not in (1, 2, 3, 10, 11)]
    _write(folder, "part-0.parquet", kept)
    _write(folder, "part-1.parquet", [(1, "record one, revised", 500), (2, "record two, revised", 501),
                                      (3, "record three, revised", 502), (1001, "a new record", 503)])  # fmt: skip
    second = qsync.run(str(folder), delete_missing=True, **_options(db))
    assert second.job_id == "c:table#2" and second.status == "completed", second.message
    info = qsync.status(second.job_id, db=str(db))
    assert (info["since_value"], info["high_water"]) == (str(ROWS - 1), "503"), info
    # Read: the 4 rows written since, and the row at the mark (seq 199: read again, unchanged, free).
    assert _figures(second.job_id, db) == (5, 4, 1, 2, 4), info
    report = qsync.verify(second.job_id, db=str(db))
    assert report.missing == 0 and report.present == ROWS - 2 + 1, report

    code = main(["run", "--source", str(folder), "--collection", "c", "--db", str(db), "--embedder", "hash",
                 "--dimensions", "8", "--changed-since", "seq", "--delete-missing", "--quiet"])  # fmt: skip
    assert code == 0
    assert "read 1 row with seq >= 503; the next re-sync reads from seq >= 503" in capsys.readouterr().out
    # Only a completed job's mark is where the next re-sync starts: a run that ended otherwise names none.
    from qsync.cli import output
    from qsync.engine.runner import RunResult

    output.report(RunResult("c:table#3", "paused", "paused", 0, 0.0), str(db), output.RunTexts())
    said = capsys.readouterr().out
    assert "read 1 row with seq >= 503" in said and "next re-sync" not in said, said
    assert _figures("c:table#3", db) == (1, 0, 1, 0, 0)  # only the row at the mark, unchanged


def test_rows_not_read_are_kept_without_delete_missing_and_a_full_resync_reads_every_row(tmp_path: Path) -> None:
    db = tmp_path / "q.duckdb"
    source = tmp_path / "t.duckdb"
    with duckdb.connect(str(source)) as con:
        con.execute(f"CREATE TABLE t AS SELECT i AS id, 'text ' || i AS text, TIMESTAMP '2026-01-01' + "
                    f"to_seconds(i) AS updated FROM range({ROWS}) r(i)")  # fmt: skip
    options = _options(db, changed_since="updated", source_db=str(source))
    query = "sql:SELECT * FROM t"
    assert qsync.run(query, **options).status == "completed"
    with duckdb.connect(str(source)) as con:
        con.execute("DELETE FROM t WHERE id < 5")
        con.execute("UPDATE t SET text = 'changed', updated = TIMESTAMP '2026-06-01' WHERE id = 7")
    second = qsync.run(query, **options)
    # Read: id 7 and the row at the mark; ids 0-4 left the table but stay in the collection (no --delete-missing).
    assert _figures(second.job_id, db) == (2, 1, 1, 0, 1)
    assert qsync.status(second.job_id, db=str(db))["since_value"] == "2026-01-01 00:03:19"
    full = qsync.run(query, incremental=False, **options)  # --full: every row read and written
    info = qsync.status(full.job_id, db=str(db))
    assert (info["total_records"], info["since_value"], info["embedded_texts"]) == (ROWS - 5, None, 0), info


def test_another_model_or_collection_reads_every_row_again(tmp_path: Path) -> None:
    """A mark says what was loaded into these points by this model: a job that makes records into other points (here
    another size, into another collection, under the same job name) must read every row."""
    folder, db = tmp_path / "table", tmp_path / "q.duckdb"
    _write(folder, "part-0.parquet", [(i, f"record number {i}", i) for i in range(ROWS)])
    assert qsync.run(str(folder), job="j", **_options(db)).status == "completed"
    other = qsync.run(str(folder), job="j", **_options(db, collection="c16", dimensions=16))
    assert other.job_id == "j#2"
    assert _figures(other.job_id, db)[:2] == (ROWS, ROWS)
    same = qsync.run(str(folder), job="j", **_options(db, collection="c16", dimensions=16, batch_size=50))
    assert _figures(same.job_id, db)[0] == 1  # batch size changes nothing a record becomes: from the mark


def test_sources_that_cannot_be_read_in_part_and_bad_columns_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "q.duckdb"
    frame = pd.DataFrame({"id": [1, 2], "text": ["a", "b"], "seq": [1, 2]})
    with pytest.raises(ConfigError, match="--changed-since reads only the changed rows"):
        qsync.run(frame, **_options(db))
    csv = tmp_path / "t.csv"
    frame.to_csv(csv, index=False)
    code = main(["run", "--source", str(csv), "--collection", "c", "--db", str(db), "--embedder", "hash",
                 "--changed-since", "seq", "--quiet"])  # fmt: skip
    assert code == 1 and "--changed-since reads only" in capsys.readouterr().err
    folder = tmp_path / "table"
    _write(folder, "part-0.parquet", [(1, "a", 1)])
    with pytest.raises(MissingColumn, match="--changed-since column 'updated' not found"):
        qsync.run(str(folder), **_options(db, changed_since="updated"))
    with pytest.raises(SourceError, match=r"holds VARCHAR.*must be a timestamp, a date or an increasing number"):
        qsync.run(str(folder), **_options(db, changed_since="text"))
    assert qsync.jobs(db=str(db)).empty  # nothing planned
