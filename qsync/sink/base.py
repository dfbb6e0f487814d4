"""What every sink shares: where points go (SinkSpec), how a collection is made (CollectionOptions), point ids,
and QdrantSink, the interface the runner and verification call, which picks its backend from the spec.

Writes are idempotent: a point's id is the UUIDv5 of its record id in POINT_ID_NAMESPACE, so replaying a
batch after a crash overwrites the same points with the same vectors instead of adding copies.
An upsert or a delete returns only once its points are durable. The runner writes a batch's points with
`write`, which may return before they are durable, and marks batches done only after `durable` returned for
them: one Qdrant Edge flush then covers many batches (a flush costs ~10 ms plus ~4 ms per 100 points).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..embedders.base import Vectors
from ..errors import ConfigError

# Fixed forever: changing it would re-key every point ever written. Compute an id elsewhere with
# uuid.uuid5(uuid.UUID("3b0e1c52-8f0a-4c44-9a3e-7d2b8f6a1e90"), str(record_id)).
POINT_ID_NAMESPACE = uuid.UUID("3b0e1c52-8f0a-4c44-9a3e-7d2b8f6a1e90")

MEMORY = ":memory:"


def point_id(record_id: str) -> str:
    return str(uuid.uuid5(POINT_ID_NAMESPACE, record_id))


@dataclass(frozen=True)
class SinkSpec:
    """Where points go. The server's API key is read from QDRANT_API_KEY, never stored."""

    path: str | None = None  # a folder of Qdrant Edge shards, or ":memory:"
    url: str | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.url is None):
            raise ConfigError("give exactly one of a Qdrant path (a local folder) or a Qdrant URL")

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "url": self.url}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SinkSpec:
        return cls(path=data.get("path"), url=data.get("url"))

    def describe(self) -> str:
        # Part of every job's target in the ledger: changing it would make resumed jobs re-embed.
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


DISTANCES = ("cosine", "dot", "euclid", "manhattan")
INDEX_TYPES = ("keyword", "integer", "float", "bool", "text", "uuid", "datetime")


@dataclass(frozen=True)
class Hit:
    """One nearest neighbour: the point's id, its score under the collection's distance, its payload."""

    point_id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)


def mismatch(collection: str, size: int | None, distance: str | None, dimensions: int, wanted: str) -> None:
    """Refuse an existing collection whose vector differs in size or distance (distance as Qdrant spells it)."""
    if size != dimensions:
        raise ConfigError(
            f"collection {collection!r} holds vectors of size {size}, but this job makes "
            f"{dimensions}; use another collection or --dimensions {size}"
        )
    if distance is not None and distance.lower() != wanted.lower():
        raise ConfigError(
            f"collection {collection!r} uses {distance} distance, but this job asks for "
            f"{wanted.capitalize()}; use another collection or --distance {distance.lower()}"
        )


class QdrantSink:
    """The destination of one job: a collection, and which of its vectors the job writes.

    `QdrantSink(spec, ...)` returns the backend that fits the spec: Qdrant Edge in-process for a folder
    (EdgeSink), qdrant-client for a server URL or ":memory:" (ClientSink). Both take the same calls.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> QdrantSink:
        # Subclasses (a backend, or a test's wrapper of one) are built as they are; only QdrantSink(...)
        # itself dispatches on the spec.
        if cls is QdrantSink:
            spec: SinkSpec = kwargs["spec"] if "spec" in kwargs else args[0]
            if spec.url is not None or spec.path == MEMORY:
                from .client import ClientSink

                return super().__new__(ClientSink)
            from .edge import EdgeSink

            return super().__new__(EdgeSink)
        return super().__new__(cls)

    def __init__(
        self, spec: SinkSpec, collection: str, dimensions: int, options: CollectionOptions | None = None
    ) -> None:
        self.spec = spec
        self.collection = collection
        self.dimensions = dimensions
        self.options = options or CollectionOptions()

    @property
    def target(self) -> str:
        """What the ledger calls this destination: where, which collection, which vector."""
        return f"{self.spec.describe()}|{self.collection}|{self.options.vector_name or ''}"

    def ensure_collection(self) -> None:
        """Create the collection if missing; refuse one whose vectors differ in size or distance."""
        raise NotImplementedError

    def upsert(self, record_ids: list[str], vectors: Vectors, payloads: list[dict[str, Any]]) -> None:
        """Write points (this sink's vector and the payload); returns once they are durable."""
        self.durable(self.write(record_ids, vectors, payloads))

    def write(self, record_ids: list[str], vectors: Vectors, payloads: list[dict[str, Any]]) -> int:
        """Write points as `upsert` does, but return before they are durable: a number to give `durable`.
        A write that returned survives a crash of this process (not of the machine) until then."""
        raise NotImplementedError

    def durable(self, written: int) -> None:
        """Return once the write numbered `written`, and every one before it, is durable."""
        raise NotImplementedError

    def delete(self, point_ids: list[str]) -> None:
        raise NotImplementedError

    def scan(self, page: int = 2000) -> Iterator[tuple[str, dict[str, Any], int | None]]:
        """Every point of the collection: (id, payload, size of this sink's vector or None if absent)."""
        raise NotImplementedError

    def query(self, vector: np.ndarray | list[float], limit: int = 10) -> list[Hit]:
        """The nearest points to `vector` on this sink's vector, best first."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError
