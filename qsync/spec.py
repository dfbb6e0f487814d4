"""What a job is: one typed, frozen spec, built and validated in one place.

The CLI, the Python API and the notebook launcher all call `build_spec`; nothing else parses options or
reads the environment for them. A spec has two halves:

- the **identity** (`JobSpec`): what the job produces — source, columns, embedder, target, batch size,
  enrichment, Batch Mode, re-sync mode. It is stored with the job; the same identity resumes the job, a
  different one for an unfinished job is refused with each difference named (see `differences`).
- the **run settings** (`RunSettings`): how this run goes about it — concurrency, rate limits, retries,
  heartbeat. They may change from one resume to the next, and are never stored.

The budget sits between the two: it is stored with the job (it is the job's whole spend across resumes),
and a new value given on resume replaces it; `NO_BUDGET` clears it, `KEEP` (the default) keeps it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypedDict

from typing_extensions import Required

from .config import default_qdrant_path, env_float, resolve_db, stale_after_s
from .embedders.gemini import DEFAULT_MODEL as GEMINI_DEFAULT_MODEL
from .embedders.gemini import api_key_from_env
from .embedders.hashing import MODEL as HASH_MODEL
from .embedders.instructions import DOCUMENT_TASK, check_task, takes_instructions
from .enrich import EnrichSpec
from .errors import ConfigError
from .pricing import model_info
from .sink import CollectionOptions, SinkSpec
from .sources import Columns, DataFrameSource, FileSource, Source, SqlSource, as_source

if TYPE_CHECKING:
    import pandas as pd

PathLike = str | os.PathLike[str]

GEMINI_DEFAULT_TASK = "RETRIEVAL_DOCUMENT"
# Embedder options that change how a run behaves, not which vectors it makes: never part of the identity.
_RUNTIME_OPTIONS = frozenset({"latency_s", "price_per_million_tokens", "timeout_s"})


class _Keep(Enum):
    KEEP = "keep"


KEEP: Final = _Keep.KEEP  # budget: keep what the job has stored (none for a new job)
NO_BUDGET: Final = None  # budget: clear it
Budget = float | None | Literal[_Keep.KEEP]


@dataclass(frozen=True)
class EmbedderSpec:
    """Which embedder makes the vectors. Never holds a secret: keys come from the environment."""

    kind: str = "hash"  # "hash" (offline), "gemini", or "package.module:factory" for your own
    dimensions: int = 768
    model: str | None = None  # Gemini model (default gemini-embedding-001)
    # Gemini task type (default RETRIEVAL_DOCUMENT); for a model that takes its task as an instruction in
    # the input (gemini-embedding-2), the instruction format's key (default document:v1)
    task_type: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # more keyword arguments for the embedder

    def __post_init__(self) -> None:
        if self.dimensions < 1:
            raise ConfigError(f"dimensions must be a positive number, not {self.dimensions}")
        if self.kind not in ("hash", "gemini") and ":" not in self.kind:
            raise ConfigError(f"unknown embedder {self.kind!r}: use 'hash', 'gemini' or 'package.module:factory'")
        if self.kind != "gemini" and (self.model or self.task_type):
            raise ConfigError("a model and a task type are Gemini settings; use them with the gemini embedder")
        if self.kind == "gemini":
            self._check_model()

    def _check_model(self) -> None:
        """Per-model checks, from the pricing table: the model's dimensions and how it takes its task."""
        model = self.resolved_model
        if takes_instructions(model):
            check_task(self.resolved_task_type)
        info = model_info(model)
        if "min_dimensions" in info:
            low, high = int(info["min_dimensions"]), int(info.get("full_dimensions", 3072))
            if not low <= self.dimensions <= high:
                raise ConfigError(f"{model} makes vectors of {low} to {high} dimensions, not {self.dimensions}")

    @property
    def resolved_model(self) -> str:
        if self.kind == "gemini":
            return self.model or GEMINI_DEFAULT_MODEL
        return HASH_MODEL if self.kind == "hash" else self.kind

    @property
    def resolved_task_type(self) -> str:
        if self.kind != "gemini":
            return ""
        default = DOCUMENT_TASK if takes_instructions(self.resolved_model) else GEMINI_DEFAULT_TASK
        return self.task_type or default

    def identity(self) -> dict[str, Any]:
        return {
            "embedder": self.kind,
            "model": self.resolved_model,
            "dimensions": self.dimensions,
            "task type": self.resolved_task_type,
            **{f"embedder option {k}": v for k, v in sorted(self.options.items()) if k not in _RUNTIME_OPTIONS},
        }

    def factory_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the embedder's constructor."""
        kwargs: dict[str, Any] = {"dimensions": self.dimensions, **self.options}
        if self.kind == "gemini":
            kwargs.update(model=self.resolved_model, task_type=self.resolved_task_type)
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dimensions": self.dimensions,
            "model": self.model,
            "task_type": self.task_type,
            "options": dict(self.options),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmbedderSpec:
        options = dict(data.get("options") or {})
        # Jobs written before the spec kept model and task type among the options, with run settings.
        model = data.get("model") or options.pop("model", None)
        task_type = data.get("task_type") or options.pop("task_type", None)
        for runtime in ("texts_per_minute", "tokens_per_minute", "max_attempts"):
            options.pop(runtime, None)
        return cls(str(data["kind"]), int(data.get("dimensions") or 768), model, task_type, options)


