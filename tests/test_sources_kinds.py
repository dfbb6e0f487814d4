"""Every kind of DataFrame loads the points a pandas DataFrame of the same rows loads, re-runs as a re-sync that embeds
nothing, and keeps each bad cell's reason; folders and globs of Parquet files load, partitions as payload, and a
re-sync embeds only the rows of files added or changed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from qsync_testing import qdrant_points

import qsync
from qsync.cli import main
from qsync.cli.output import EXIT_OK
from qsync.errors import MissingColumn, SourceError
from qsync.money.estimate import compare_models
from qsync.notebook.launcher import Launcher

ROWS: dict[str, list[Any]] = {
    "id": [1, 2, 3, 4, 2, 6],
    "text": ["one", "two", None, "  ", "two again", "six"],
    "score": [0.5, None, 1.5, 2.0, 3.0, 4.25],
    "tag": ["a", "b", "c", "d", "e", None],
    "flag": [True, False, True, None, False, True],
}
PAYLOAD = ["score", "tag", "flag"]

# Each kind made from the same rows: pandas is the reference.
KINDS: dict[str, Callable[[], Any]] = {
    "polars": lambda: pl.DataFrame(ROWS),
    "polars-lazy": lambda: pl.DataFrame(ROWS).lazy().filter(pl.col("id") > 0),
    "arrow-table": lambda: pa.table(ROWS),
    "arrow-reader": lambda: pa.table(ROWS).to_reader(max_chunksize=2),
    "duckdb-relation": lambda: duckdb.sql("SELECT * FROM arrow_rows", connection=_duck()),
}


def _duck() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.register("arrow_rows", pa.table(ROWS))
    return con


Points = dict[str, tuple[Any, Any]]


def _load(tmp_path: Path, source: Any, collection: str, **options: Any) -> tuple[qsync.RunResult, Points]:
    result = qsync.run(source, collection=collection, db=tmp_path / "q.duckdb", qdrant_path=tmp_path / "qdrant",
                       dimensions=16, progress=False, **options)  # fmt: skip
    assert result.ok, result.message
    return result, qdrant_points(tmp_path / "qdrant", collection)


def _same_points(got: Points, expected: Points) -> None:
    assert set(got) == set(expected)
    for point, (vector, payload) in expected.items():
        assert payload == got[point][1]
        assert np.allclose(vector, got[point][0])


def _reasons(job: str, db: Path) -> dict[int, str]:
    skipped = qsync.skipped(job, db=db)
    return {int(o): str(r) for o, r in zip(skipped["ordinal"], skipped["reason"], strict=True)}


@pytest.fixture(scope="module")
def pandas_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Points, dict[int, str], str]:
    tmp = tmp_path_factory.mktemp("pandas")
    result, points = _load(tmp, pd.DataFrame(ROWS), "c", payload_columns=PAYLOAD)
    return points, _reasons(result.job_id, tmp / "q.duckdb"), result.job_id


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_of_frame_loads_what_pandas_loads_and_resyncs_for_nothing(
    kind: str, tmp_path: Path, pandas_run: tuple[Points, dict[int, str], str]
) -> None:
    expected, reasons, pandas_job = pandas_run
    result, points = _load(tmp_path, KINDS[kind](), "c", payload_columns=PAYLOAD)
    assert result.job_id == pandas_job, "named by its columns, as the pandas frame of the same rows"
    _same_points(points, expected)
    assert points[next(iter(points))][1].keys() == {"id", *PAYLOAD}
    assert _reasons(result.job_id, tmp_path / "q.duckdb") == reasons
    assert set(reasons.values()) == {
        "text is missing",
        "text is empty or whitespace",
        "duplicate id (first seen at row 2)",
    }

    again, _ = _load(tmp_path, KINDS[kind](), "c", payload_columns=PAYLOAD)
    info = qsync.status(again.job_id, db=tmp_path / "q.duckdb")
    assert again.job_id == result.job_id + "#2"
    assert info["embedded_texts"] == 0 and info["unchanged_records"] == len(expected) and info["batches_total"] == 0


def test_cells_the_sql_path_would_read_otherwise_keep_the_pandas_reasons(tmp_path: Path) -> None:
    rows: dict[str, list[Any]] = {"id": [1.0, 2.5, None, 4.0], "text": ["a", "b", "c", "d"]}
    _, expected = _load(tmp_path / "pandas", pd.DataFrame(rows), "c")
    pandas_reasons = _reasons("c:dataframe-" + _name_hash(rows), tmp_path / "pandas" / "q.duckdb")
    result, points = _load(tmp_path / "polars", pl.DataFrame(rows), "c")
    _same_points(points, expected)
    assert set(points) == set(expected) and len(points) == 2  # ids 1 and 4, as integers
    assert (
        _reasons(result.job_id, tmp_path / "polars" / "q.duckdb")
        == pandas_reasons
        == {
            1: "id is a non-integral number, not a string or integer",
            2: "id is missing",
        }
    )
    numbers = pa.table({"id": ["x", "y"], "text": pa.array([7, None], pa.int64())})
    result, points = _load(tmp_path / "arrow", numbers, "n")
    assert not points and _reasons(result.job_id, tmp_path / "arrow" / "q.duckdb") == {
        0: "text is not a string (int)",
        1: "text is missing",
    }


def _name_hash(rows: dict[str, list[Any]]) -> str:
    import hashlib

    return hashlib.sha1("\0".join(rows).encode()).hexdigest()[:8]


def test_a_reader_read_once_is_refused_when_read_again(tmp_path: Path) -> None:
    reader = pa.table(ROWS).to_reader()
    found = qsync.estimate(reader, dimensions=16)
    assert found["records"] == len(ROWS["id"])
    with pytest.raises(SourceError, match="read already, and a reader can be read once only"):
        qsync.run(reader, collection="c", db=tmp_path / "q.duckdb", qdrant_path=tmp_path / "qdrant", dimensions=16)
    assert qsync.jobs(db=tmp_path / "q.duckdb").empty, "nothing planned from an empty read"
    compared = compare_models(pa.table(ROWS).to_reader(), models=["gemini-embedding-001", "gemini-embedding-2"])
    assert list(compared["records"]) == [len(ROWS["id"])] * 2, "one read serves every model"


def _write_part(folder: Path, name: str, ids: range, word: str = "doc") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": [f"r{i}" for i in ids], "text": [f"{word} {i}" for i in ids]}).to_parquet(folder / name)


def test_a_hive_folder_loads_partitions_as_payload_and_resyncs_only_a_new_file(tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    _write_part(parts / "year=2023", "a.parquet", range(30))
    _write_part(parts / "year=2024", "a.parquet", range(30, 50))
    (parts / "_SUCCESS").write_text("")  # what Spark leaves beside its files: not read
    (parts / "README.txt").write_text("not parquet")
    db = tmp_path / "q.duckdb"
    result, points = _load(tmp_path, parts, "c", payload_columns=["year"])
    assert result.job_id == "c:parts" and len(points) == 50
    assert sorted({p["year"] for _, p in points.values()}) == [2023, 2024]

    _write_part(parts / "year=2025", "b.parquet", range(50, 57))
    again, points = _load(tmp_path, parts, "c", payload_columns=["year"])
    info = qsync.status(again.job_id, db=db)
    assert again.job_id == "c:parts#2" and len(points) == 57
    assert info["embedded_texts"] == 7 and info["unchanged_records"] == 50 and info["loaded_records"] == 7

    # The CLI reads the same folder: a third run finds nothing new.
    assert main(["run", "--source", str(parts), "--collection", "c", "--db", str(db),
                 "--qdrant-path", str(tmp_path / "qdrant"), "--dimensions", "16", "--payload-columns", "year"]) == EXIT_OK  # fmt: skip
    assert qsync.status("c:parts#3", db=db)["embedded_texts"] == 0


def test_a_glob_reads_the_files_it_names_and_a_changed_file_resyncs_its_changed_rows(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _write_part(data, "part-1.parquet", range(10))
    _write_part(data, "part-2.parquet", range(10, 20))
    _write_part(data, "other.parquet", range(100, 105))
    pattern = str(data / "part-*.parquet")
    result, points = _load(tmp_path, pattern, "g")
    assert result.job_id.startswith("g:glob-") and len(points) == 20
    _write_part(data, "part-2.parquet", range(10, 20), word="changed")
    pd.DataFrame({"id": ["r20"], "text": ["new"]}).to_parquet(data / "part-3.parquet")
    again, points = _load(tmp_path, pattern, "g")
    info = qsync.status(again.job_id, db=tmp_path / "q.duckdb")
    assert again.job_id == result.job_id + "#2" and len(points) == 21
    assert info["embedded_texts"] == 11 and info["unchanged_records"] == 10


def test_a_folder_or_glob_with_nothing_to_read_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.csv").write_text("id,text\n1,x\n")
    db = tmp_path / "q.duckdb"
    with pytest.raises(SourceError, match=r"empty: no \.parquet or \.pq file is in the folder"):
        qsync.run(tmp_path / "empty", collection="c", db=db, dimensions=16)
    with pytest.raises(SourceError, match=r"nowhere/\*\.parquet: no \.parquet or \.pq file matches the glob"):
        qsync.run(str(tmp_path / "nowhere" / "*.parquet"), collection="c", db=db, dimensions=16)
    _write_part(tmp_path / "parts", "a.parquet", range(3))
    with pytest.raises(MissingColumn, match=r"column\(s\) 'body' not found \(columns are: id, text\)"):
        qsync.run(tmp_path / "parts", collection="c", db=db, dimensions=16, text_column="body")
    with pytest.raises(MissingColumn, match=r"polars LazyFrame: column\(s\) 'body' not found"):
        qsync.run(pl.LazyFrame(ROWS), collection="c", db=db, dimensions=16, text_column="body")
    assert qsync.jobs(db=db).empty


def test_the_launcher_takes_a_polars_frame(tmp_path: Path) -> None:
    frame = pl.DataFrame({"doc_id": [f"d{i}" for i in range(40)], "body": [f"text {i}" for i in range(40)]})
    launcher = Launcher(source=frame, collection="c", db=tmp_path / "q.duckdb", qdrant_path=str(tmp_path / "qdrant"),
                        dimensions=16)  # fmt: skip
    assert launcher.form.source.value == "polars DataFrame: 40 rows" and launcher.form.source.disabled
    assert launcher.form.id_column.value == "doc_id" and launcher.form.text_column.value == "body"
    launcher.start_button.click()
    result = launcher.wait(60)
    assert result is not None and result.ok and result.job_id.startswith("c:dataframe-"), launcher.message.value
    assert len(qdrant_points(tmp_path / "qdrant", "c")) == 40
