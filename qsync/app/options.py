"""The one place where a user's options become a job spec: defaults, environment, validation. The CLI, the
Python API and the notebook launcher all call `build_spec`; nothing else parses options or reads the
environment for them.

The embedder defaults to Gemini when GEMINI_API_KEY or GOOGLE_API_KEY is set, else the offline hashing
embedder; Qdrant to $QDRANT_URL when set and no path is given, else Qdrant Edge in a folder beside the
checkpoint file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

from typing_extensions import Required

from qsync.catalog.models import default_limits
from qsync.embedders.gemini_client import api_key_from_env
from qsync.errors import ConfigError
from qsync.input.frames import frame_columns
from qsync.input.postgres import without_secret
from qsync.input.sources import (
    DataFrameSource,
    FileSource,
    FrameSource,
    ParquetFilesSource,
    Source,
    SourceLike,
    SqlSource,
    as_source,
    reads_changed_rows,
)
from qsync.spec.chunking import Chunking
from qsync.spec.columns import Columns
from qsync.spec.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DIMENSIONS,
    default_concurrency,
    default_qdrant_path,
    resolve_db,
)
from qsync.spec.embedder import EmbedderSpec
from qsync.spec.enrich import EnrichSpec
from qsync.spec.job import JobSpec
from qsync.spec.settings import RunSettings
from qsync.spec.target import MEMORY, CollectionOptions, SinkSpec

PathLike = str | os.PathLike[str]
__all__ = [
    "SourceLike",
    "SpecOptions",
    "build_spec",
    "calls_in_flight",
    "default_job_name",
    "embedder_spec_of",
    "sink_spec",
    "source_identity",
]


class SpecOptions(TypedDict, total=False):
    """The keyword arguments of `build_spec`, for functions that pass them on (typed: a misspelled option is an
    error for mypy, and a TypeError at run time)."""

    collection: Required[str]
    job: str | None
    id_column: str
    text_column: str | None
    text_template: str | None
    payload_columns: Sequence[str]
    image_column: str | None
    document_column: str | None
    embedder: str | None
    model: str | None
    dimensions: int | None
    task_type: str | None
    embedder_options: Mapping[str, Any] | None
    batch_size: int
    qdrant_path: PathLike | None
    qdrant_url: str | None
    source_db: str | None
    batch_mode: bool
    enrich: EnrichSpec | Mapping[str, Any] | None
    distance: str
    on_disk: bool
    payload_indexes: Sequence[str]
    vector_name: str | None
    extra_vectors: Sequence[str]
    incremental: bool
    delete_missing: bool
    chunk_tokens: int | None
    chunk_overlap: int
    changed_since: str | None


def build_spec(
    source: SourceLike,
    *,
    collection: str,
    db: PathLike | None = None,
    job: str | None = None,
    id_column: str = "id",
    text_column: str | None = "text",
    text_template: str | None = None,
    payload_columns: Sequence[str] = (),
    image_column: str | None = None,
    document_column: str | None = None,
    embedder: str | None = None,
    model: str | None = None,
    dimensions: int | None = None,
    task_type: str | None = None,
    embedder_options: Mapping[str, Any] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    qdrant_path: PathLike | None = None,
    qdrant_url: str | None = None,
    source_db: str | None = None,
    batch_mode: bool = False,
    enrich: EnrichSpec | Mapping[str, Any] | None = None,
    distance: str = "cosine",
    on_disk: bool = False,
    payload_indexes: Sequence[str] = (),
    vector_name: str | None = None,
    extra_vectors: Sequence[str] = (),
    incremental: bool = True,
    delete_missing: bool = False,
    chunk_tokens: int | None = None,
    chunk_overlap: int = 0,
    changed_since: str | None = None,
) -> tuple[JobSpec, Source]:
    """The job spec these options describe, and the source to plan from."""
    src = as_source(source, database=source_db)
    if changed_since and not reads_changed_rows(src):
        raise ConfigError(
            f"--changed-since reads only the changed rows of an SQL query (PostgreSQL or DuckDB) or of Parquet files; "
            f"{src.description} is read whole at each re-sync (only its new and changed records are paid): leave "
            "--changed-since out"
        )
    # A media record's text is its caption, and optional: text_column=None (or '') embeds the media alone.
    columns = Columns(
        id_column,
        None if text_template else (text_column or None),
        text_template,
        tuple(payload_columns),
        image_column or None,
        document_column or None,
    )
    embedder_spec = embedder_spec_of(embedder, model, dimensions, task_type, embedder_options)
    enrich_spec = EnrichSpec(**dict(enrich)) if isinstance(enrich, Mapping) else enrich
    spec = JobSpec(
        name=job or default_job_name(src, collection),
        collection=collection,
        source=source_identity(src),
        source_db=without_secret(source_db),  # the password is never stored: libpq finds it again on a re-sync
        columns=columns,
        embedder=embedder_spec,
        sink=sink_spec(resolve_db(db), qdrant_path, qdrant_url),
        collection_options=CollectionOptions(
            distance, on_disk, tuple(payload_indexes), vector_name, tuple(extra_vectors)
        ),
        batch_size=batch_size,
        enrich=enrich_spec,
        batch_mode=batch_mode,
        incremental=incremental,
        delete_missing=delete_missing,
        chunking=Chunking(chunk_tokens, chunk_overlap),
        changed_since=changed_since or None,
    )
    return spec, src


def embedder_spec_of(
    embedder: str | None = None,
    model: str | None = None,
    dimensions: int | None = None,
    task_type: str | None = None,
    embedder_options: Mapping[str, Any] | None = None,
) -> EmbedderSpec:
    """Which embedder these options name (`build_spec`'s): Gemini when a key is set and none is named, else hashing."""
    kind = embedder or ("gemini" if api_key_from_env() else "hash")
    options = dict(embedder_options or {})
    model = model or options.pop("model", None)
    task_type = task_type or options.pop("task_type", None)
    return EmbedderSpec(kind, dimensions or DEFAULT_DIMENSIONS, model, task_type, options)


def calls_in_flight(settings: RunSettings, embedder: EmbedderSpec, batch_size: int) -> int | None:
    """The API calls a run of this embedder with these settings keeps in flight: the settings' concurrency, else the one
    choice every run makes (spec.defaults.default_concurrency) from the same facts its runner reads off the built
    embedder: its price (the one price rule) and its default texts-per-minute limit (Gemini's tier 1). None for an
    embedder of your own: its price and limits are its own, known once it is built (its runner chooses then)."""
    if settings.concurrency is not None:
        return settings.concurrency
    if embedder.kind not in ("hash", "gemini"):
        return None
    limit = settings.texts_per_minute or (default_limits()[0] if embedder.kind == "gemini" else None)
    return default_concurrency(limit, batch_size, paid=embedder.price_per_million() > 0)


def sink_spec(db: Path, qdrant_path: PathLike | None, qdrant_url: str | None) -> SinkSpec:
    """Where points go: a URL; else a folder of Qdrant Edge shards, named relative to the checkpoint file's folder
    when it is inside it (so the two can move together), else absolute; or ":memory:"."""
    url = qdrant_url or (None if qdrant_path else os.environ.get("QDRANT_URL"))
    if url:
        return SinkSpec(url=url)
    path = str(qdrant_path) if qdrant_path else str(default_qdrant_path(db))
    if path == MEMORY:
        return SinkSpec(path=path)
    return SinkSpec(path=str(Path(path).expanduser().resolve())).relative_to(db.parent)


def source_identity(source: Source) -> str:
    """How a spec names its source: a DataFrame of any kind by kind only (its rows are snapshotted at plan time, as a
    file's are), a file by its resolved path, a folder or glob of Parquet files by its absolute path (the files in it
    are listed anew by each plan: a re-sync reads the ones added or changed), a query by its text."""
    if isinstance(source, (DataFrameSource, FrameSource)):
        return "dataframe"
    if isinstance(source, FileSource):
        return str(source.path)
    if isinstance(source, ParquetFilesSource):
        return source.location
    if isinstance(source, SqlSource):
        return f"sql: {source.query}"
    return source.description


def default_job_name(source: Source, collection: str) -> str:
    """COLLECTION:SOURCE-STEM (`docs:records`), COLLECTION:FOLDER for a folder of Parquet files, `COLLECTION:glob-<hash>`
    for a glob, `COLLECTION:TABLE` for a PostgreSQL table by name, `COLLECTION:dataframe-<hash of its column names>` for a DataFrame of any kind, or `COLLECTION:sql-<hash>`.
    A DataFrame has no name of its own: named by its columns (read from its schema, no rows read), an unrelated frame
    sent to the same collection starts its own job instead of becoming a re-sync of the first (`job=` names it); the
    same rows as pandas, polars or Arrow are the same job."""
    if isinstance(source, (DataFrameSource, FrameSource)):
        columns = "\0".join(frame_columns(source.frame))
        return f"{collection}:dataframe-{_short_hash(columns)}"
    if isinstance(source, SqlSource) and source.table:
        return f"{collection}:{source.table}"
    if isinstance(source, SqlSource):
        return f"{collection}:sql-{_short_hash(source.query)}"
    if isinstance(source, FileSource):
        return f"{collection}:{source.path.stem}"
    if isinstance(source, ParquetFilesSource):
        return (
            f"{collection}:glob-{_short_hash(source.location)}"
            if source.is_glob
            else f"{collection}:{source.folder.name}"
        )
    return f"{collection}:{Path(source.description).stem}"


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]