@dataclass(frozen=True)
class JobSpec:
    """The identity of a job: what it reads and what it produces. Stored with the job."""

    name: str  # the job's name; re-syncs are NAME#2, NAME#3, …
    collection: str
    source: str  # a resolved file path, "sql: …", or "dataframe"
    columns: Columns
    embedder: EmbedderSpec
    sink: SinkSpec
    collection_options: CollectionOptions = field(default_factory=CollectionOptions)
    source_db: str | None = None
    batch_size: int = 100
    enrich: EnrichSpec | None = None
    batch_mode: bool = False
    incremental: bool = True  # a re-sync skips records the collection already holds unchanged
    delete_missing: bool = False  # a re-sync deletes points of records that left the source

    def __post_init__(self) -> None:
        if not self.collection:
            raise ConfigError("a collection name is needed")
        if not self.name or "#" in self.name:
            raise ConfigError(f"job name {self.name!r} is empty or holds '#', which marks re-syncs (NAME#2)")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, not {self.batch_size}")
        if self.batch_mode and self.embedder.kind != "gemini":
            raise ConfigError("Batch Mode is a Gemini feature: use the gemini embedder with Batch Mode")
        if self.enrich is not None:
            self.enrich.check_fields(["text", self.columns.id_column, *self.columns.payload_columns])
        if self.columns.media_column:
            self._check_media()

    def _check_media(self) -> None:
        """Media columns need a model that embeds media, and the paths that embed records one call at a time."""
        option = "--image-column" if self.columns.image_column else "--document-column"
        if self.embedder.kind != "gemini" or not model_info(self.embedder.resolved_model).get("multimodal"):
            raise ConfigError(
                f"{option} needs a multimodal model: use --model gemini-embedding-2 "
                f"(not {self.embedder.resolved_model})"
            )
        if self.batch_mode:
            # Refused here, before anything is planned: qsync's Batch Mode stage (batchmode.py) submits the
            # manifest's texts, and a media record's text is only its caption, so it would embed captions alone.
            raise ConfigError(
                f"{option} cannot be used with Batch Mode yet: qsync submits only texts to Gemini's Batch Mode. "
                "Run the job without Batch Mode (leave out --batch-mode; batch_mode=False in Python): its images "
                "and PDFs are embedded as they are read, at the standard price, and a budget (--max-cost-usd) still "
                "caps the spend"
            )
        if self.enrich is not None:
            raise ConfigError(
                f"{option} cannot be used with enrichment: it rewrites texts, and media records embed files"
            )

    @property
    def target(self) -> str:
        """What the ledger calls the destination: where, which collection, which vector."""
        return f"{self.sink.describe()}|{self.collection}|{self.collection_options.vector_name or ''}"

    def identity(self) -> dict[str, Any]:
        """Every field that makes two jobs different, flat and named as a user would say it."""
        columns = self.columns
        return {
            "source": self.source,
            "source database": self.source_db,
            "id column": columns.id_column,
            "text column": columns.text_column,
            "text template": columns.text_template,
            "payload columns": list(columns.payload_columns),
            "image column": columns.image_column,
            "document column": columns.document_column,
            **self.embedder.identity(),
            "Qdrant": self.sink.describe(),
            "collection": self.collection,
            "distance": self.collection_options.distance,
            "vectors on disk": self.collection_options.on_disk,
            "payload indexes": list(self.collection_options.payload_indexes),
            "vector name": self.collection_options.vector_name,
            "extra vectors": list(self.collection_options.extra_vectors),
            "batch size": self.batch_size,
            "enrichment": self.enrich.to_dict() if self.enrich else None,
            "Batch Mode": self.batch_mode,
            "re-sync unchanged records": self.incremental,
            "delete records that left the source": self.delete_missing,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec_version": 1,
            "name": self.name,
            "collection": self.collection,
            "source": self.source,
            "source_db": self.source_db,
            "columns": self.columns.to_dict(),
            "embedder": self.embedder.to_dict(),
            "sink": self.sink.to_dict(),
            "collection_options": self.collection_options.to_dict(),
            "batch_size": self.batch_size,
            "enrich": self.enrich.to_dict() if self.enrich else None,
            "batch_mode": self.batch_mode,
            "incremental": self.incremental,
            "delete_missing": self.delete_missing,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, job_id: str = "", collection: str = "", source: str = "") -> JobSpec:
        """A stored spec; jobs planned before specs existed kept a looser config, read here too."""
        cols = data.get("columns") or {}
        return cls(
            name=str(data.get("name") or base_name(job_id)),
            collection=str(data.get("collection") or collection),
            source=str(data.get("source") or source),
            source_db=data.get("source_db"),
            columns=Columns(
                cols.get("id_column", "id"),
                cols.get("text_column"),
                cols.get("text_template"),
                tuple(cols.get("payload_columns") or ()),
                cols.get("image_column"),
                cols.get("document_column"),
            ),
            embedder=EmbedderSpec.from_dict(data["embedder"]),
            sink=SinkSpec.from_dict(data["sink"]),
            collection_options=CollectionOptions.from_dict(data.get("collection_options")),
            batch_size=int(data.get("batch_size") or 100),
            enrich=EnrichSpec.from_dict(data["enrich"]) if data.get("enrich") else None,
            batch_mode=bool(data.get("batch_mode")),
            incremental=bool(data.get("incremental", True)),
            delete_missing=bool(data.get("delete_missing")),
        )


