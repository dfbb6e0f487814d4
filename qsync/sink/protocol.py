"""What every sink does, whichever Qdrant it writes to: the `Sink` protocol the runner, verification and search
call, and the check that refuses a collection whose vectors differ.

Writes are idempotent (point ids: spec.target.point_id). An upsert or a delete returns only once its points are
durable. The runner writes a batch's points with `write`, which may return before they are durable, and marks
batches done only after `durable` returned for them: one Qdrant Edge flush then covers many batches (a flush
costs ~10 ms plus ~4 ms per 100 points).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from qsync.embedders.protocol import Vectors
from qsync.errors import ConfigError


@dataclass(frozen=True)
class Hit:
    """One nearest neighbour: the point's id, its score under the collection's distance, its payload."""

    point_id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)


class Sink(Protocol):
    """The destination of one job: a collection, and which of its vectors the job writes."""

    collection: str
    dimensions: int

    def exists(self) -> bool:
        """Whether the collection is there (nothing is created)."""
        ...

    def ensure_collection(self) -> None:
        """Create the collection if missing; refuse one whose vectors differ in size or distance."""
        ...

    def write(self, record_ids: list[str], vectors: Vectors, payloads: list[dict[str, Any]]) -> int:
        """Write points (this sink's vector and the payload), maybe not yet durably: return a number for
        `durable`. A write that returned survives a crash of this process (not of the machine) until then."""
        ...

    def durable(self, written: int) -> None:
        """Return once the write numbered `written`, and every one before it, is durable."""
        ...

    def upsert(self, record_ids: list[str], vectors: Vectors, payloads: list[dict[str, Any]]) -> None:
        """`write`, then `durable`: returns once the points are durable."""
        ...

    def delete(self, point_ids: list[str]) -> None:
        """Delete points; returns once the deletion is durable."""
        ...

    def scan(self, page: int = 2000) -> Iterator[tuple[str, dict[str, Any], int | None]]:
        """Every point of the collection: (id, payload, size of this sink's vector or None if absent)."""
        ...

    def query(self, vector: np.ndarray | list[float], limit: int = 10) -> list[Hit]:
        """The nearest points to `vector` on this sink's vector, best first."""
        ...

    def close(self) -> None:
        """Let go of the collection (an embedded shard closes once no job of this process uses it)."""
        ...


@runtime_checkable
class OpensAhead(Protocol):
    """A sink whose collection takes long to open (a Qdrant Edge shard of millions of points: ~1.5 s; qdrant-client's
    import for in-memory Qdrant: ~0.6 s) and can start opening in the background while its caller does other work;
    its first use waits for it."""

    def open_soon(self) -> bool:
        """Start opening; True if ensure_collection is then local (waits at most for that), False for a server."""
        ...


def open_soon(sink: Sink) -> bool:
    """Start opening the sink's collection in the background, if it can (then True, and its ensure_collection is
    local, waiting at most for that load); else nothing (a server: False)."""
    return isinstance(sink, OpensAhead) and sink.open_soon()


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
