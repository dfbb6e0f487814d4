"""Qdrant as the destination: embedded local mode in a folder (default), in memory, or a server by URL.

Writes are idempotent: a point's id is the UUIDv5 of its record id in POINT_ID_NAMESPACE, so replaying a
batch after a crash overwrites the same points with the same vectors instead of adding copies.
Every upsert waits for Qdrant's acknowledgement (wait=True): the runner marks a batch done only after it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sqlite3
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .embedders.base import Vectors
from .errors import ConfigError, PermanentError, TransientError

if TYPE_CHECKING:  # qdrant-client takes half a second to import: `qsync status` should not pay it
    from qdrant_client import QdrantClient

# Fixed forever: changing it would re-key every point ever written. Compute an id elsewhere with
# uuid.uuid5(uuid.UUID("3b0e1c52-8f0a-4c44-9a3e-7d2b8f6a1e90"), str(record_id)).
POINT_ID_NAMESPACE = uuid.UUID("3b0e1c52-8f0a-4c44-9a3e-7d2b8f6a1e90")


def point_id(record_id: str) -> str:
    return str(uuid.uuid5(POINT_ID_NAMESPACE, record_id))


@dataclass(frozen=True)
class SinkSpec:
    """Where points go. The server's API key is read from QDRANT_API_KEY, never stored."""

    path: str | None = None  # a folder for local mode, or ":memory:"
    url: str | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.url is None):
            raise ConfigError("give exactly one of a Qdrant path (local mode) or a Qdrant URL")

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "url": self.url}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SinkSpec:
        return cls(path=data.get("path"), url=data.get("url"))

    def describe(self) -> str:
        return self.url or f"local:{self.path}"


# Local mode locks its folder for the life of the client; one client per folder per process lets two
# jobs in one notebook share it (and `:memory:` is one in-memory Qdrant per process).
_local_clients: dict[str, QdrantClient] = {}
_local_users: Counter[str] = Counter()
_local_lock = threading.Lock()


@atexit.register
def _close_local_clients() -> None:
    # Close before interpreter teardown, or qdrant-client's __del__ prints an ImportError at exit.
    with _local_lock:
        for client in _local_clients.values():
            with contextlib.suppress(Exception):
                client.close()
        _local_clients.clear()
        _local_users.clear()


def _acquire_local(path: str) -> tuple[str, QdrantClient]:
    """Open (or share) the local-mode client for a folder; release it when done so the folder is free
    for other processes between jobs: a notebook that ran a job must not lock the CLI out."""
    from qdrant_client import QdrantClient

    key = path if path == ":memory:" else str(Path(path).resolve())
    with _local_lock:
        client = _local_clients.get(key)
        if client is None and key == ":memory:":  # one in-memory Qdrant per process, shared by its jobs
            client = QdrantClient(location=":memory:")
        if client is None:
            Path(key).mkdir(parents=True, exist_ok=True)
            try:
                client = QdrantClient(path=key, force_disable_check_same_thread=True)
            except RuntimeError as exc:
                if "already accessed" in str(exc):
                    raise TransientError(
                        f"the Qdrant folder {key} is in use by another process (local mode allows one); "
                        "stop it, or use a Qdrant server with --qdrant-url"
                    ) from None
                raise
        _local_clients[key] = client
        _local_users[key] += 1
        return key, client


def _release_local(key: str) -> None:
    with _local_lock:
        _local_users[key] -= 1
        if _local_users[key] <= 0 and key != ":memory:" and key in _local_clients:
            del _local_users[key]
            with contextlib.suppress(Exception):
                _local_clients.pop(key).close()


def _local_client(path: str) -> QdrantClient:
    """The local-mode client for a folder, kept open for the life of the process (tests, the demo)."""
    return _acquire_local(path)[1]


