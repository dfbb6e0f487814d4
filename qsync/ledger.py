"""Batch state transitions and the embedding cache, each one DuckDB transaction guarded by the lease.

Batch states form a closed set:

    pending --claim--> running --complete--> done
                       running --fail------> failed --claim--> running
                       running --release---> pending        (clean stop, or a dead owner's leftovers)

`record_embeddings` stores the vectors a batch paid for, and their tokens and cost, before the upsert
that uses them: a crash after it costs nothing on resume. `complete` runs only after Qdrant acknowledged
the upsert. Every write first checks the lease in the same transaction, so a runner that lost its job
cannot change a thing.

Writes are group-committed: while one worker's transaction runs, the writes other workers ask for
queue up and then commit together in the next transaction (one lease check, one commit). Each caller
still returns only once its own write is committed, so the order above holds batch by batch; what is
saved is the per-transaction cost that a single DuckDB writer would otherwise serialise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import pyarrow as pa

from .clock import Clock
from .embedders.base import Embedder, Vectors
from .lease import Lease
from .sink import point_id
from .store import Store, arrow_table, first_row

BATCH_STATES = ("pending", "running", "done", "failed")

T = TypeVar("T")
MANIFEST_READ_AHEAD = 16  # batches whose records one manifest query loads


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


def insert_vectors(
    con: Any,
    embedder: CacheIdentity,
    hashes: list[str],
    vectors: Vectors,
    tokens: list[int],
    now: Any,
    origin: str | None,
) -> None:
    """Add vectors to the embedding cache (inside the caller's transaction); existing keys are kept."""
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


def batch_mode_origin(job_id: str) -> str:
    """The `origin` of vectors a job prefetched in Batch Mode: paid once, at the batch price."""
    return f"batch-mode:{job_id}"


@dataclass
class BatchWork:
    """A claimed batch: its records, and the vectors the cache already holds for them."""

    batch_no: int
    attempt: int
    ordinals: list[int]
    record_ids: list[str]
    hashes: list[str]
    texts: list[str]
    token_estimates: list[int]
    payloads: list[str]
    cached: dict[str, tuple[Vectors, int]]  # content hash -> (vector, tokens reusing it saved)
    source_hashes: list[str] = field(default_factory=list)  # the manifest's hashes (hashes may change: enrich)

    def __post_init__(self) -> None:
        if not self.source_hashes:
            self.source_hashes = list(self.hashes)


@dataclass
class _Write:
    """One caller's part of a group commit."""

    apply: Callable[[Any], Any]  # runs inside the shared transaction
    touches_job: bool = False  # the job's updated_at moves (once per group)
    committed: bool = False  # read and set only under the committer lock
    result: Any = None
    error: BaseException | None = None


class Ledger:
    def __init__(
        self, store: Store, lease: Lease, clock: Clock, target: str = "", embedder_signature: str = ""
    ) -> None:
        self.store = store
        self.lease = lease
        self.job_id = lease.job_id
        self.clock = clock
        self.target = target  # see QdrantSink.target
        self.embedder_signature = embedder_signature
        self._queued: list[_Write] = []
        self._queue_lock = threading.Lock()
        self._committer = threading.Lock()  # held by the thread committing the current group
        self._manifests: dict[int, list[tuple[Any, ...]]] = {}  # read ahead: batch_no -> manifest rows
        self._manifests_lock = threading.Lock()

    def _write(self, apply: Callable[[Any], T], touches_job: bool = False) -> T:
        """Run `apply(con)` in a lease-checked transaction; return its result once committed."""
        write = _Write(apply, touches_job)
        with self._queue_lock:
            self._queued.append(write)
        with self._committer:
            if not write.committed:  # else the previous group took it along
                with self._queue_lock:
                    group, self._queued = self._queued, []
                self._commit(group)
        if write.error is not None:
            raise write.error
        return write.result  # type: ignore[no-any-return]

    def _commit(self, group: list[_Write]) -> None:
        try:
            with self.store.transaction() as con:
                self.lease.verify(con)
                results = [write.apply(con) for write in group]
                if any(write.touches_job for write in group):
                    con.execute("UPDATE jobs SET updated_at = ? WHERE job_id = ?", [self.clock.now(), self.job_id])
        except BaseException as exc:
            if len(group) > 1:  # one write failed and took the others down: commit each on its own,
                for write in group:  # so that only the failing caller sees its error
                    self._commit([write])
                return
            group[0].error = exc
            group[0].committed = True
            return
        for write, result in zip(group, results, strict=True):
            write.result = result
            write.committed = True

    def runnable_batches(self) -> list[int]:
        rows = self.store.query_rows(
            "SELECT batch_no FROM batches WHERE job_id = ? AND status IN ('pending', 'failed') ORDER BY batch_no",
            [self.job_id],
        )
        return [int(r[0]) for r in rows]

    def claim(self, batch_no: int, embedder: Embedder) -> BatchWork:
        """Mark the batch running (a new attempt) and load its records and the vectors already cached.

        Only the state change needs the write transaction: the manifest never changes once planned, and
        the cache is looked up after the claim, so it sees every vector an earlier attempt persisted."""
        attempt = self._write(lambda con: self._claim(con, batch_no))
        records = self._manifest(batch_no)
        return BatchWork(
            batch_no=batch_no,
            attempt=attempt,
            ordinals=[r[0] for r in records],
            record_ids=[r[1] for r in records],
            hashes=[r[2] for r in records],
            texts=[r[3] for r in records],
            token_estimates=[r[4] for r in records],
            payloads=[r[5] for r in records],
            cached=self.cached_vectors(embedder, [r[2] for r in records]),
        )

    def _claim(self, con: Any, batch_no: int) -> int:
        now = self.clock.now()
        row = first_row(
            con.execute(
                """UPDATE batches SET status = 'running', attempts = attempts + 1, started_at = ?
                   WHERE job_id = ? AND batch_no = ? AND status IN ('pending', 'failed')
                   RETURNING attempts""",
                [now, self.job_id, batch_no],
            )
        )
        if row is None:
            raise RuntimeError(f"batch {batch_no} of {self.job_id!r} is not claimable")
        attempt = int(row[0])
        con.execute(
            "INSERT INTO attempts VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, NULL)",
            [self.job_id, batch_no, attempt, self.lease.pid, self.lease.token, now],
        )
        return attempt

    def _manifest(self, batch_no: int) -> list[tuple[Any, ...]]:
        """The batch's records, read MANIFEST_READ_AHEAD batches at a time (one query instead of many)."""
        with self._manifests_lock:
            rows = self._manifests.pop(batch_no, None)
        if rows is not None:
            return rows
        fetched = self.store.query_rows(
            """SELECT batch_no, ordinal, record_id, content_hash, text, token_estimate, payload FROM manifest
               WHERE job_id = ? AND batch_no BETWEEN ? AND ? ORDER BY batch_no, ordinal""",
            [self.job_id, batch_no, batch_no + MANIFEST_READ_AHEAD - 1],
        )
        by_batch: dict[int, list[tuple[Any, ...]]] = {}
        for row in fetched:
            by_batch.setdefault(int(row[0]), []).append(tuple(row[1:]))
        rows = by_batch.pop(batch_no, [])
        with self._manifests_lock:
            # Replace, not add: batches of an earlier read that were never claimed (done ones inside a
            # retry's range, say) would otherwise pile up; this keeps at most one read's worth in memory.
            self._manifests = by_batch
        return rows

    def cached_vectors(self, embedder: CacheIdentity, hashes: list[str]) -> dict[str, tuple[Vectors, int]]:
        """content hash -> (vector, tokens reusing it saves) for the hashes the cache holds."""
        keys = sorted({cache_key(embedder, h) for h in hashes})
        if not keys:
            return {}
        # A literal IN list lets DuckDB use the primary-key index (a join would scan the whole cache).
        placeholders = ", ".join("?" * len(keys))
        with self.store.reading() as con:
            table = arrow_table(
                con,
                f"SELECT content_hash, CASE WHEN origin = ? THEN 0 ELSE tokens END AS tokens, vector "
                f"FROM embeddings WHERE cache_key IN ({placeholders})",
                [batch_mode_origin(self.job_id), *keys],
            )
        if not table.num_rows:
            return {}
        flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        matrix = np.asarray(flat, dtype=np.float32).reshape(table.num_rows, -1)
        hashes_found = table.column("content_hash").to_pylist()
        tokens = table.column("tokens").to_pylist()
        return {h: (matrix[i], int(t)) for i, (h, t) in enumerate(zip(hashes_found, tokens, strict=True))}

    def record_embeddings(
        self,
        work: BatchWork,
        embedder: Embedder,
        hashes: list[str],
        vectors: Vectors,
        tokens_per_text: list[int],
        tokens_estimated: bool,
    ) -> float:
        """Persist freshly paid-for vectors and their cost (returned). Called before the upsert."""
        now = self.clock.now()
        tokens = int(sum(tokens_per_text))
        cost = tokens * embedder.price_per_million_tokens / 1_000_000

        def apply(con: Any) -> None:
            insert_vectors(con, embedder, hashes, vectors, tokens_per_text, now, origin=None)
            con.execute(
                """UPDATE batches SET embedded_texts = embedded_texts + ?, tokens = tokens + ?,
                       cost_usd = cost_usd + ?, tokens_estimated = tokens_estimated OR ?
                   WHERE job_id = ? AND batch_no = ?""",
                [len(hashes), tokens, cost, tokens_estimated, self.job_id, work.batch_no],
            )

        self._write(apply)
        return cost

    def cached_generations(self, keys: list[str]) -> dict[str, str]:
        """Answers already paid for (by any job), by generation key."""
        if not keys:
            return {}
        placeholders = ", ".join("?" * len(keys))
        rows = self.store.query_rows(
            f"SELECT cache_key, answer FROM generations WHERE cache_key IN ({placeholders})", list(keys)
        )
        return {str(k): str(a) for k, a in rows}

    def record_generation(
        self, work: BatchWork, key: str, model: str, answer: str, tokens_in: int, tokens_out: int, cost: float
    ) -> None:
        """Persist one enrichment answer and its cost the moment it arrives."""

        def apply(con: Any) -> None:
            con.execute(
                "INSERT INTO generations VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [key, model, answer, tokens_in, tokens_out, cost, self.clock.now()],
            )
            con.execute(
                "UPDATE batches SET enrich_tokens = enrich_tokens + ?, enrich_cost_usd = enrich_cost_usd + ? "
                "WHERE job_id = ? AND batch_no = ?",
                [tokens_in + tokens_out, cost, self.job_id, work.batch_no],
            )

        self._write(apply)

    def complete(
        self,
        work: BatchWork,
        cache_hits: int,
        saved_tokens: int,
        duration_s: float,
        skips: dict[int, str] | None = None,
    ) -> None:
        """Mark the batch done (Qdrant has acknowledged it); `skips` are records the embedder refused."""
        skips = skips or {}

        def apply(con: Any) -> None:
            now = self.clock.now()
            con.execute(
                """UPDATE batches SET status = 'done', finished_at = ?, duration_s = ?, last_error = NULL,
                       cache_hits = cache_hits + ?, saved_tokens = saved_tokens + ?, skipped_records = ?
                   WHERE job_id = ? AND batch_no = ?""",
                [now, duration_s, cache_hits, saved_tokens, len(skips), self.job_id, work.batch_no],
            )
            for i, reason in skips.items():
                con.execute(
                    "INSERT INTO skipped VALUES (?, ?, ?, 'embed', ?, ?)",
                    [self.job_id, work.ordinals[i], work.record_ids[i], reason, now],
                )
            if skips:
                con.execute(
                    "UPDATE jobs SET skipped_records = skipped_records + ? WHERE job_id = ?", [len(skips), self.job_id]
                )
            self._record_points(con, work, skips, now)
            self._end_attempt(con, work, now, "done", None)

        self._write(apply, touches_job=True)

    def _record_points(self, con: Any, work: BatchWork, skips: dict[int, str], now: Any) -> None:
        """What the collection now holds for this batch, in the transaction that marks it done."""
        kept = [i for i in range(len(work.record_ids)) if i not in skips]
        ids = [work.record_ids[i] for i in kept]
        if not ids or not self.target:
            return
        table = pa.table(
            {
                "target": [self.target] * len(kept),
                "record_id": ids,
                "point_id": [point_id(r) for r in ids],
                "source_hash": [work.source_hashes[i] for i in kept],
                "vector_hash": [work.hashes[i] for i in kept],
                "embedder": [self.embedder_signature] * len(kept),
                "payload": [work.payloads[i] for i in kept],
                "job_id": [self.job_id] * len(kept),
                "updated_at": pa.array([now] * len(kept), pa.timestamp("us")),
            }
        )
        con.register("__qsync_points", table)
        try:
            con.execute(
                "DELETE FROM points WHERE target = ? AND record_id IN (SELECT record_id FROM __qsync_points)",
                [self.target],
            )
            con.execute("INSERT INTO points SELECT * FROM __qsync_points")
        finally:
            con.unregister("__qsync_points")

    def pending_deletions(self, limit: int) -> list[tuple[str, str]]:
        rows = self.store.query_rows(
            "SELECT record_id, point_id FROM deletions WHERE job_id = ? AND NOT done ORDER BY record_id LIMIT ?",
            [self.job_id, limit],
        )
        return [(str(r), str(p)) for r, p in rows]

    def mark_deleted(self, record_ids: list[str]) -> None:
        """The points are gone from Qdrant (it acknowledged): record it, and forget them in `points`."""

        def apply(con: Any) -> None:
            con.execute(
                "UPDATE deletions SET done = true WHERE job_id = ? AND record_id IN (SELECT unnest(?::VARCHAR[]))",
                [self.job_id, record_ids],
            )
            con.execute(
                "DELETE FROM points WHERE target = ? AND record_id IN (SELECT unnest(?::VARCHAR[]))",
                [self.target, record_ids],
            )

        self._write(apply)

    def fail(self, work: BatchWork, error: str) -> None:
        def apply(con: Any) -> None:
            now = self.clock.now()
            con.execute(
                "UPDATE batches SET status = 'failed', last_error = ?, finished_at = ? WHERE job_id = ? AND batch_no = ?",
                [error, now, self.job_id, work.batch_no],
            )
            self._end_attempt(con, work, now, "failed", error)

        self._write(apply, touches_job=True)

    def release(self, work: BatchWork) -> None:
        """Hand an unfinished batch back (clean stop): pending again, its paid vectors kept."""

        def apply(con: Any) -> None:
            now = self.clock.now()
            con.execute(
                "UPDATE batches SET status = 'pending' WHERE job_id = ? AND batch_no = ? AND status = 'running'",
                [self.job_id, work.batch_no],
            )
            self._end_attempt(con, work, now, "released", None)

        self._write(apply)

    def _end_attempt(self, con: Any, work: BatchWork, now: Any, outcome: str, error: str | None) -> None:
        con.execute(
            """UPDATE attempts SET finished_at = ?, outcome = ?, error = ?
               WHERE job_id = ? AND batch_no = ? AND attempt = ? AND lease_token = ?""",
            [now, outcome, error, self.job_id, work.batch_no, work.attempt, self.lease.token],
        )
