"""A job's identity: what it reads and what it produces. Stored with the job; the same identity resumes the
job, a different one for an unfinished job is refused with each difference named (`differences`).

The budget sits beside it: stored with the job (the job's whole spend across resumes), and a new value given
on resume replaces it; `None` clears it, `KEEP` (the default) keeps it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Final, Literal

from qsync.catalog.models import multimodal
from qsync.errors import ConfigError
from qsync.spec.chunking import Chunking
from qsync.spec.columns import Columns
from qsync.spec.defaults import DEFAULT_BATCH_SIZE
from qsync.spec.embedder import EmbedderSpec
from qsync.spec.enrich import EnrichSpec
from qsync.spec.target import CollectionOptions, SinkSpec
from qsync.spec.target import target as target_of


class _Keep(Enum):
    KEEP = "keep"


KEEP: Final = _Keep.KEEP  # budget: keep what the job has stored (none for a new job)
BudgetOption = float | None | Literal[_Keep.KEEP]  # dollars, None (no cap) or KEEP


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
    batch_size: int = DEFAULT_BATCH_SIZE
    enrich: EnrichSpec | None = None
    batch_mode: bool = False
    incremental: bool = True  # a re-sync skips records the collection already holds unchanged
    delete_missing: bool = False  # a re-sync deletes points of records that left the source
    chunking: Chunking = field(default_factory=Chunking)  # long texts cut into chunks, a point each
    changed_since: str | None = None  # a re-sync reads only rows whose column is >= the last job's largest

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
        self.chunking.check_payload_columns(self.columns.payload_columns)

    def _check_media(self) -> None:
        """Media columns need a model that embeds media, and the paths that embed records one call at a time."""
        option = "--image-column" if self.columns.image_column else "--document-column"
        if self.embedder.kind != "gemini" or not multimodal(self.embedder.resolved_model):
            raise ConfigError(
                f"{option} needs a multimodal model: use --model gemini-embedding-2 "
                f"(not {self.embedder.resolved_model})"
            )
        if self.batch_mode:
            # Refused here, before anything is planned: qsync's Batch Mode stage submits the manifest's texts,
            # and a media record's text is only its caption, so it would embed captions alone.
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
        """What the ledger calls the destination (spec.target.target)."""
        return target_of(self.sink, self.collection, self.collection_options.vector_name)

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
            "read rows changed since": self.changed_since,
            **self.chunking.identity(),
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
            "chunking": self.chunking.to_dict(),
            "changed_since": self.changed_since,
        }

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        job_id: str = "",
        collection: str = "",
        source: str = "",
        base: Path | None = None,
    ) -> JobSpec:
        """A stored spec; jobs planned before specs existed kept a looser config, read here too. `base`: the folder
        of the checkpoint file, which a Qdrant folder inside it is relative to."""
        return cls(
            name=str(data.get("name") or base_name(job_id)),
            collection=str(data.get("collection") or collection),
            source=str(data.get("source") or source),
            source_db=data.get("source_db"),
            columns=Columns.from_dict(data.get("columns") or {}),
            embedder=EmbedderSpec.from_dict(data["embedder"]),
            sink=SinkSpec.from_dict(data["sink"], base),
            collection_options=CollectionOptions.from_dict(data.get("collection_options")),
            batch_size=int(data.get("batch_size") or DEFAULT_BATCH_SIZE),
            enrich=EnrichSpec.from_dict(data["enrich"]) if data.get("enrich") else None,
            batch_mode=bool(data.get("batch_mode")),
            incremental=bool(data.get("incremental", True)),
            delete_missing=bool(data.get("delete_missing")),
            chunking=Chunking.from_dict(data.get("chunking")),
            changed_since=data.get("changed_since"),
        )


def differences(stored: JobSpec, given: JobSpec) -> list[str]:
    """Each field in which `given` differs from `stored`, as 'field: stored X, given Y'."""
    old, new = stored.identity(), given.identity()
    return [
        f"{key}: stored {old.get(key)!r}, given {new.get(key)!r}"
        for key in dict.fromkeys([*old, *new])
        if old.get(key) != new.get(key)
    ]


# What may differ between two jobs without changing what any record becomes (its text, vector, payload, point):
# a job may then start reading where the other stopped (--changed-since).
_HOW_NOT_WHAT = {"batch size", "Batch Mode", "re-sync unchanged records", "delete records that left the source",
                 "read rows changed since", "vectors on disk", "payload indexes", "extra vectors"}  # fmt: skip


def content_differences(stored: JobSpec, given: JobSpec) -> list[str]:
    """The differences (`differences`) that change what records become: another model, source, columns, collection…"""
    return [d for d in differences(stored, given) if d.split(":", 1)[0] not in _HOW_NOT_WHAT]


def base_name(job_id: str) -> str:
    """NAME of NAME#3."""
    return job_id.split("#", 1)[0]


def resync_number(job_id: str) -> int:
    """3 of NAME#3; 1 of NAME."""
    _, _, n = job_id.partition("#")
    return int(n) if n.isdigit() else 1
