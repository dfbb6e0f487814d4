"""Qdrant as the destination: embedded local mode in a folder (default), in memory, or a server by URL.

Writes are idempotent: a point's id is the UUIDv5 of its record id in POINT_ID_NAMESPACE, so replaying a
batch after a crash overwrites the same points with the same vectors instead of adding copies.
Every upsert waits for Qdrant's acknowledgement (wait=True): the runner marks a batch done only after it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import uuid
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
# jobs in one notebook share it.
_local_clients: dict[str, QdrantClient] = {}
_local_lock = threading.Lock()


@atexit.register
def _close_local_clients() -> None:
    # Close before interpreter teardown, or qdrant-client's __del__ prints an ImportError at exit.
    with _local_lock:
        for client in _local_clients.values():
            with contextlib.suppress(Exception):
                client.close()
        _local_clients.clear()


def _local_client(path: str) -> QdrantClient:
    from qdrant_client import QdrantClient

    if path == ":memory:":
        return QdrantClient(location=":memory:")
    key = str(Path(path).resolve())
    with _local_lock:
        client = _local_clients.get(key)
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
        return client


class QdrantSink:
    def __init__(self, spec: SinkSpec, collection: str, dimensions: int) -> None:
        self.spec = spec
        self.collection = collection
        self.dimensions = dimensions
        self._client: QdrantClient | None = None
        # Local mode is plain Python over SQLite: serialise calls into it.
        self._lock = threading.Lock()

    @property
    def client(self) -> QdrantClient:
        from qdrant_client import QdrantClient

        if self._client is None:
            if self.spec.path is not None:
                self._client = _local_client(self.spec.path)
            else:
                self._client = QdrantClient(
                    url=self.spec.url, api_key=os.environ.get("QDRANT_API_KEY") or None, timeout=30
                )
        return self._client

    def ensure_collection(self) -> None:
        """Create the collection if missing; refuse one whose vectors have another size."""
        from qdrant_client import models

        with self._lock, _converted(f"Qdrant at {self.spec.describe()}"):
            if self.client.collection_exists(self.collection):
                vectors = self.client.get_collection(self.collection).config.params.vectors
                size = getattr(vectors, "size", None)
                if size != self.dimensions:
                    raise ConfigError(
                        f"collection {self.collection!r} holds vectors of size {size}, but this job makes "
                        f"{self.dimensions}; use another collection or --dimensions {size}"
                    )
                return
            self.client.create_collection(
                self.collection,
                vectors_config=models.VectorParams(size=self.dimensions, distance=models.Distance.COSINE),
            )

    def upsert(self, record_ids: list[str], vectors: Vectors, payloads: list[dict[str, Any]]) -> None:
        from qdrant_client import models

        points = [
            models.PointStruct(id=point_id(rid), vector=vec.tolist(), payload=payload)
            for rid, vec, payload in zip(record_ids, vectors, payloads, strict=True)
        ]
        with self._lock, _converted(f"Qdrant at {self.spec.describe()}"):
            self.client.upsert(self.collection, points=points, wait=True)


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
        if isinstance(exc, (ResponseHandlingException, ConnectionError, TimeoutError, OSError)):
            raise TransientError(f"{self.what} is unreachable: {exc}") from exc
