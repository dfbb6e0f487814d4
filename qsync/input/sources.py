"""Where records come from: a DataFrame of any kind (frames.py), a Parquet / CSV / JSON-lines file, a folder or glob
of Parquet files, or a DuckDB SQL query.

Every source is turned into one normalized relation with the columns
    ordinal BIGINT, record_id VARCHAR, text VARCHAR, payload VARCHAR (JSON), problem VARCHAR,
    media VARCHAR (a path as the source gives it), media_bytes BLOB (a DataFrame's or Parquet's bytes)
registered as `__qsync_input` on the store's connection. `problem` carries what was already wrong with
a row while reading it (malformed JSON line, a text that is not a string); the planner adds the checks
that need the whole table (duplicate ids) or the embedder (length) and skips those rows with a reason.
Typed sources (CSV, Parquet, SQL, Arrow-typed frames) are normalized in SQL so a million rows plan in seconds;
sources whose cells can hold anything (pandas object columns, JSON lines) are normalized in Python so that
each bad cell gets its own reason instead of failing the whole read.
"""

from __future__ import annotations

import os
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeAlias

import duckdb
import pandas as pd
import pyarrow as pa

from qsync.errors import MissingColumn, SourceError
from qsync.input.changed import CHANGED_VALUE, ChangedSince, keep_ids
from qsync.input.frames import Frame, frame_columns, frame_kind, frame_to_arrow
from qsync.input.postgres import POSTGRES_TABLE, copy_into, is_postgres, redact, table_query
from qsync.input.records import (
    INPUT_VIEW,
    MAX_LINE_BYTES,
    RejectedRow,
    brief,
    check_columns,
    read_json_records,
    register_records,
)
from qsync.spec.columns import Columns, template_fields
from qsync.sql import SqlConnection, arrow_table
from qsync.sql import ident as _ident
from qsync.sql import literal as _sql_literal


class Source(Protocol):
    description: str

    def register(self, con: SqlConnection, columns: Columns) -> list[RejectedRow]:
        """Register the normalized relation as INPUT_VIEW; return rows that could not be read at all."""
        ...


# -- typed sources, normalized in SQL -------------------------------------------------------------


def _normalize_sql(
    relation_sql: str, columns: Columns, types: Mapping[str, str], changed: ChangedSince | None = None
) -> str:
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
    changed_sql = f", {_ident(changed.column)} AS {CHANGED_VALUE}" if changed else ""
    return f"""
        SELECT CAST(row_number() OVER () - 1 AS BIGINT) AS ordinal,
               CAST({_ident(columns.id_column)} AS VARCHAR) AS record_id,
               {text_sql} AS text,
               CAST({payload_sql} AS VARCHAR) AS payload,
               CAST(NULL AS VARCHAR) AS problem,
               {media_sql} AS media,
               {bytes_sql} AS media_bytes{changed_sql}
        FROM {relation_sql}
    """


def _register_typed(
    con: SqlConnection, relation_sql: str, columns: Columns, description: str, changed: ChangedSince | None = None
) -> None:
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {relation_sql}").fetchall()
    except duckdb.Error as exc:
        raise SourceError(f"cannot read {description}: {brief(exc)}") from exc
    types = {row[0]: str(row[1]) for row in described}
    check_columns(list(types), columns, description)
    if changed:
        if changed.column not in types:
            raise MissingColumn(f"{description}: --changed-since column {changed.column!r} not found "
                                f"(columns are: {', '.join(types)})")  # fmt: skip
        changed.check_type(types[changed.column], description)
    con.execute(f"CREATE OR REPLACE TEMP VIEW {INPUT_VIEW} AS {_normalize_sql(relation_sql, columns, types, changed)}")


def _register_parquet(
    con: SqlConnection, relation: str, columns: Columns, description: str, changed: ChangedSince | None
) -> None:
    """A Parquet relation, only its changed rows with --changed-since (DuckDB reads the filter's column first and
    skips row groups whose statistics are below the mark)."""
    if changed and changed.reads_ids:
        keep_ids(con, relation, columns.id_column)
    filtered = f"({changed.filtered(f'SELECT * FROM {relation}')})" if changed else relation
    _register_typed(con, filtered, columns, description, changed)


@dataclass
class FileSource:
    """A Parquet, CSV or JSON-lines file (by extension), read through DuckDB."""

    path: Path
    changed: ChangedSince | None = None  # --changed-since: Parquet only (a CSV cell is text, '9' > '10')
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

    def register(self, con: SqlConnection, columns: Columns) -> list[RejectedRow]:
        kind = self.kind
        path = _sql_literal(str(self.path))
        if kind == "parquet":
            _register_parquet(con, f"read_parquet({path})", columns, self.description, self.changed)
            return []
        if kind == "csv":
            # all_varchar: a CSV cell is text; sniffing "007" into the integer 7 would change ids.
            # store_rejects: a line that cannot be read (bad UTF-8, wrong field count) becomes a skip
            # with its line number, never a silent drop or an aborted plan.
            # max_line_size: a long line (a 50 MB field) is read, to be skipped as too long with its reason,
            # rather than failing the whole file.
            relation = csv_relation(path)
            con.execute(f"CREATE OR REPLACE TEMP TABLE __qsync_csv AS SELECT * FROM {relation}")
            _register_typed(con, "__qsync_csv", columns, self.description)
            # DuckDB may report several errors for one line; one skip per line, with the first error.
            rejected = con.execute(
                "SELECT line, first(error_type ORDER BY column_idx), first(error_message ORDER BY column_idx) "
                "FROM reject_errors GROUP BY line ORDER BY line"
            ).fetchall()
            return [RejectedRow(None, f"line {line}: {etype.lower()}: {msg}") for line, etype, msg in rejected]
        return register_records(con, read_json_records(self.path), columns, self.description)


PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass
class ParquetFilesSource:
    """A folder of Parquet files (every one below it; `key=value` folders are hive partitions, read as columns) or a
    glob of them (`data/*.parquet`, `data/**/*.parquet`), read by DuckDB as one table: columns by name, a file that
    lacks one gives NULLs there. The files are listed at each plan, so a re-sync reads the files added or changed
    since the last job (and, as for one file, embeds only the records that are new or changed)."""

    location: str  # a folder or a glob, as given
    changed: ChangedSince | None = None
    description: str = field(init=False)

    def __post_init__(self) -> None:
        self.location = str(Path(self.location).expanduser().resolve())
        self.description = self.location
        if not self.is_glob and not Path(self.location).is_dir():
            raise SourceError(f"source folder {self.location} does not exist")

    @property
    def is_glob(self) -> bool:
        return is_glob(self.location) and not Path(self.location).is_dir()  # a folder may be named `data[1]`

    @property
    def folder(self) -> Path:
        """The folder itself, or where the glob starts (relative media paths start there)."""
        if not self.is_glob:
            return Path(self.location)
        parts = Path(self.location).parts
        fixed = next(i for i, part in enumerate(parts) if is_glob(part))
        return Path(*parts[:fixed])

    def files(self) -> list[Path]:
        """The Parquet files, sorted by path (their rows are numbered in that order). Names starting with `.` or `_`
        are left out in a folder, as Spark and Hive write them (`_SUCCESS`, `.part.crc`); a glob takes what it names."""
        if self.is_glob:
            found = list(self.folder.glob(str(Path(self.location).relative_to(self.folder))))
        else:
            found = [f for f in Path(self.location).rglob("*")
                     if not any(part.startswith((".", "_")) for part in f.relative_to(self.location).parts)]  # fmt: skip
        files = sorted(f for f in found if f.suffix.lower() in PARQUET_SUFFIXES and f.is_file())
        if not files:
            where = "matches the glob" if self.is_glob else "is in the folder"
            raise SourceError(f"{self.location}: no .parquet or .pq file {where}")
        return files

    def relation(self) -> str:
        """The SQL that reads every file as one table (for the plan, and for the columns a form offers)."""
        listing = ", ".join(_sql_literal(str(f)) for f in self.files())
        return f"read_parquet([{listing}], hive_partitioning = true, union_by_name = true)"

    def register(self, con: SqlConnection, columns: Columns) -> list[RejectedRow]:
        _register_parquet(con, self.relation(), columns, self.description, self.changed)
        return []


def is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def csv_relation(path: str) -> str:
    """How qsync reads a CSV file (`path` an SQL literal), for its rows and for its columns alike: a form that reads
    the columns of a file with one bad line must see what the plan will."""
    return (
        f"read_csv({path}, header = true, all_varchar = true, store_rejects = true, max_line_size = {MAX_LINE_BYTES})"
    )


@dataclass
class SqlSource:
    """A DuckDB SQL query, run in `database` (a DuckDB file, opened read-only) or in memory; or a PostgreSQL query
    when `database` is a PostgreSQL connection string (input.postgres: streamed, its password never shown).
    `table`: the table name the query was made of (`--source glosses`), which names the job."""

    query: str
    database: str | None = None
    table: str | None = None
    changed: ChangedSince | None = None
    description: str = field(init=False)

    def __post_init__(self) -> None:
        where = f" on {redact(self.database) if is_postgres(self.database) else self.database}" if self.database else ""
        self.description = f"sql{where}: {self.query}"

    def register(self, con: SqlConnection, columns: Columns) -> list[RejectedRow]:
        changed = self.changed
        query = changed.filtered(self.query) if changed else self.query
        ids_query = changed.ids_query(self.query, columns.id_column) if changed and changed.reads_ids else None
        if self.database and is_postgres(self.database):
            copy_into(con, self.database, query, POSTGRES_TABLE)  # the filter runs in PostgreSQL
            if ids_query:
                copy_into(con, self.database, ids_query, _IDS)
                keep_ids(con, _IDS, columns.id_column)
                con.execute(f"DROP TABLE {_IDS}")
            _register_typed(con, POSTGRES_TABLE, columns, self.description, changed)
            return []
        try:
            with duckdb.connect(self.database or ":memory:", read_only=bool(self.database)) as src:
                table = arrow_table(src, query)
                ids = arrow_table(src, ids_query) if ids_query else None
        except duckdb.Error as exc:
            raise SourceError(f"the source query failed: {brief(exc)}") from exc
        con.register("__qsync_sql", table)
        if ids is not None:
            con.register(_IDS, ids)
            keep_ids(con, _IDS, columns.id_column)
            con.unregister(_IDS)
        _register_typed(con, "__qsync_sql", columns, self.description, changed)
        return []


