"""Where records come from: a DataFrame, a Parquet / CSV / JSON-lines file, or a DuckDB SQL query.

Every source is turned into one normalized relation with the columns
    ordinal BIGINT, record_id VARCHAR, text VARCHAR, payload VARCHAR (JSON), problem VARCHAR,
    media VARCHAR (a path as the source gives it), media_bytes BLOB (a DataFrame's or Parquet's bytes)
registered as `__qsync_input` on the store's connection. `problem` carries what was already wrong with
a row while reading it (malformed JSON line, a text that is not a string); the planner adds the checks
that need the whole table (duplicate ids) or the embedder (length) and skips those rows with a reason.
Typed sources (CSV, Parquet, SQL) are normalized in SQL so a million rows plan in seconds; sources
whose cells can hold anything (DataFrame object columns, JSON lines) are normalized in Python so that
each bad cell gets its own reason instead of failing the whole read.
"""

from __future__ import annotations

import json
import math
import os
import string
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pandas as pd
import pyarrow as pa

from .errors import MissingColumn, SourceError
from .media import MediaKind
from .store import arrow_table

INPUT_VIEW = "__qsync_input"


@dataclass(frozen=True)
class Columns:
    """Which columns hold the id, the text (or a template over several columns) and the payload; for a
    multimodal job, which one holds each record's image or document (a path, or bytes in a DataFrame),
    whose text, if any, is then its caption."""

    id_column: str = "id"
    text_column: str | None = "text"
    text_template: str | None = None
    payload_columns: tuple[str, ...] = ()
    image_column: str | None = None
    document_column: str | None = None

    def __post_init__(self) -> None:
        if self.image_column and self.document_column:
            # One record, one embedding of one medium: a row with both would need two vectors per point.
            raise SourceError("give one media column per job: an image column or a document column, not both")
        if self.text_column is not None and self.text_template is not None:
            raise SourceError("give exactly one of text_column or text_template")
        if self.text_column is None and self.text_template is None and not self.media_column:
            raise SourceError("give exactly one of text_column or text_template")
        if self.text_template is not None and not template_fields(self.text_template):
            raise SourceError(f"text template {self.text_template!r} names no column, e.g. '{{title}}: {{body}}'")

    @property
    def media_column(self) -> str | None:
        return self.image_column or self.document_column

    @property
    def media_kind(self) -> MediaKind | None:
        return "image" if self.image_column else "document" if self.document_column else None

    def required(self) -> list[str]:
        text_cols = [self.text_column] if self.text_column else template_fields(self.text_template or "")
        media = [self.media_column] if self.media_column else []
        return list(dict.fromkeys([self.id_column, *text_cols, *media, *self.payload_columns]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id_column": self.id_column,
            "text_column": self.text_column,
            "text_template": self.text_template,
            "payload_columns": list(self.payload_columns),
            "image_column": self.image_column,
            "document_column": self.document_column,
        }


@dataclass
class RejectedRow:
    ordinal: int | None
    reason: str


class Source(Protocol):
    description: str

    def register(self, con: duckdb.DuckDBPyConnection, columns: Columns) -> list[RejectedRow]:
        """Register the normalized relation as INPUT_VIEW; return rows that could not be read at all."""
        ...


def template_fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def _check_columns(available: Sequence[str], columns: Columns, description: str) -> None:
    missing = [c for c in columns.required() if c not in available]
    if missing:
        raise MissingColumn(
            f"{description}: column(s) {', '.join(map(repr, missing))} not found "
            f"(columns are: {', '.join(available) or 'none'})"
        )


# -- typed sources, normalized in SQL -------------------------------------------------------------


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _normalize_sql(relation_sql: str, columns: Columns, types: Mapping[str, str]) -> str:
    if columns.text_column is None and columns.text_template is None:
        text_sql = "CAST(NULL AS VARCHAR)"  # a media job without captions
    elif columns.text_column is not None:
        text_type = types[columns.text_column].upper()
        if text_type not in ("VARCHAR", "JSON") and not text_type.startswith("VARCHAR"):
            raise SourceError(
                f"text column {columns.text_column!r} holds {text_type}, not text; "
                "pick another column or use a text template"
            )
        text_sql = f"CAST({_ident(columns.text_column)} AS VARCHAR)"
    else:
        parts: list[str] = []
        fields: list[str] = []
        for literal, name, _, _ in string.Formatter().parse(columns.text_template or ""):
            if literal:
                parts.append(_sql_literal(literal))
            if name:
                fields.append(name)
                parts.append(f"coalesce(CAST({_ident(name)} AS VARCHAR), '')")
        all_null = " AND ".join(f"{_ident(f)} IS NULL" for f in fields)
        text_sql = f"CASE WHEN {all_null} THEN NULL ELSE concat({', '.join(parts)}) END"
    media_sql, bytes_sql = "CAST(NULL AS VARCHAR)", "CAST(NULL AS BLOB)"
    if columns.media_column:
        name = _ident(columns.media_column)
        if types[columns.media_column].upper() == "BLOB":
            bytes_sql = name
        else:
            media_sql = f"CAST({name} AS VARCHAR)"
    payload_cols = list(dict.fromkeys([columns.id_column, *columns.payload_columns]))
    payload_sql = "to_json(struct_pack(" + ", ".join(f"{_ident(c)} := {_ident(c)}" for c in payload_cols) + "))"
    return f"""
        SELECT CAST(row_number() OVER () - 1 AS BIGINT) AS ordinal,
               CAST({_ident(columns.id_column)} AS VARCHAR) AS record_id,
               {text_sql} AS text,
               CAST({payload_sql} AS VARCHAR) AS payload,
               CAST(NULL AS VARCHAR) AS problem,
               {media_sql} AS media,
               {bytes_sql} AS media_bytes
        FROM {relation_sql}
    """


def _register_typed(con: duckdb.DuckDBPyConnection, relation_sql: str, columns: Columns, description: str) -> None:
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {relation_sql}").fetchall()
    except duckdb.Error as exc:
        raise SourceError(f"cannot read {description}: {exc}") from exc
    types = {row[0]: str(row[1]) for row in described}
    _check_columns(list(types), columns, description)
    con.execute(f"CREATE OR REPLACE TEMP VIEW {INPUT_VIEW} AS {_normalize_sql(relation_sql, columns, types)}")


@dataclass
class FileSource:
    """A Parquet, CSV or JSON-lines file (by extension), read through DuckDB."""

    path: Path
    description: str = field(init=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path).expanduser().resolve()
        self.description = str(self.path)
        if not self.path.exists():
            raise SourceError(f"source file {self.path} does not exist")

    @property
    def kind(self) -> str:
        suffixes = [s.lower() for s in self.path.suffixes]
        for kind, exts in (
            ("parquet", {".parquet", ".pq"}),
            ("csv", {".csv", ".tsv"}),
            ("jsonl", {".jsonl", ".ndjson", ".json"}),
        ):
            if exts & set(suffixes):
                return kind
        raise SourceError(f"{self.path}: unknown format; use .parquet, .csv, .tsv, .jsonl or .json")

    def register(self, con: duckdb.DuckDBPyConnection, columns: Columns) -> list[RejectedRow]:
        kind = self.kind
        path = _sql_literal(str(self.path))
        if kind == "parquet":
            _register_typed(con, f"read_parquet({path})", columns, self.description)
            return []
        if kind == "csv":
            # all_varchar: a CSV cell is text; sniffing "007" into the integer 7 would change ids.
            # store_rejects: a line that cannot be read (bad UTF-8, wrong field count) becomes a skip
            # with its line number, never a silent drop or an aborted plan.
            relation = f"read_csv({path}, header = true, all_varchar = true, store_rejects = true)"
            con.execute(f"CREATE OR REPLACE TEMP TABLE __qsync_csv AS SELECT * FROM {relation}")
            _register_typed(con, "__qsync_csv", columns, self.description)
            # DuckDB may report several errors for one line; one skip per line, with the first error.
            rejected = con.execute(
                "SELECT line, first(error_type ORDER BY column_idx), first(error_message ORDER BY column_idx) "
                "FROM reject_errors GROUP BY line ORDER BY line"
            ).fetchall()
            return [RejectedRow(None, f"line {line}: {etype.lower()}: {msg}") for line, etype, msg in rejected]
        return _register_python(con, _read_json_records(self.path), columns, self.description)


@dataclass
class SqlSource:
    """A DuckDB SQL query, run in `database` (a DuckDB file, opened read-only) or in memory."""

    query: str
    database: str | None = None
    description: str = field(init=False)

    def __post_init__(self) -> None:
        where = f" on {self.database}" if self.database else ""
        self.description = f"sql{where}: {self.query}"

    def register(self, con: duckdb.DuckDBPyConnection, columns: Columns) -> list[RejectedRow]:
        try:
            with duckdb.connect(self.database or ":memory:", read_only=bool(self.database)) as src:
                table = arrow_table(src, self.query)
        except duckdb.Error as exc:
            raise SourceError(f"the source query failed: {exc}") from exc
        con.register("__qsync_sql", table)
        _register_typed(con, "__qsync_sql", columns, self.description)
        return []


# -- untyped sources, normalized in Python ----------------------------------------------------------


@dataclass
class DataFrameSource:
    frame: pd.DataFrame
    description: str = "DataFrame"

    def register(self, con: duckdb.DuckDBPyConnection, columns: Columns) -> list[RejectedRow]:
        _check_columns([str(c) for c in self.frame.columns], columns, self.description)
        wanted = columns.required()
        rows: list[Mapping[str, Any] | str] = [
            {str(k): v for k, v in row.items()} for row in self.frame[wanted].to_dict("records")
        ]
        return _register_python(con, enumerate(rows), columns, self.description)


def _read_json_records(path: Path) -> Iterable[tuple[int, Mapping[str, Any] | str]]:
    """(line index, record or the reason it could not be read) for a JSON-lines or JSON-array file."""
    with path.open("rb") as fh:
        head = fh.read(64).lstrip()
    if head.startswith(b"["):
        try:
            items = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError) as exc:
            raise SourceError(f"{path} is not valid JSON: {exc}") from exc
        for i, item in enumerate(items):
            yield i, item if isinstance(item, dict) else f"item {i + 1} is not a JSON object"
        return
    with path.open("rb") as fh:
        for i, raw in enumerate(fh):
            if not raw.strip():
                continue
            try:
                item = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield i, f"line {i + 1}: not valid UTF-8"
                continue
            except ValueError as exc:
                yield i, f"line {i + 1}: malformed JSON ({exc.args[0] if exc.args else exc})"
                continue
            yield i, item if isinstance(item, dict) else f"line {i + 1}: not a JSON object"


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _canonical_id(value: Any) -> str | None:
    """Ids compare as text: 7, 7.0 and "7" are the same record (a pandas int column with a gap is float)."""
    if _is_missing(value):
        return None
    if isinstance(value, bool):
        raise TypeError("a boolean")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        raise TypeError("a non-integral number")
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalar
        return _canonical_id(value.item())
    if isinstance(value, str):
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"of type {type(value).__name__}")