@dataclass(frozen=True)
class CollectionOptions:
    """How a collection is created; an existing one must match distance and size (checked, never changed)."""

    distance: str = "cosine"  # cosine | dot | euclid | manhattan
    on_disk: bool = False  # keep vectors on disk (memmap) instead of in RAM
    payload_indexes: tuple[str, ...] = ()  # "column" (keyword) or "column:integer|float|bool|keyword|text"
    vector_name: str | None = None  # a named vector, e.g. one per model; None: the unnamed vector
    # More named vectors to create with the collection ("name:dims"), for the other models that will share
    # its points: Qdrant cannot add a named vector to an existing collection.
    extra_vectors: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.distance.lower() not in _DISTANCES:
            raise ConfigError(f"unknown distance {self.distance!r}; use one of {', '.join(_DISTANCES)}")
        if self.extra_vectors and not self.vector_name:
            raise ConfigError("extra named vectors need --vector-name for this job's own vector")
        for spec in self.extra_vectors:
            name, _, dims = spec.partition(":")
            if not name or not dims.isdigit():
                raise ConfigError(f"extra vector {spec!r} should read NAME:DIMENSIONS, e.g. gemini:768")
        for spec in self.payload_indexes:
            kind = spec.partition(":")[2] or "keyword"
            if kind not in _INDEX_TYPES:
                raise ConfigError(f"unknown payload index type {kind!r}; use one of {', '.join(_INDEX_TYPES)}")

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


_DISTANCES = ("cosine", "dot", "euclid", "manhattan")
_INDEX_TYPES = ("keyword", "integer", "float", "bool", "text", "uuid", "datetime")


