"""What columns a source has, and which of them are likely the id and the text: the launcher offers them
instead of making a person type names (and fail on a typo)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from qsync.errors import SourceError
from qsync.input.frames import Frame, frame_columns
from qsync.input.postgres import columns_of, is_postgres, table_query
from qsync.input.records import brief, read_json_records
from qsync.input.sources import FileSource, ParquetFilesSource, as_source, csv_relation
from qsync.sql import literal as _sql_literal

_ID_NAMES = ("id", "record_id", "doc_id", "uuid", "key", "pk")
_TEXT_NAMES = ("text", "content", "body", "document", "description", "definition", "gloss", "summary", "abstract",
               "title", "name")  # fmt: skip
_JSON_SAMPLE = 200  # JSON lines read to learn the keys (a record may lack some)


def source_columns(source: Frame | str | os.PathLike[str], source_db: str | None = None) -> list[str]:
    """The column names of a DataFrame of any kind (from its schema), a Parquet/CSV/JSON file, a folder or glob of
    Parquet files (hive partitions included), an `sql:` query (DuckDB or PostgreSQL), or a PostgreSQL table, in source
    order."""
    if not isinstance(source, (str, os.PathLike)):
        return frame_columns(source)
    text = str(source)
    if source_db and is_postgres(source_db):
        query = text.removeprefix("sql:").strip() if text.startswith("sql:") else table_query(text)
        if query:
            return columns_of(source_db, query)
    if text.startswith("sql:"):
        return _describe(f"SELECT * FROM ({text.removeprefix('sql:').strip().rstrip(';')}) LIMIT 0", source_db)
    found = as_source(text)
    if isinstance(found, ParquetFilesSource):
        return _describe(f"SELECT * FROM {found.relation()}", None)
    file = FileSource(Path(text))
    path = _sql_literal(str(file.path))
    if file.kind == "parquet":
        return _describe(f"SELECT * FROM read_parquet({path})", None)
    if file.kind == "csv":
        return _describe(f"SELECT * FROM {csv_relation(path)}", None)
    keys: dict[str, None] = {}
    for _, record in itertools.islice(read_json_records(file.path), _JSON_SAMPLE):
        if isinstance(record, dict):
            keys.update(dict.fromkeys(str(k) for k in record))
    if not keys:
        raise SourceError(f"{file.path}: no JSON objects in its first {_JSON_SAMPLE} lines")
    return list(keys)


def _describe(sql: str, database: str | None) -> list[str]:
    try:
        with duckdb.connect(database or ":memory:", read_only=bool(database)) as con:
            return [str(row[0]) for row in con.execute(f"DESCRIBE {sql}").fetchall()]
    except duckdb.Error as exc:
        raise SourceError(f"cannot read the source's columns: {brief(exc)}") from exc


def guess_columns(columns: Sequence[str], id_column: str | None = None) -> tuple[str | None, str | None]:
    """(id column, text column) by name, or None where nothing fits; the text is never the id column
    (`id_column` when it is given). The notebook launcher and the CLI both guess with this."""
    lowered = {c.lower(): c for c in columns}

    def first(names: Sequence[str], exclude: Any = None) -> str | None:
        for name in names:
            if name in lowered and lowered[name] != exclude:
                return lowered[name]
        return None

    id_col = id_column or first(_ID_NAMES) or next((c for c in columns if c.lower().endswith("_id")), None)
    text_col = first(_TEXT_NAMES, exclude=id_col)
    return id_col, text_col
