"""Bad rows end as skips with reasons, bad sources as clear errors; every good row loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
from qsync_testing import qdrant_points

import qsync
from qsync.app import reading
from qsync.app.jobs import create_job
from qsync.errors import SourceError

pytestmark = pytest.mark.reliability


def _run(tmp_path: Path, source: Any, **options: Any) -> tuple[dict[str, Any], pd.DataFrame, dict[str, dict[str, Any]]]:
    db, qdrant = tmp_path / "q.duckdb", tmp_path / "qdrant"
    options.setdefault("dimensions", 32)
    result = qsync.run(source, collection="c", job="j", db=db, qdrant_path=qdrant, **options)
    assert result.status == "completed", result.message
    id_column = options.get("id_column", "id")
    by_id = {str(payload[id_column]): payload for _, payload in qdrant_points(qdrant, "c").values() if payload}
    return qsync.status("j", db=db), qsync.skipped("j", db=db), by_id


def _reasons(skipped: pd.DataFrame) -> dict[Any, str]:
    return {(r.record_id if isinstance(r.record_id, str) else r.ordinal): str(r.reason) for r in skipped.itertuples()}


def test_jsonl_bad_rows_are_skipped_with_reasons(tmp_path: Path) -> None:
    src = tmp_path / "bad.jsonl"
    lines = [
        json.dumps({"id": "ok1", "text": "a good row", "tag": "x"}),
        json.dumps({"id": "nulltext", "text": None}),
        json.dumps({"id": "empty", "text": ""}),
        json.dumps({"id": "blank", "text": "  \n\t\u00a0 "}),
        json.dumps({"id": "ok1", "text": "same id again"}),
        json.dumps({"id": "number", "text": 42}),
        json.dumps({"id": "huge", "text": "word " * 3000}),  # long, not bad: cut into chunks
        json.dumps({"text": "no id at all"}),
        json.dumps({"id": 7, "text": "integer id"}),
        json.dumps({"id": "7", "text": "the same id as a string"}),
        json.dumps({"id": 2.5, "text": "fractional id"}),
        '{"id": "broken", "text": "unterminated',
        "[1, 2, 3]",
        json.dumps({"id": "ok2", "text": "another good row", "tag": "y"}),
    ]
    data = "\n".join(lines).encode() + b'\n{"id": "latin1", "text": "caf\xe9"}\n'
    src.write_bytes(data)
    info, skipped, points = _run(tmp_path, src, payload_columns=["tag"])

    assert set(points) == {"ok1", "ok2", "7", "huge"}
    assert points["huge"]["chunk_count"] > 1 and info["total_chunks"] == 3 + points["huge"]["chunk_count"]
    assert points["ok1"]["tag"] == "x" and points["7"]["id"] == 7  # the id keeps its type in the payload
    reasons = _reasons(skipped)
    assert reasons["nulltext"] == "text is missing"
    assert reasons["empty"] == reasons["blank"] == "text is empty or whitespace"
    assert reasons["number"] == "text is not a string (int)"
    assert "huge" not in reasons
    assert reasons[7] == "id is missing"
    assert reasons[10] == "id is a non-integral number, not a string or integer"
    assert reasons[11].startswith("line 12: malformed JSON")
    assert reasons[12] == "line 13: not a JSON object"
    assert reasons[14] == "line 15: not valid UTF-8"
    dupes = skipped[skipped.reason.str.startswith("duplicate id")]
    assert sorted(dupes.record_id) == ["7", "ok1"]
    assert info["total_records"] == len(lines) + 1
    assert info["loaded_records"] + info["skipped_records"] == info["total_records"] == info["processed_records"]


def test_csv_unreadable_lines_are_skipped_with_line_numbers(tmp_path: Path) -> None:
    src = tmp_path / "bad.csv"
    src.write_bytes(b"id,text\n1,first row\n2,caf\xe9 latin-1\n3,third row\n4,too,many,fields\n5,fifth row\n")
    _, skipped, points = _run(tmp_path, src)
    assert set(points) == {"1", "3", "5"}
    reasons = list(skipped.reason)
    assert any(r.startswith("line 3: invalid encoding") for r in reasons), reasons
    assert any(r.startswith("line 5:") for r in reasons), reasons
    assert len(reasons) == 2


def test_dataframe_with_mixed_types(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "id": [1, 2.0, "3", None, 5, np.nan, True],
            "text": ["one", "two", "three", "no id", {"not": "text"}, "nan id", "bool id"],
            "score": [0.5, None, 1.5, 2.0, 3.0, 4.0, 5.0],
        }
    )
    _, skipped, points = _run(tmp_path, frame, payload_columns=["score"])
    assert set(points) == {"1", "2", "3"}
    assert points["1"]["score"] == 0.5 and points["2"]["score"] is None
    reasons = {r.ordinal: r.reason for r in skipped.itertuples()}
    assert reasons == {
        3: "id is missing",
        4: "text is not a string (dict)",
        5: "id is missing",
        6: "id is a boolean, not a string or integer",
    }


def test_parquet_with_a_text_template_and_sql_source(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"key": [10, 11, 12], "title": ["Alpha", None, None], "body": ["first", "second", None], "lang": ["en"] * 3}
    )
    src = tmp_path / "in.parquet"
    frame.to_parquet(src)
    _, skipped, points = _run(tmp_path, src, id_column="key", text_template="{title}: {body}", payload_columns=["lang"])
    assert set(points) == {"10", "11"}
    assert list(skipped.reason) == ["text is missing"]
    texts = reading.batch_records("j", 0, db=tmp_path / "q.duckdb").text.tolist()
    assert texts == ["Alpha: first", ": second"]

    other = tmp_path / "sql"
    other.mkdir()
    with duckdb.connect(str(other / "src.duckdb")) as con:
        con.execute("CREATE TABLE docs AS SELECT i AS id, 'doc number ' || i AS text FROM range(250) t(i)")
    _, skipped, points = _run(other, "sql:SELECT * FROM docs WHERE id % 2 = 0", source_db=str(other / "src.duckdb"))
    assert len(points) == 125 and skipped.empty


def test_missing_column_is_a_clear_error_and_creates_nothing(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("id,body\n1,hello\n")
    with pytest.raises(SourceError, match=r"column\(s\) 'text' not found \(columns are: id, body\)"):
        create_job(src, collection="c", db=tmp_path / "q.duckdb", job="j")
    assert qsync.jobs(db=tmp_path / "q.duckdb").empty


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        create_job(tmp_path / "nope.csv", collection="c", db=tmp_path / "q.duckdb")
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(SourceError, match="unknown format"):
        create_job(tmp_path / "data.xlsx", collection="c", db=tmp_path / "q.duckdb")


def test_empty_source_completes_with_nothing_to_do(tmp_path: Path) -> None:
    src = tmp_path / "empty.jsonl"
    src.write_text("")
    info, skipped, points = _run(tmp_path, src)
    assert info["total_records"] == 0 and info["batches_total"] == 0 and not points and skipped.empty
