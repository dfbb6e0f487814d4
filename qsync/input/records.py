"""Records whose cells can hold anything (DataFrame object columns, JSON lines), normalized in Python so that
each bad cell gets its own reason instead of failing the whole read: ids compared as text, texts that must be
strings, payloads that must be JSON, media cells that are paths or bytes."""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from qsync.errors import MissingColumn, SourceError
from qsync.spec.columns import Columns, template_fields
from qsync.sql import SqlConnection

INPUT_VIEW = "__qsync_input"


@dataclass(frozen=True)
class RejectedRow:
    """A row that could not be read at all (a malformed line): skipped with its reason."""

    ordinal: int | None
    reason: str


MAX_LINE_BYTES = 256 * 1024 * 1024  # a CSV line longer than this cannot be read at all (DuckDB refuses the file)
MAX_PAYLOAD_BYTES = 8 * 1024 * 1024  # a record whose payload is larger is skipped, not sent to Qdrant


def brief(exc: BaseException, limit: int = 400) -> str:
    """An error's message cut for a person (DuckDB quotes whole lines of the source, megabytes of them)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_columns(available: Sequence[str], columns: Columns, description: str) -> None:
    missing = [c for c in columns.required() if c not in available]
    if missing:
        raise MissingColumn(
            f"{description}: column(s) {', '.join(map(repr, missing))} not found "
            f"(columns are: {', '.join(available) or 'none'})"
        )


def read_json_records(path: Path) -> Iterable[tuple[int, Mapping[str, Any] | str]]:
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


def register_records(
    con: SqlConnection,
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
        check_columns(sorted(seen_columns), columns, description)
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
