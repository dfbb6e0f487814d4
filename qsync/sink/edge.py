"""Qdrant Edge, Qdrant's own engine, the embedded default: one shard per collection, in `<qdrant_path>/<collection>/`,
held by a process of its own (shards.py, edge_host.py).

An upsert or delete returns once it is flushed (Edge fsyncs only on flush); concurrent writers share flushes (see
shards.SharedShard). Unlike a server, a shard can gain a named vector after creation, so a job whose vector name an
existing collection lacks adds it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from qsync.embedders.protocol import Vectors
from qsync.errors import ConfigError
from qsync.sink import shards
from qsync.sink.protocol import Hit, mismatch
from qsync.spec.chunking import stale_chunk_fields
from qsync.spec.target import CollectionOptions, SinkSpec, point_id


class EdgeSink:
    """A collection as one Qdrant Edge shard, `<qdrant_path>/<collection>/`."""

    def __init__(self, spec: SinkSpec, collection: str, dimensions: int, options: CollectionOptions) -> None:
        self.spec = spec
        self.collection = collection
        self.dimensions = dimensions
        self.options = options
        if not collection or collection in {".", ".."} or any(c in collection for c in "/\\\0"):
            raise ConfigError(f"collection {collection!r} cannot name a folder; use letters, digits, '-' or '_'")
        assert spec.path is not None
        self.root = Path(spec.path).expanduser()
        self.shard_path = self.root / collection
        self._shared: shards.SharedShard | None = None
        self._lock = threading.Lock()
        self._opening: threading.Thread | None = None

    def open_soon(self) -> bool:
        """Load an existing shard in the background (its host process reads it: ~1.5 s at 2M points), e.g. while a
        job is planned; the first use waits for it. A load that fails is left to that use, which tries again and
        reports why. A shard not there yet is not created here: that is ensure_collection's."""
        try:
            refuse_old_format(self.root)
        except ConfigError:  # told by the first use
            return True
        with self._lock:
            if self._shared is None and self._opening is None and shards.exists(self.shard_path):
                self._opening = threading.Thread(target=self._load_ahead, name="qsync-edge-open", daemon=True)
                self._opening.start()
        return True

    def _load_ahead(self) -> None:
        try:
            shared = shards.acquire(self.shard_path)
        except Exception:  # told by the first use, which opens it again
            return
        with self._lock:
            self._shared = shared

    def _waited(self) -> None:
        opening = self._opening
        if opening is not None:
            opening.join()
            self._opening = None

    def _open(self, new_config: dict[str, Any] | None = None) -> shards.SharedShard:
        self._waited()
        with self._lock:
            if self._shared is None:
                refuse_old_format(self.root)
                self._shared = shards.acquire(self.shard_path, new_config)
            return self._shared

    def exists(self) -> bool:
        return self._shared is not None or shards.exists(self.shard_path)

    def ensure_collection(self) -> None:
        shared = self._open(self._new_config())
        name = self.options.vector_name
        with shared.write_lock:
            vectors: dict[str, dict[str, Any]] = _stored_config(shared.path).get("vectors", {})
            seq = 0
            if (name or "") in vectors:
                params = vectors[name or ""]
                mismatch(self.collection, params.get("size"), params.get("distance"), self.dimensions,
                         self.options.distance)  # fmt: skip
            elif name is None:
                raise ConfigError(
                    f"collection {self.collection!r} has only the named vectors {', '.join(map(repr, vectors))}; "
                    f"use --vector-name with one of those (or a new name to add it), or another collection"
                )
            else:
                seq = shared.update(0, "create_dense_vector", name, self.dimensions, self.options.distance)
            indexed = set(shared.call("payload_schema"))
            for field, kind in self.options.indexes():
                if field not in indexed:
                    seq = shared.update(0, "create_field_index", field, kind)
        shared.durable(seq)

    def _new_config(self) -> dict[str, Any]:
        """Vector name -> (dimensions, distance, on disk) of a new shard ("" for the unnamed vector)."""
        distance, on_disk = self.options.distance, self.options.on_disk
        name = self.options.vector_name
        if not name:
            return {"": (self.dimensions, distance, on_disk)}
        named = {name: (self.dimensions, distance, on_disk)}
        for other, dims in self.options.extras():
            named[other] = (dims, distance, on_disk)
        return named

    def write(self, record_ids: list[str], vectors: Vectors, payloads: list[dict[str, Any]]) -> int:
        name = self.options.vector_name
        ids = [point_id(rid) for rid in record_ids]
        shared = self._open()
        with shared.write_lock:
            existing: set[str] = set()
            if name is not None:
                # An upsert replaces a point whole; points that carry another model's vector keep it when only this
                # vector and the payload are updated.
                existing = set(shared.call("retrieve_ids", ids))
            new = [i for i, pid in enumerate(ids) if pid not in existing]
            seq = 0
            if new:
                seq = shared.upsert([ids[i] for i in new], name, vectors[new], [payloads[i] for i in new])
            if existing:
                assert name is not None
                old = [i for i, pid in enumerate(ids) if pid in existing]
                size = int(len(old) * vectors.shape[1] * 4 * 2.4)
                seq = shared.update(size, "update_vectors", [ids[i] for i in old], name,
                                    np.ascontiguousarray(vectors[old], dtype=np.float32))  # fmt: skip
                for i in old:
                    if stale := stale_chunk_fields(payloads[i]):  # the payload merges: a chunk's fields must go
                        shared.update(0, "delete_payload", ids[i], stale)
                    seq = shared.update(len(json.dumps(payloads[i], default=str)), "set_payload", ids[i], payloads[i])
        return seq

    def durable(self, written: int) -> None:
        self._open().durable(written)

    def upsert(self, record_ids: list[str], vectors: Vectors, payloads: list[dict[str, Any]]) -> None:
        self.durable(self.write(record_ids, vectors, payloads))

    def delete(self, point_ids: list[str]) -> None:
        shared = self._open()
        shared.durable(shared.update(0, "delete", list(point_ids)))

    def scan(self, page: int = 2000) -> Iterator[tuple[str, dict[str, Any], int | None]]:
        for point, payload, vector in self._open().scroll(self.options.vector_name or "", page):
            yield point, payload, len(vector) if isinstance(vector, list) else None

    def query(self, vector: np.ndarray | list[float], limit: int = 10) -> list[Hit]:
        values = vector.tolist() if isinstance(vector, np.ndarray) else list(vector)
        found = self._open().call("query", values, limit, self.options.vector_name)
        return [Hit(point, score, payload) for point, score, payload in found]

    def close(self) -> None:
        """Let go of the shard; it closes once no job of this process uses it."""
        self._waited()
        with self._lock:
            if self._shared is not None:
                shards.release(self._shared)
            self._shared = None


def refuse_old_format(root: Path) -> None:
    """Folders written by qdrant-client's local mode (qsync before Qdrant Edge) cannot be opened by Edge."""
    if (root / "meta.json").is_file() or (root / "collection").is_dir():
        raise ConfigError(
            f"{root} is a Qdrant folder in the old format (qdrant-client's local mode, written by an earlier "
            "qsync), which Qdrant Edge cannot open. To move: re-run the same job with a new --qdrant-path; "
            "its vectors come from the embedding cache (0 API calls). The old folder stays readable with "
            f"qdrant_client.QdrantClient(path={str(root)!r}), e.g. to compare before deleting it."
        )


def _stored_config(path: Path) -> dict[str, Any]:
    # EdgeShard has no getter for its vector config; this file is the shard's own record of it.
    try:
        config: dict[str, Any] = json.loads((path / shards.CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the Qdrant Edge shard's config {path / shards.CONFIG_FILE}: {exc}") from exc
    return config
