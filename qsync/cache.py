"""The embedding cache: every vector an embedder returned, keyed by who made it and from what text.

Written before the upsert that uses it (never pay twice) and read before any embedder call; shared by
every job in the DuckDB file, so a second job over the same texts and model pays for nothing.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from .embedders.base import Vectors
from .store import arrow_table


class CacheIdentity(Protocol):
    """What makes two vectors of one text interchangeable."""

    model: str
    dimensions: int
    task_type: str


def embedder_signature(embedder: CacheIdentity, enrich_fingerprint: str = "") -> str:
    """Who made a vector: model|dimensions|task_type, plus the enrichment that chose its text, if any.
    A record's point counts as unchanged only when its signature matches."""
    base = f"{embedder.model}|{embedder.dimensions}|{embedder.task_type}"
    return f"{base}|enrich:{enrich_fingerprint}" if enrich_fingerprint else base


def cache_key(embedder: CacheIdentity, content_hash: str) -> str:
    return f"{embedder_signature(embedder)}|{content_hash}"


def batch_mode_origin(job_id: str) -> str:
    """The `origin` of vectors a job prefetched in Batch Mode: paid once, at the batch price."""
    return f"batch-mode:{job_id}"


def insert_vectors(
    con: Any,
    embedder: CacheIdentity,
    hashes: list[str],
    vectors: Vectors,
    tokens: list[int],
    now: Any,
    origin: str | None,
) -> None:
    """Add vectors to the cache (inside the caller's transaction); existing keys are kept."""
    table = pa.table(
        {
            "cache_key": [cache_key(embedder, h) for h in hashes],
            "model": [embedder.model] * len(hashes),
            "dimensions": pa.array([embedder.dimensions] * len(hashes), pa.int32()),
            "task_type": [embedder.task_type] * len(hashes),
            "content_hash": hashes,
            "tokens": pa.array(tokens, pa.int32()),
            # One flat buffer viewed as lists: ~100x faster than a list of per-row arrays.
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel()), embedder.dimensions
            ).cast(pa.list_(pa.float32())),
            "created_at": pa.array([now] * len(hashes), pa.timestamp("us")),
            "origin": pa.array([origin] * len(hashes), pa.string()),
        }
    )
    con.register("__qsync_new_vectors", table)
    try:
        con.execute("INSERT INTO embeddings SELECT * FROM __qsync_new_vectors ON CONFLICT DO NOTHING")
    finally:
        con.unregister("__qsync_new_vectors")


def lookup_vectors(
    con: Any, embedder: CacheIdentity, hashes: list[str], free_origin: str | None = None
) -> dict[str, tuple[Vectors, int]]:
    """content hash -> (vector, tokens reusing it saves) for the hashes the cache holds. Vectors whose
    origin is `free_origin` (this job's own Batch Mode prefetch) save nothing: the job paid for them."""
    keys = sorted({cache_key(embedder, h) for h in hashes})
    if not keys:
        return {}
    # A literal IN list lets DuckDB use the primary-key index (a join would scan the whole cache).
    placeholders = ", ".join("?" * len(keys))
    table = arrow_table(
        con,
        f"SELECT content_hash, CASE WHEN origin = ? THEN 0 ELSE tokens END AS tokens, vector "
        f"FROM embeddings WHERE cache_key IN ({placeholders})",
        [free_origin or "", *keys],
    )
    if not table.num_rows:
        return {}
    flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    matrix = np.asarray(flat, dtype=np.float32).reshape(table.num_rows, -1)
    found = table.column("content_hash").to_pylist()
    tokens = table.column("tokens").to_pylist()
    return {h: (matrix[i], int(t)) for i, (h, t) in enumerate(zip(found, tokens, strict=True))}
