"""Qdrant Edge, Qdrant's own engine in-process: the embedded default. One shard per collection, in
`<qdrant_path>/<collection>/`.

An upsert or delete returns once it is flushed (Edge fsyncs only on flush); concurrent writers share
flushes (see shards.SharedShard). Unlike a server, a shard can gain a named vector after creation, so a
job whose vector name an existing collection lacks adds it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..embedders.base import Vectors
from ..errors import ConfigError
from . import shards
from .base import CollectionOptions, Hit, QdrantSink, SinkSpec, mismatch, point_id

if TYPE_CHECKING:
    from qdrant_edge import Distance, EdgeConfig, PayloadSchemaType


class EdgeSink(QdrantSink):
    def __init__(
        self, spec: SinkSpec, collection: str, dimensions: int, options: CollectionOptions | None = None
    ) -> None:
        super().__init__(spec, collection, dimensions, options)
        if not collection or collection in {".", ".."} or any(c in collection for c in "/\\\0"):
            raise ConfigError(f"collection {collection!r} cannot name a folder; use letters, digits, '-' or '_'")
        assert spec.path is not None
        self.root = Path(spec.path).expanduser()
        self.shard_path = self.root / collection
        self._shared: shards.SharedShard | None = None
        self._lock = threading.Lock()

    def _open(self, new_config: EdgeConfig | None = None) -> shards.SharedShard:
        with self._lock:
            if self._shared is None:
                refuse_old_format(self.root)
                self._shared = shards.acquire(self.shard_path, new_config)
            return self._shared

    def ensure_collection(self) -> None:
        from qdrant_edge import UpdateOperation

        shared = self._open(self._new_config())
        name = self.options.vector_name
        with shared.write_lock:
            vectors: dict[str, dict[str, Any]] = _stored_config(shared.path).get("vectors", {})
            operations = []
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
                operations.append(UpdateOperation.create_dense_vector(name, self.dimensions, _distance(self.options)))
            with shards.edge_errors(shared.path):
                indexed = shared.shard.info().payload_schema
            for field, kind in self.options.indexes():
                if field not in indexed:
                    operations.append(UpdateOperation.create_field_index(field, _index_type(kind)))
            seq = 0
            for operation in operations:
                seq = shared.update(operation)
        shared.durable(seq)

    def _new_config(self) -> EdgeConfig:
        from qdrant_edge import EdgeConfig, EdgeVectorParams

        distance, on_disk = _distance(self.options), self.options.on_disk
        own = EdgeVectorParams(self.dimensions, distance, on_disk=on_disk)
        name = self.options.vector_name
        if not name:
            return EdgeConfig(vectors=own)
        named = {name: own}
        for other, dims in self.options.extras():
            named[other] = EdgeVectorParams(dims, distance, on_disk=on_disk)
        return EdgeConfig(vectors=named)

    def write(self, record_ids: list[str], vectors: Vectors, payloads: list[dict[str, Any]]) -> int:
        from qdrant_edge import Point, PointVectors, UpdateOperation

        name = self.options.vector_name
        ids = [point_id(rid) for rid in record_ids]
        rows = vectors.tolist()  # Edge takes lists faster than numpy rows
        shared = self._open()
        with shared.write_lock:
            existing: set[str] = set()
            if name is not None:
                # An upsert replaces a point whole; points that carry another model's vector keep it when
                # only this vector and the payload are updated.
                with shards.edge_errors(shared.path):
                    found = shared.shard.retrieve(ids, with_payload=False, with_vector=False)  # type: ignore[arg-type]
                existing = {str(p.id) for p in found}
            new = [
                Point(pid, {name: vec} if name else vec, payload)
                for pid, vec, payload in zip(ids, rows, payloads, strict=True)
                if pid not in existing
            ]
            seq = shared.update(UpdateOperation.upsert_points(new)) if new else 0
            if existing:
                assert name is not None
                updates = [
                    PointVectors(pid, {name: vec}) for pid, vec in zip(ids, rows, strict=True) if pid in existing
                ]
                seq = shared.update(UpdateOperation.update_vectors(updates))
                for pid, payload in zip(ids, payloads, strict=True):
                    if pid in existing:
                        seq = shared.update(UpdateOperation.set_payload([pid], payload))
        return seq

    def durable(self, written: int) -> None:
        self._open().durable(written)

    def delete(self, point_ids: list[str]) -> None:
        from qdrant_edge import UpdateOperation

        shared = self._open()
        shared.durable(shared.update(UpdateOperation.delete_points(list(point_ids))))

    def scan(self, page: int = 2000) -> Iterator[tuple[str, dict[str, Any], int | None]]:
        from qdrant_edge import ScrollRequest

        shared = self._open()
        name = self.options.vector_name or ""
        offset: Any = None
        while True:
            with shards.edge_errors(shared.path):
                records, offset = shared.shard.scroll(
                    ScrollRequest(offset=offset, limit=page, with_payload=True, with_vector=[name])
                )
            for record in records:
                vector = record.vector.get(name) if isinstance(record.vector, dict) else record.vector
                yield str(record.id), dict(record.payload or {}), len(vector) if isinstance(vector, list) else None
            if offset is None:
                return

    def query(self, vector: np.ndarray | list[float], limit: int = 10) -> list[Hit]:
        from qdrant_edge import Query, QueryRequest

        shared = self._open()
        nearest = Query.Nearest(vector.tolist() if isinstance(vector, np.ndarray) else list(vector),
                                using=self.options.vector_name)  # fmt: skip
        with shards.edge_errors(shared.path):
            points = shared.shard.query(QueryRequest(limit=limit, query=nearest, with_payload=True))
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def close(self) -> None:
        """Let go of the shard; it closes once no job of this process uses it."""
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


def _distance(options: CollectionOptions) -> Distance:
    from qdrant_edge import Distance

    return {"cosine": Distance.Cosine, "dot": Distance.Dot, "euclid": Distance.Euclid,
            "manhattan": Distance.Manhattan}[options.distance.lower()]  # fmt: skip


def _index_type(kind: str) -> PayloadSchemaType:
    from qdrant_edge import PayloadSchemaType

    return {"keyword": PayloadSchemaType.Keyword, "integer": PayloadSchemaType.Integer,
            "float": PayloadSchemaType.Float, "bool": PayloadSchemaType.Bool, "text": PayloadSchemaType.Text,
            "uuid": PayloadSchemaType.Uuid, "datetime": PayloadSchemaType.Datetime}[kind]  # fmt: skip