def _json_value(value: Any) -> Any:
    if _is_missing(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    if isinstance(value, (str, int, float, bool, list, dict)):
        return value
    return str(value)


def _text_of(record: Mapping[str, Any], columns: Columns) -> tuple[str | None, str | None]:
    """(text, problem)."""
    if columns.text_column is None and columns.text_template is None:
        return None, None  # a media job without captions
    if columns.text_column is not None:
        value = record.get(columns.text_column)
        if _is_missing(value):
            return None, None
        if not isinstance(value, str):
            return None, f"text is not a string ({type(value).__name__})"
        return value, None
    fields = template_fields(columns.text_template or "")
    values = {f: record.get(f) for f in fields}
    if all(_is_missing(v) for v in values.values()):
        return None, None
    return (columns.text_template or "").format_map({k: "" if _is_missing(v) else v for k, v in values.items()}), None


def _media_of(record: Mapping[str, Any], columns: Columns) -> tuple[str | None, bytes | None, str | None]:
    """(path, bytes, problem) of a record's media cell: a path (str or PathLike) or the bytes themselves."""
    if not columns.media_column:
        return None, None, None
    value = record.get(columns.media_column)
    if _is_missing(value):
        return None, None, None  # the planner says 'media is missing'
    if isinstance(value, (bytes, bytearray, memoryview)):
        return None, bytes(value), None
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value), None, None
    return None, None, f"{columns.media_column} holds {type(value).__name__}, not a file path or bytes"


