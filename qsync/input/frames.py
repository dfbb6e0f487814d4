"""DataFrames of every kind: what they are called, their columns, and their rows as one pyarrow Table.

pandas keeps a path of its own (sources.DataFrameSource: an object column can hold anything, each bad cell gets
its reason). polars DataFrames and LazyFrames, pyarrow Tables, RecordBatches and RecordBatchReaders, and DuckDB
relations are read as Arrow, only the columns a job needs, never through pandas. polars is optional: a frame is
recognised by its type's module, so nothing here imports it.

A RecordBatchReader is a stream that can be read once: qsync remembers the readers it has read, and refuses one
read already (a plan that read it again would silently find no rows).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import duckdb
import pandas as pd
import pyarrow as pa

from qsync.errors import SourceError
from qsync.sql import ident as _ident
from qsync.sql import relation_arrow

if TYPE_CHECKING:
    import polars as pl

    PolarsFrame: TypeAlias = pl.DataFrame | pl.LazyFrame
else:
    PolarsFrame = Any  # polars is optional: never imported at run time

Frame: TypeAlias = (
    pd.DataFrame | PolarsFrame | pa.Table | pa.RecordBatch | pa.RecordBatchReader | duckdb.DuckDBPyRelation
)

# Readers read by this process: a reader cannot say it was exhausted, and one read twice yields no rows.
_READ_READERS: weakref.WeakSet[Any] = weakref.WeakSet()


def frame_kind(value: object) -> str | None:
    """What kind of frame `value` is, as a person names it ("polars LazyFrame"), or None if it is not one."""
    if isinstance(value, pd.DataFrame):
        return "DataFrame"
    if isinstance(value, pa.Table):
        return "Arrow table"
    if isinstance(value, pa.RecordBatch):
        return "Arrow record batch"
    if isinstance(value, pa.RecordBatchReader):
        return "Arrow RecordBatchReader"
    if isinstance(value, duckdb.DuckDBPyRelation):
        return "DuckDB relation"
    kind = type(value)
    if kind.__module__.split(".")[0] == "polars" and kind.__name__ in ("DataFrame", "LazyFrame"):
        return f"polars {kind.__name__}"
    return None


def frame_columns(frame: Any) -> list[str]:
    """The frame's column names, from its schema: no rows are read (a LazyFrame is not run, a reader not read)."""
    kind = frame_kind(frame)
    if kind == "polars LazyFrame":
        return [str(c) for c in frame.collect_schema().names()]
    if kind in ("Arrow table", "Arrow record batch", "Arrow RecordBatchReader"):
        return [str(c) for c in frame.schema.names]
    return [str(c) for c in frame.columns]


def frame_label(frame: Any) -> str:
    """How a form shows the frame: its kind, and its rows when they are known without reading it."""
    kind = frame_kind(frame) or type(frame).__name__
    if kind in ("DataFrame", "polars DataFrame", "Arrow table", "Arrow record batch"):
        return f"{kind}: {len(frame):,} rows"
    if kind == "Arrow RecordBatchReader":
        return f"{kind} (read once)"
    return kind


def frame_to_arrow(frame: Any, columns: Sequence[str]) -> pa.Table:
    """The frame's `columns` as a pyarrow Table (a LazyFrame is collected, a relation run, a reader read to its end)."""
    kind = frame_kind(frame)
    wanted = list(dict.fromkeys(columns))
    try:
        if kind == "polars DataFrame":
            return frame.select(wanted).to_arrow()
        if kind == "polars LazyFrame":
            return frame.select(wanted).collect().to_arrow()
        if kind == "Arrow table":
            return frame.select(wanted)
        if kind == "Arrow record batch":
            return pa.Table.from_batches([frame.select(wanted)])
        if kind == "Arrow RecordBatchReader":
            return _read_once(frame, wanted)
        if kind == "DuckDB relation":
            return relation_arrow(frame.project(", ".join(_ident(c) for c in wanted)))
    except SourceError:
        raise
    except Exception as exc:  # polars, DuckDB and Arrow each raise their own kinds
        raise SourceError(f"cannot read the {kind}: {type(exc).__name__}: {exc}") from exc
    raise SourceError(f"a {type(frame).__name__} is not a source qsync reads")


def _read_once(reader: pa.RecordBatchReader, wanted: list[str]) -> pa.Table:
    if reader in _READ_READERS:
        raise SourceError(
            "this Arrow RecordBatchReader was read already, and a reader can be read once only: pass a new reader, "
            "or a pyarrow Table (which can be read again)"
        )
    _READ_READERS.add(reader)
    schema = pa.schema([reader.schema.field(c) for c in wanted])
    return pa.Table.from_batches([batch.select(wanted) for batch in reader], schema=schema)
