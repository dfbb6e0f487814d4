"""The embedding cache: every vector an embedder returned, keyed by who made it and from what text.

Written before the upsert that uses it (never pay twice) and read before any embedder call; shared by
every job in the DuckDB file, so a second job over the same texts and model pays for nothing.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

import duckdb
import pyarrow as pa

from .embedders.base import Vectors
from .vectorfile import VectorFile


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
    offsets: list[int],
    tokens: list[int],
    now: Any,
    origin: str | None,
    *,
    ignore_existing: bool = False,
) -> None:
    """Record vectors already appended to the vector file at `offsets` (inside the caller's transaction).

    A plain INSERT: callers only persist keys the cache did not hold when they looked, and ON CONFLICT
    costs ~6 ms a batch, growing with the cache. If another job saved one of the keys meanwhile, the
    INSERT fails and the caller retries with `ignore_existing` (the first copy wins)."""
    table = pa.table(
        {
            "cache_key": [cache_key(embedder, h) for h in hashes],
            "model": [embedder.model] * len(hashes),
            "dimensions": pa.array([embedder.dimensions] * len(hashes), pa.int32()),
            "task_type": [embedder.task_type] * len(hashes),
            "content_hash": hashes,
            "tokens": pa.array(tokens, pa.int32()),
            "byte_offset": pa.array(offsets, pa.int64()),
            "created_at": pa.array([now] * len(hashes), pa.timestamp("us")),
            "origin": pa.array([origin] * len(hashes), pa.string()),
        }
    )
    con.register("__qsync_new_vectors", table)
    try:
        conflict = " ON CONFLICT DO NOTHING" if ignore_existing else ""
        con.execute(f"INSERT INTO embeddings SELECT * FROM __qsync_new_vectors{conflict}")
    finally:
        # After a failed INSERT the transaction is aborted and unregister fails too; its error must not hide
        # the INSERT's (a key conflict is retried by the caller). The next register replaces the view anyway.
        with contextlib.suppress(duckdb.Error):
            con.unregister("__qsync_new_vectors")


def append_vectors(vectors_file: VectorFile, vectors: Vectors) -> list[int]:
    """Write vectors durably to the vector file (before the rows that point at them); their offsets."""
    first = vectors_file.append(vectors)
    row = int(vectors.shape[1]) * 4 if len(vectors) else 0
    return [first + i * row for i in range(len(vectors))]


def lookup_vectors(
    con: Any, vectors_file: VectorFile, embedder: CacheIdentity, hashes: list[str], free_origin: str | None = None
) -> dict[str, tuple[Vectors, int]]:
    """content hash -> (vector, tokens reusing it saves) for the hashes the cache holds. Vectors whose
    origin is `free_origin` (this job's own Batch Mode prefetch) save nothing: the job paid for them."""
    keys = sorted({cache_key(embedder, h) for h in hashes})
    if not keys:
        return {}
    # A literal IN list lets DuckDB use the primary-key index (a join would scan the whole cache).
    placeholders = ", ".join("?" * len(keys))
    rows = con.execute(
        f"SELECT content_hash, CASE WHEN origin = ? THEN 0 ELSE tokens END AS tokens, byte_offset, dimensions "
        f"FROM embeddings WHERE cache_key IN ({placeholders})",
        [free_origin or "", *keys],
    ).fetchall()
    if not rows:
        return {}
    matrix = vectors_file.read([int(r[2]) for r in rows], [int(r[3]) for r in rows])
    return {str(r[0]): (matrix[i], int(r[1])) for i, r in enumerate(rows)}