def _register_python(
    con: duckdb.DuckDBPyConnection,
    records: Iterable[tuple[int, Mapping[str, Any] | str]],
    columns: Columns,
    description: str,
) -> list[RejectedRow]:
    ordinals: list[int] = []
    ids: list[str | None] = []
    texts: list[str | None] = []
    payloads: list[str] = []
    problems: list[str | None] = []
    media: list[str | None] = []
    media_bytes: list[bytes | None] = []
    rejected: list[RejectedRow] = []
    payload_cols = list(dict.fromkeys([columns.id_column, *columns.payload_columns]))
    seen_columns: set[str] = set()
    for ordinal, record in records:
        if isinstance(record, str):
            rejected.append(RejectedRow(ordinal, record))
            continue
        seen_columns.update(record)
        problem: str | None = None
        try:
            record_id = _canonical_id(record.get(columns.id_column))
        except TypeError as exc:
            record_id, problem = None, f"id is {exc.args[0]}, not a string or integer"
        text, text_problem = _text_of(record, columns)
        problem = problem or text_problem
        try:
            values = {c: _json_value(record.get(c)) for c in payload_cols}
            if isinstance(values[columns.id_column], float) and record_id is not None:
                values[columns.id_column] = int(record_id)  # 2.0 from a pandas column with gaps is the id 2
            payload = json.dumps(values, default=str)
        except (TypeError, ValueError) as exc:
            payload, problem = "{}", problem or f"payload cannot be stored as JSON ({exc})"
        ordinals.append(ordinal)
        ids.append(record_id)
        texts.append(text)
        payloads.append(payload)
        problems.append(problem)
        path, data, media_problem = _media_of(record, columns)
        media.append(path)
        media_bytes.append(data)
        if media_problem and not problems[-1]:
            problems[-1] = media_problem
    if ordinals:  # a key no record has is a missing column (one that only some records lack is a missing value)
        _check_columns(sorted(seen_columns), columns, description)
    table = pa.table(
        {
            "ordinal": pa.array(ordinals, pa.int64()),
            "record_id": pa.array(ids, pa.string()),
            "text": pa.array(texts, pa.string()),
            "payload": pa.array(payloads, pa.string()),
            "problem": pa.array(problems, pa.string()),
            "media": pa.array(media, pa.string()),
            "media_bytes": pa.array(media_bytes, pa.binary()),
        }
    )
    con.register(INPUT_VIEW, table)
    return rejected


def as_source(source: Source | pd.DataFrame | str | os.PathLike[str], *, database: str | None = None) -> Source:
    """Accept what users pass: a DataFrame, a file path, or `sql:SELECT …`."""
    if isinstance(source, pd.DataFrame):
        return DataFrameSource(source)
    if isinstance(source, (str, os.PathLike)):
        text = str(source)
        if text.lower().startswith("sql:"):
            return SqlSource(text[4:].strip(), database)
        return FileSource(Path(text))
    return source