def differences(stored: JobSpec, given: JobSpec) -> list[str]:
    """Each field in which `given` differs from `stored`, as 'field: stored X, given Y'."""
    old, new = stored.identity(), given.identity()
    return [
        f"{key}: stored {old.get(key)!r}, given {new.get(key)!r}"
        for key in dict.fromkeys([*old, *new])
        if old.get(key) != new.get(key)
    ]


def base_name(job_id: str) -> str:
    """NAME of NAME#3."""
    return job_id.split("#", 1)[0]


@dataclass(frozen=True)
class RunSettings:
    """How one run goes about a job. Never stored: each resume may choose again."""

    concurrency: int = 4  # batches in flight at once
    max_attempts: int = 8  # per API or Qdrant call, transient errors only; then the batch fails
    retry_base_s: float = 1.0  # first backoff; doubles per attempt, with jitter
    retry_max_s: float = 60.0
    heartbeat_s: float = 5.0
    stale_after_s: float = 60.0
    texts_per_minute: float | None = None  # None: the embedder's default (Gemini tier 1: 3,000)
    tokens_per_minute: float | None = None  # None: the embedder's default (Gemini tier 1: 1,000,000)
    batch_mode_poll_s: float = 30.0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, not {self.concurrency}")
        if self.max_attempts < 1:
            raise ConfigError(f"max attempts must be at least 1, not {self.max_attempts}")

    @classmethod
    def from_env(cls, **overrides: Any) -> RunSettings:
        """Defaults, then QSYNC_* environment variables, then explicit overrides (None = not given)."""
        base = cls(
            heartbeat_s=env_float("QSYNC_HEARTBEAT_S", 5.0),
            stale_after_s=stale_after_s(),
            retry_base_s=env_float("QSYNC_RETRY_BASE_S", 1.0),
            batch_mode_poll_s=env_float("QSYNC_BATCH_POLL_S", 30.0),
        )
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown run settings: {', '.join(sorted(unknown))}")
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