_IDS = "__qsync_ids"  # the ids a database returned, before PRESENT_TABLE reads them as the plan does


def reads_changed_rows(source: Source) -> bool:
    """Whether --changed-since can read only a source's changed rows: an SQL query (DuckDB, PostgreSQL) or Parquet."""
    if isinstance(source, FileSource):
        return source.path.suffix.lower() in PARQUET_SUFFIXES
    return isinstance(source, (SqlSource, ParquetFilesSource))


# -- sources whose cells can hold anything, normalized in Python (records.py) ----------------------


@dataclass
class DataFrameSource:
    frame: pd.DataFrame
    description: str = "DataFrame"

    def register(self, con: SqlConnection, columns: Columns) -> list[RejectedRow]:
        check_columns([str(c) for c in self.frame.columns], columns, self.description)
        wanted = columns.required()
        rows: list[Mapping[str, Any] | str] = [
            {str(k): v for k, v in row.items()} for row in self.frame[wanted].to_dict("records")
        ]
        return register_records(con, enumerate(rows), columns, self.description)


@dataclass
class FrameSource:
    """A polars DataFrame or LazyFrame, a pyarrow Table, RecordBatch or RecordBatchReader, or a DuckDB relation, read
    as Arrow (frames.py), never through pandas. Its Arrow table is kept once read: a reader can be read once only.

    Columns whose values SQL reads as the pandas path does (ids of integers or text, texts of text) are normalized in
    SQL; others (float or boolean ids, non-text texts) in Python, row by row, so each bad cell is skipped with the
    same reason a pandas DataFrame gives it."""

    frame: Any
    description: str = field(init=False)
    _table: pa.Table | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.description = frame_kind(self.frame) or type(self.frame).__name__

    def register(self, con: SqlConnection, columns: Columns) -> list[RejectedRow]:
        check_columns(frame_columns(self.frame), columns, self.description)
        if self._table is None:
            self._table = frame_to_arrow(self.frame, columns.required())
        table = self._table
        if _sql_reads_as_pandas(table.schema, columns):
            con.register(FRAME_VIEW, table)
            _register_typed(con, FRAME_VIEW, columns, self.description)
            return []
        rows = (row for batch in table.to_batches() for row in batch.to_pylist())
        return register_records(con, enumerate(rows), columns, self.description)


FRAME_VIEW = "__qsync_frame"


def _sql_reads_as_pandas(schema: pa.Schema, columns: Columns) -> bool:
    """Whether the SQL path reads these columns to the same ids, texts and skips as the Python path: an id of
    integers or text (a float id 2.0 is the id "2" in Python, "2.0" in SQL), a text column of text (a number is
    skipped as "text is not a string" in Python, refused whole in SQL), template fields of text or integers (SQL
    writes a boolean `true`, Python `True`), media as text or bytes."""

    def of(name: str | None, *kinds: Any) -> bool:
        return name is None or any(kind(schema.field(name).type) for kind in kinds)

    text, integer, binary = pa.types.is_string, pa.types.is_integer, pa.types.is_binary
    large, large_binary = pa.types.is_large_string, pa.types.is_large_binary
    view = getattr(pa.types, "is_string_view", lambda _: False)
    fields = [columns.text_column] if columns.text_template is None else template_fields(columns.text_template)
    return (
        of(columns.id_column, text, large, view, integer)
        and all(of(name, text, large, view, integer if columns.text_template else text) for name in fields)
        and of(columns.media_column, text, large, view, binary, large_binary)
    )


# What users pass as a source: a Source, a DataFrame of any kind, a path (file, folder, glob), or "sql:SELECT …".
SourceLike: TypeAlias = Source | Frame | str | os.PathLike[str]


def as_source(source: SourceLike, *, database: str | None = None) -> Source:
    """Accept what users pass: a DataFrame of any kind (frames.py), a file path, a folder or glob of Parquet files,
    `sql:SELECT …`, or a table name with a PostgreSQL `database`."""
    if isinstance(source, pd.DataFrame):
        return DataFrameSource(source)
    if isinstance(source, (str, os.PathLike)):
        text = str(source)
        if text.lower().startswith("sql:"):
            return SqlSource(text[4:].strip(), database)
        if is_postgres(database) and (query := table_query(text)):
            return SqlSource(query, database, table=text.strip())
        path = Path(text).expanduser()
        if path.is_dir() or (is_glob(text) and not path.exists()):
            return ParquetFilesSource(text)
        return FileSource(path)
    if frame_kind(source) is not None:
        return FrameSource(source)
    return source  # type: ignore[return-value]
