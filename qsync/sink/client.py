"""A Qdrant server or cluster by URL, or qdrant-client's in-memory Qdrant (":memory:"), through qdrant-client.

Every write waits for Qdrant's acknowledgement (wait=True). qdrant-client cannot add a named vector to an
existing collection, so a job whose vector name the collection lacks is refused here.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from qsync.embedders.protocol import Vectors
from qsync.errors import ConfigError, PermanentError, TransientError
from qsync.sink.protocol import Hit, mismatch
from qsync.spec.chunking import stale_chunk_fields
from qsync.spec.target import MEMORY, CollectionOptions, SinkSpec, point_id

if TYPE_CHECKING:  # qdrant-client takes half a second to import: `qsync status` should not pay it
    from qdrant_client import QdrantClient

# One in-memory Qdrant per process, shared by its jobs (a test runs a job, then reads what it wrote).
_memory: QdrantClient | None = None
_memory_lock = threading.Lock()


@atexit.register
def _close_memory() -> None:
    # Close before interpreter teardown, or qdrant-client's __del__ prints an ImportError at exit.
    global _memory
    with _memory_lock:
        if _memory is not None:
            with contextlib.suppress(Exception):
                _memory.close()
        _memory = None


def _memory_client() -> QdrantClient:
    global _memory
    from qdrant_client import QdrantClient

    with _memory_lock:
        if _memory is None:
            _memory = QdrantClient(location=MEMORY)
        return _memory


def _make_memory_client() -> None:
    with contextlib.suppress(Exception):  # told by the first use, which makes it again
        _memory_client()


class ClientSink:
    """A collection of a Qdrant server (by URL) or of qdrant-client's in-memory Qdrant."""

    def __init__(self, spec: SinkSpec, collection: str, dimensions: int, options: CollectionOptions) -> None:
        self.spec = spec
        self.collection = collection
        self.dimensions = dimensions
        self.options = options
        self._client: QdrantClient | None = None
        self._opening: threading.Thread | None = None
        # The in-memory mode is plain Python and not thread-safe; a server takes one call at a time per
        # sink well enough, since the runner's batches are large.
        self._lock = threading.Lock()

    def open_soon(self) -> bool:
        """In-memory Qdrant: import qdrant-client and make its client on a thread (~0.6 s of imports) while the job
        is planned, its main thread mostly waiting for the checkpoint file's host; True: ensure_collection is then
        local. A server: nothing (False), for its answer may take QDRANT_TIMEOUT_S and is asked for before planning.
        What fails on the thread is left to the first use, which tries again and says why."""
        if self.spec.path != MEMORY:
            return False
        if self._opening is None and self._client is None:
            self._opening = threading.Thread(target=_make_memory_client, name="qsync-qdrant-import", daemon=True)
            self._opening.start()
        return True

    @property
    def client(self) -> QdrantClient:
        opening = self._opening  # read once: another thread may be done with it and clear it meanwhile
        if opening is not None:
            opening.join()
            self._opening = None
        from qdrant_client import QdrantClient

        if self._client is None:
            if self.spec.path == MEMORY:
                self._client = _memory_client()
            else:
                self._client = QdrantClient(
                    url=self.spec.url,
                    api_key=os.environ.get("QDRANT_API_KEY") or None,
                    timeout=int(os.environ.get("QDRANT_TIMEOUT_S") or 30),
                )
        return self._client

    def _converted(self) -> _converted:
        return _converted(f"Qdrant at {self.spec.describe()}")

    def exists(self) -> bool:
        with self._lock, self._converted():
            return bool(self.client.collection_exists(self.collection))

    def ensure_collection(self) -> None:
        from qdrant_client import models

        distance = getattr(models.Distance, self.options.distance.upper())
        name = self.options.vector_name
        params: Any
        with self._lock, self._converted():
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
                existing = getattr(params, "distance", None)
                mismatch(
                    self.collection, getattr(params, "size", None), existing.value if existing else None,
                    self.dimensions, self.options.distance,
                )  # fmt: skip
            else:
                params = models.VectorParams(size=self.dimensions, distance=distance, on_disk=self.options.on_disk)
                config: Any = params
                if name:
                    config = {name: params}
                    for other, dims in self.options.extras():
                        config[other] = models.VectorParams(size=dims, distance=distance, on_disk=self.options.on_disk)
                self.client.create_collection(self.collection, vectors_config=config)
            for field, kind in self.options.indexes():
                self.client.create_payload_index(
                    self.collection, field_name=field, field_schema=models.PayloadSchemaType(kind)
                )

    def write(self, record_ids: list[str], vectors: Vectors, payloads: list[dict[str, Any]]) -> int:
        """Durable on return (wait=True): the server acknowledged it."""
        from qdrant_client import models

        name = self.options.vector_name
        ids = [point_id(rid) for rid in record_ids]
        rows = vectors.tolist()
        with self._lock, self._converted():
            existing: set[str] = set()
            if name is not None:
                # An upsert replaces a point whole; points that carry another model's vector keep it when
                # only this vector and the payload are updated.
                existing = {str(p.id) for p in self.client.retrieve(self.collection, ids, with_payload=False)}
            new = [
                models.PointStruct(id=pid, vector={name: vec} if name else vec, payload=payload)
                for pid, vec, payload in zip(ids, rows, payloads, strict=True)
                if pid not in existing
            ]
            if new:
                self.client.upsert(self.collection, points=new, wait=True)
            if existing:
                assert name is not None
                updates = [
                    models.PointVectors(id=pid, vector={name: vec})
                    for pid, vec in zip(ids, rows, strict=True)
                    if pid in existing
                ]
                self.client.update_vectors(self.collection, points=updates, wait=True)
                for pid, payload in zip(ids, payloads, strict=True):
                    if pid in existing:
                        if stale := stale_chunk_fields(payload):  # the payload merges: a chunk's fields must go
                            self.client.delete_payload(self.collection, keys=stale, points=[pid], wait=True)
                        self.client.set_payload(self.collection, payload=payload, points=[pid], wait=True)
        return 0

    def durable(self, written: int) -> None:
        """Every write returned acknowledged (wait=True): nothing to wait for."""

    def upsert(self, record_ids: list[str], vectors: Vectors, payloads: list[dict[str, Any]]) -> None:
        self.write(record_ids, vectors, payloads)

    def delete(self, point_ids: list[str]) -> None:
        from qdrant_client import models

        with self._lock, self._converted():
            self.client.delete(self.collection, points_selector=models.PointIdsList(points=list(point_ids)), wait=True)

    def scan(self, page: int = 2000) -> Iterator[tuple[str, dict[str, Any], int | None]]:
        name = self.options.vector_name
        offset = None
        while True:
            with self._lock, self._converted():
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

    def query(self, vector: np.ndarray | list[float], limit: int = 10) -> list[Hit]:
        query = vector.tolist() if isinstance(vector, np.ndarray) else list(vector)
        with self._lock, self._converted():
            points = self.client.query_points(
                self.collection, query=query, using=self.options.vector_name, limit=limit, with_payload=True
            ).points
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def close(self) -> None:
        """Let go of a server's client; the in-memory Qdrant lives as long as the process."""
        with self._lock:
            if self._client is not None and self.spec.path != MEMORY:
                with contextlib.suppress(Exception):
                    self._client.close()
            self._client = None


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