class SpecOptions(TypedDict, total=False):
    """The keyword arguments of `build_spec`, for functions that pass them on (typed: a misspelled option
    is an error for mypy, and a TypeError at run time)."""

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


def build_spec(
    source: Source | pd.DataFrame | PathLike,
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
    batch_size: int = 100,
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
) -> tuple[JobSpec, Source]:
    """The one place where options become a job spec: defaults, environment, validation.

    Returns the spec and the source to plan from. The embedder defaults to Gemini when GEMINI_API_KEY or
    GOOGLE_API_KEY is set, else the offline hashing embedder; Qdrant to $QDRANT_URL when set and no
    path is given, else Qdrant Edge in a folder beside the DuckDB file."""
    src = as_source(source, database=source_db)
    # A media record's text is its caption, and optional: text_column=None (or '') embeds the media alone.
    columns = Columns(
        id_column,
        None if text_template else (text_column or None),
        text_template,
        tuple(payload_columns),
        image_column or None,
        document_column or None,
    )
    kind = embedder or ("gemini" if api_key_from_env() else "hash")
    options = dict(embedder_options or {})
    model = model or options.pop("model", None)
    task_type = task_type or options.pop("task_type", None)
    embedder_spec = EmbedderSpec(kind, dimensions or 768, model, task_type, options)
    enrich_spec = EnrichSpec.from_dict(dict(enrich)) if isinstance(enrich, Mapping) else enrich
    spec = JobSpec(
        name=job or default_job_name(src, collection),
        collection=collection,
        source=source_identity(src),
        source_db=source_db,
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
    )
    return spec, src


def sink_spec(db: Path, qdrant_path: PathLike | None, qdrant_url: str | None) -> SinkSpec:
    url = qdrant_url or (None if qdrant_path else os.environ.get("QDRANT_URL"))
    if url:
        return SinkSpec(url=url)
    path = str(qdrant_path) if qdrant_path else default_qdrant_path(db)
    return SinkSpec(path=path if path == ":memory:" else str(Path(path).expanduser().resolve()))


def source_identity(source: Source) -> str:
    """How a spec names its source: a DataFrame by kind only (its rows are snapshotted at plan time, as a
    file's are), a file by its resolved path, a query by its text."""
    if isinstance(source, DataFrameSource):
        return "dataframe"
    if isinstance(source, FileSource):
        return str(source.path)
    if isinstance(source, SqlSource):
        return f"sql: {source.query}"
    return source.description


def default_job_name(source: Source, collection: str) -> str:
    """COLLECTION:SOURCE-STEM (`docs:records`), `COLLECTION:dataframe`, or `COLLECTION:sql-<hash>`."""
    if isinstance(source, DataFrameSource):
        return f"{collection}:dataframe"
    if isinstance(source, SqlSource):
        return f"{collection}:sql-{hashlib.sha1(source.query.encode()).hexdigest()[:8]}"
    if isinstance(source, FileSource):
        return f"{collection}:{source.path.stem}"
    return f"{collection}:{Path(source.description).stem}"