class QdrantSink:
    def __init__(
        self, spec: SinkSpec, collection: str, dimensions: int, options: CollectionOptions | None = None
    ) -> None:
        self.spec = spec
        self.collection = collection
        self.dimensions = dimensions
        self.options = options or CollectionOptions()
        self._client: QdrantClient | None = None
        self._local_key: str | None = None
        # Local mode is plain Python over SQLite: serialise calls into it.
        self._lock = threading.Lock()

    @property
    def client(self) -> QdrantClient:
        from qdrant_client import QdrantClient

        if self._client is None:
            if self.spec.path is not None:
                self._local_key, self._client = _acquire_local(self.spec.path)
            else:
                self._client = QdrantClient(
                    url=self.spec.url,
                    api_key=os.environ.get("QDRANT_API_KEY") or None,
                    timeout=int(os.environ.get("QDRANT_TIMEOUT_S") or 30),
                )
        return self._client

    @property
    def target(self) -> str:
        """What the ledger calls this destination: where, which collection, which vector."""
        return f"{self.spec.describe()}|{self.collection}|{self.options.vector_name or ''}"

    def ensure_collection(self) -> None:
        """Create the collection if missing; refuse one whose vectors differ in size or distance."""
        from qdrant_client import models

        distance = getattr(models.Distance, self.options.distance.upper())
        name = self.options.vector_name
        params: Any
        with self._lock, _converted(f"Qdrant at {self.spec.describe()}"):
            if self.client.collection_exists(self.collection):
                vectors = self.client.get_collection(self.collection).config.params.vectors
                if isinstance(vectors, dict):
                    if name not in vectors:
                        raise ConfigError(
                            f"collection {self.collection!r} has the named vectors {', '.join(map(repr, vectors))} "
                            f"but not {name!r}, and Qdrant cannot add one to an existing collection; use "
                            f"--vector-name with one of those, or another collection"
                        )
                    params = vectors[name]
                elif name is not None:
                    raise ConfigError(
                        f"collection {self.collection!r} has one unnamed vector; drop --vector-name to write it"
                    )
                else:
                    params = vectors
                size, existing = getattr(params, "size", None), getattr(params, "distance", None)
                if size != self.dimensions:
                    raise ConfigError(
                        f"collection {self.collection!r} holds vectors of size {size}, but this job makes "
                        f"{self.dimensions}; use another collection or --dimensions {size}"
                    )
                if existing is not None and existing != distance:
                    raise ConfigError(
                        f"collection {self.collection!r} uses {existing.value} distance, but this job asks for "
                        f"{distance.value}; use another collection or --distance {existing.value.lower()}"
                    )
            else:
                params = models.VectorParams(size=self.dimensions, distance=distance, on_disk=self.options.on_disk)
                config: Any = params
                if name:
                    config = {name: params}
                    for extra in self.options.extra_vectors:
                        other, _, dims = extra.partition(":")
                        config[other] = models.VectorParams(
                            size=int(dims), distance=distance, on_disk=self.options.on_disk
                        )
                self.client.create_collection(self.collection, vectors_config=config)
            for spec in self.options.payload_indexes:
                field, _, kind = spec.partition(":")
                self.client.create_payload_index(
                    self.collection, field_name=field, field_schema=models.PayloadSchemaType(kind or "keyword")
                )

    def upsert(self, record_ids: list[str], vectors: Vectors, payloads: list[dict[str, Any]]) -> None:
        from qdrant_client import models

        name = self.options.vector_name
        ids = [point_id(rid) for rid in record_ids]
        with self._lock, _converted(f"Qdrant at {self.spec.describe()}"):
            existing: set[str] = set()
            if name is not None:
                # An upsert replaces a point whole; points that carry another model's vector keep it when
                # only this vector and the payload are updated.
                existing = {str(p.id) for p in self.client.retrieve(self.collection, ids, with_payload=False)}
            new = [
                models.PointStruct(id=pid, vector={name: vec.tolist()} if name else vec.tolist(), payload=payload)
                for pid, vec, payload in zip(ids, vectors, payloads, strict=True)
                if pid not in existing
            ]
            if new:
                self.client.upsert(self.collection, points=new, wait=True)
            if existing:
                assert name is not None
                updates = [
                    models.PointVectors(id=pid, vector={name: vec.tolist()})
                    for pid, vec in zip(ids, vectors, strict=True)
                    if pid in existing
                ]
                self.client.update_vectors(self.collection, points=updates, wait=True)
                for pid, payload in zip(ids, payloads, strict=True):
                    if pid in existing:
                        self.client.set_payload(self.collection, payload=payload, points=[pid], wait=True)

    def close(self) -> None:
        """Let go of the client; a local folder is closed once no job of this process uses it."""
        with self._lock:
            if self._local_key is not None:
                _release_local(self._local_key)
            elif self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.close()
            self._client, self._local_key = None, None

    def delete(self, point_ids: list[str]) -> None:
        from qdrant_client import models

        with self._lock, _converted(f"Qdrant at {self.spec.describe()}"):
            self.client.delete(self.collection, points_selector=models.PointIdsList(points=list(point_ids)), wait=True)

    def scan(self, page: int = 2000) -> Iterator[tuple[str, dict[str, Any], int | None]]:
        """Every point of the collection: (id, payload, size of this sink's vector or None if absent)."""
        name = self.options.vector_name
        offset = None
        while True:
            with self._lock, _converted(f"Qdrant at {self.spec.describe()}"):
                points, offset = self.client.scroll(
                    self.collection, limit=page, offset=offset, with_payload=True,
                    with_vectors=[name] if name else True,
                )  # fmt: skip
            for p in points:
                vector = p.vector.get(name) if isinstance(p.vector, dict) and name else p.vector
                size = len(vector) if isinstance(vector, list) else None
                yield str(p.id), dict(p.payload or {}), size
            if offset is None:
                return


class _converted:
    """Turn qdrant-client and transport errors into TransientError / PermanentError."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None or isinstance(exc, (TransientError, PermanentError)):
            return
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        if isinstance(exc, UnexpectedResponse):
            code = exc.status_code or 0
            message = f"{self.what} answered {code}: {exc.reason_phrase}"
            if code == 429 or code >= 500:
                raise TransientError(message) from exc
            raise PermanentError(message) from exc
        if isinstance(exc, (ResponseHandlingException, ConnectionError, TimeoutError)):
            raise TransientError(f"{self.what} is unreachable: {exc}") from exc
        if isinstance(exc, (sqlite3.Error, OSError)):  # local mode's storage: a full disk, a lost folder
            raise TransientError(f"{self.what} could not write its storage (is the disk full?): {exc}") from exc
