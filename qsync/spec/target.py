"""Where a job's points go (`SinkSpec`), how a new collection is made (`CollectionOptions`), what the ledger
calls that destination (`target`), and each point's id (`point_id`).

Point ids are the UUIDv5 of the record id in POINT_ID_NAMESPACE, so replaying a batch after a crash overwrites
the same points instead of adding copies.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from qsync.errors import ConfigError

# Fixed forever: changing it would re-key every point ever written. Compute an id elsewhere with
# uuid.uuid5(uuid.UUID("3b0e1c52-8f0a-4c44-9a3e-7d2b8f6a1e90"), str(record_id)).
POINT_ID_NAMESPACE: Final = uuid.UUID("3b0e1c52-8f0a-4c44-9a3e-7d2b8f6a1e90")
MEMORY: Final = ":memory:"
DISTANCES: Final = ("cosine", "dot", "euclid", "manhattan")
INDEX_TYPES: Final = ("keyword", "integer", "float", "bool", "text", "uuid", "datetime")


def point_id(record_id: str) -> str:
    """The Qdrant point id of a record."""
    return str(uuid.uuid5(POINT_ID_NAMESPACE, record_id))


@dataclass(frozen=True)
class SinkSpec:
    """Where points go: a folder of Qdrant Edge shards, ":memory:", or a Qdrant server by URL. The server's
    API key is read from QDRANT_API_KEY, never stored."""

    path: str | None = None
    url: str | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.url is None):
            raise ConfigError("give exactly one of a Qdrant path (a local folder) or a Qdrant URL")

    @property
    def in_memory(self) -> bool:
        return self.path == MEMORY

    @property
    def embedded(self) -> bool:
        """Qdrant Edge in this process (a folder of shards)."""
        return self.path is not None and not self.in_memory

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "url": self.url}

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path | None = None) -> SinkSpec:
        """A stored sink; with `base` (the checkpoint file's folder), a folder inside it stored by an older qsync as
        an absolute path reads as relative, as new jobs store it."""
        spec = cls(path=data.get("path"), url=data.get("url"))
        return spec.relative_to(base) if base is not None else spec

    def relative_to(self, base: Path) -> SinkSpec:
        """The same sink, its folder named relative to `base` when it is inside it: the checkpoint file and its
        Qdrant folder can then move together (a job stores its Qdrant folder this way)."""
        if not self.embedded or self.path is None or not Path(self.path).is_absolute():
            return self
        try:
            return SinkSpec(path=str(Path(self.path).relative_to(base)))
        except ValueError:
            return self

    def resolved(self, base: Path) -> SinkSpec:
        """The same sink, its folder as an absolute path (a relative one is relative to `base`)."""
        if not self.embedded or self.path is None or Path(self.path).is_absolute():
            return self
        return SinkSpec(path=str(base / self.path))

    def describe(self) -> str:
        # Part of every job's target in the ledger: changing it would make resumed jobs rewrite their points.
        return self.url or f"local:{self.path}"


@dataclass(frozen=True)
class CollectionOptions:
    """How a collection is created; an existing one must match distance and size (checked, never changed)."""

    distance: str = "cosine"  # cosine | dot | euclid | manhattan
    on_disk: bool = False  # keep vectors on disk (memmap) instead of in RAM
    payload_indexes: tuple[str, ...] = ()  # "column" (keyword) or "column:integer|float|bool|keyword|text"
    vector_name: str | None = None  # a named vector, e.g. one per model; None: the unnamed vector
    # More named vectors to create with the collection ("name:dims"), for the other models that will share
    # its points. Qdrant Edge can add one later too; a Qdrant server (through qdrant-client) cannot.
    extra_vectors: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.distance.lower() not in DISTANCES:
            raise ConfigError(f"unknown distance {self.distance!r}; use one of {', '.join(DISTANCES)}")
        if self.extra_vectors and not self.vector_name:
            raise ConfigError("extra named vectors need --vector-name for this job's own vector")
        for spec in self.extra_vectors:
            name, _, dims = spec.partition(":")
            if not name or not dims.isdigit():
                raise ConfigError(f"extra vector {spec!r} should read NAME:DIMENSIONS, e.g. gemini:768")
        for spec in self.payload_indexes:
            kind = spec.partition(":")[2] or "keyword"
            if kind not in INDEX_TYPES:
                raise ConfigError(f"unknown payload index type {kind!r}; use one of {', '.join(INDEX_TYPES)}")

    def extras(self) -> list[tuple[str, int]]:
        return [(name, int(dims)) for name, _, dims in (spec.partition(":") for spec in self.extra_vectors)]

    def indexes(self) -> list[tuple[str, str]]:
        return [(name, kind or "keyword") for name, _, kind in (spec.partition(":") for spec in self.payload_indexes)]

    def to_dict(self) -> dict[str, Any]:
        return {"distance": self.distance, "on_disk": self.on_disk, "payload_indexes": list(self.payload_indexes),
                "vector_name": self.vector_name, "extra_vectors": list(self.extra_vectors)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> CollectionOptions:
        data = data or {}
        return cls(
            distance=data.get("distance", "cosine"),
            on_disk=bool(data.get("on_disk", False)),
            payload_indexes=tuple(data.get("payload_indexes") or ()),
            vector_name=data.get("vector_name"),
            extra_vectors=tuple(data.get("extra_vectors") or ()),
        )


def target(sink: SinkSpec, collection: str, vector_name: str | None) -> str:
    """What the ledger calls a destination: where, which collection, which vector. The `points` table is
    keyed by it, so that a re-sync knows what the collection already holds."""
    return f"{sink.describe()}|{collection}|{vector_name or ''}"
