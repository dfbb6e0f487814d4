"""Every write to the state of jobs and batches, and nothing else writes it.

Job states:

    planned --lease--> running --release--> paused | failed | completed | cancelled
    paused | failed | (stale) running --lease--> running            cancelled and completed are final

A `running` job whose owner is gone is shown as `stale` (figures.py) but stays `running` in the file
until someone takes its lease over.

Batch states:

    pending --claim--> running --complete--> done
                       running --fail------> failed --claim--> running
                       running --release---> pending        (clean stop, or a dead owner's leftovers)

`record_embeddings` stores the vectors a batch paid for, and their tokens and cost, before the upsert
that uses them: a crash after it costs nothing on resume. `complete` runs only once Qdrant holds the
batch's points durably, and marks many batches done in one transaction (one Qdrant Edge flush covers them). Every write of a run first checks the lease in the same transaction, so a runner that lost
its job cannot change a thing.

A run's writes are group-committed: while one worker's transaction runs, the writes other workers ask
for queue up and then commit together in the next transaction (one lease check, which also moves the
job's updated_at, and one commit). Each caller
still returns only once its own write is committed, so the order above holds batch by batch.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from .cache import CacheIdentity, append_vectors, batch_mode_origin, insert_vectors, lookup_vectors
from .clock import Clock
from .embedders.base import Vectors
from .errors import JobNotFound, JobNotRunnable, LeaseHeld
from .lease import HOST, Lease, lease_is_live
from .sink import point_id
from .store import Store, first_row
from .vectorfile import vector_file_for

T = TypeVar("T")
MANIFEST_READ_AHEAD = 16  # batches whose records one manifest query loads


class JobState(str, Enum):
    PLANNED = "planned"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        """Nothing more will happen to the job: a new run of its spec is a new job (a re-sync)."""
        return self in (JobState.COMPLETED, JobState.CANCELLED)


class BatchState(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


BATCH_STATES = tuple(s.value for s in BatchState)


# -- jobs ------------------------------------------------------------------------------------------


def insert_job(
    con: Any,
    job_id: str,
    config: dict[str, Any],
    source: str,
    collection: str,
    batch_size: int,
    counts: tuple[int, int, int, int],
    max_cost_usd: float | None,
    now: Any,
) -> None:
    """Record a planned job and its batches (inside the planning transaction, after its manifest).
    `counts` are (total, skipped, batches, unchanged) records."""
    total, skipped, batches, unchanged = counts
    con.execute(
        """INSERT INTO batches (job_id, batch_no, status, records, first_ordinal, last_ordinal)
           SELECT ?, batch_no, 'pending', count(*), min(ordinal), max(ordinal)
           FROM manifest WHERE job_id = ? GROUP BY batch_no ORDER BY batch_no""",
        [job_id, job_id],
    )
    con.execute(
        """INSERT INTO jobs (job_id, status, message, config, source, collection, batch_size, total_records,
               skipped_records, batches_total, created_at, updated_at, unchanged_records, max_cost_usd)
           VALUES (?, 'planned', NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        [job_id, json.dumps(config), source, collection, batch_size, total, skipped, batches, now, now, unchanged,
         max_cost_usd],
    )  # fmt: skip


def set_budget(store: Store, job_id: str, max_cost_usd: float | None, clock: Clock) -> None:
    """A new cap for the job's whole spend (None: no cap), given on resume."""
    with store.transaction() as con:
        con.execute(
            "UPDATE jobs SET max_cost_usd = ?, updated_at = ? WHERE job_id = ?", [max_cost_usd, clock.now(), job_id]
        )


def cancel(store: Store, job_id: str, clock: Clock) -> str:
    """Cancel a job: at once if nobody runs it, else ask its runner (it sees the request at its next
    heartbeat). Returns what happened: 'cancelled', 'cancel requested', or the final state it had."""
    with store.transaction() as con:
        row = first_row(con.execute("SELECT status, lease_token FROM jobs WHERE job_id = ?", [job_id]))
        if row is None:
            raise JobNotFound(f"no job named {job_id!r} in {store.path}")
        if JobState(row[0]).final:
            return str(row[0])
        if row[1] is not None:
            con.execute("UPDATE jobs SET cancel_requested = true WHERE job_id = ?", [job_id])
            return "cancel requested"
        now = clock.now()
        con.execute(
            "UPDATE jobs SET status = 'cancelled', message = 'cancelled', finished_at = ?, updated_at = ? "
            "WHERE job_id = ?",
            [now, now, job_id],
        )
        return "cancelled"


# -- the lease -------------------------------------------------------------------------------------


def acquire_lease(store: Store, job_id: str, clock: Clock, stale_after_s: float, pid: int) -> tuple[Lease, bool]:
    """Take the job's lease (job -> running); return it and whether a stale owner was displaced."""
    lease = Lease(job_id, uuid.uuid4().hex, pid, HOST)
    with store.transaction() as con:
        row = first_row(
            con.execute(
                "SELECT status, lease_token, owner_pid, owner_host, heartbeat_at FROM jobs WHERE job_id = ?",
                [job_id],
            )
        )
        if row is None:
            raise JobNotFound(f"no job named {job_id!r} in {store.path}")
        status, token, owner_pid, owner_host, heartbeat = row
        if status == JobState.CANCELLED:
            raise JobNotRunnable(f"job {job_id!r} was cancelled; start a new job (cached embeddings are reused)")
        now = clock.now()
        if token is not None and lease_is_live(owner_pid, owner_host, heartbeat, now, stale_after_s):
            age = (now - heartbeat).total_seconds()
            raise LeaseHeld(
                f"job {job_id!r} is being run by process {owner_pid} on {owner_host} (heartbeat {age:.0f}s ago); "
                "watch it with `qsync status`, or stop that process first"
            )
        con.execute(
            """UPDATE jobs SET lease_token = ?, owner_pid = ?, owner_host = ?, heartbeat_at = ?,
                   status = 'running', message = NULL, started_at = coalesce(started_at, ?), updated_at = ?,
                   finished_at = NULL
               WHERE job_id = ?""",
            [lease.token, lease.pid, lease.host, now, now, now, job_id],
        )
        # Whatever the previous owner had in flight is unfinished work again. Its paid embeddings are in
        # the cache already, so redoing these batches costs no API call for them.
        con.execute(
            "UPDATE attempts SET outcome = 'abandoned', finished_at = ? WHERE job_id = ? AND outcome IS NULL",
            [now, job_id],
        )
        con.execute("UPDATE batches SET status = 'pending' WHERE job_id = ? AND status = 'running'", [job_id])
        # Calls the previous owner had on the wire may have been billed: their spend stays, unconfirmed.
        con.execute(
            "UPDATE spend_intents SET state = 'unconfirmed', closed_at = ? WHERE job_id = ? AND state = 'open'",
            [now, job_id],
        )
    return lease, token is not None


def renew_lease(store: Store, lease: Lease, clock: Clock) -> bool:
    """Heartbeat. Raises LeaseLost if another runner took the job; False if cancellation was requested.
    It does not keep an idle connection open: a runner frozen between calls lets go of the file."""
    with store.transaction(keeps_open=False) as con:
        lease.verify(con)
        row = first_row(con.execute("SELECT cancel_requested FROM jobs WHERE job_id = ?", [lease.job_id]))
        con.execute("UPDATE jobs SET heartbeat_at = ? WHERE job_id = ?", [clock.now(), lease.job_id])
        return not (row and row[0])


def release_lease(store: Store, lease: Lease, clock: Clock, state: JobState, message: str | None) -> None:
    """Give the job up, leaving it in `state` with a message that says what happened."""
    with store.transaction() as con:
        lease.verify(con)
        now = clock.now()
        if state != JobState.COMPLETED:
            con.execute(
                "UPDATE attempts SET outcome = 'released', finished_at = ? "
                "WHERE job_id = ? AND lease_token = ? AND outcome IS NULL",
                [now, lease.job_id, lease.token],
            )
            con.execute("UPDATE batches SET status = 'pending' WHERE job_id = ? AND status = 'running'", [lease.job_id])
        con.execute(
            """UPDATE jobs SET status = ?, message = ?, lease_token = NULL, owner_pid = NULL, owner_host = NULL,
                   updated_at = ?, finished_at = CASE WHEN ? IN ('completed', 'failed', 'cancelled') THEN ? END
               WHERE job_id = ?""",
            [state.value, message, now, state.value, now, lease.job_id],
        )


# -- batches, within a run -------------------------------------------------------------------------


def load_payload(text: str) -> dict[str, Any]:
    """A manifest row's payload (JSON) as a dict."""
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


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
    source_hashes: list[str] = field(default_factory=list)  # the manifest's hashes (hashes may change: enrich)
    media_refs: list[str | None] = field(default_factory=list)  # each record's image or document (media jobs)
    claimed: bool = False  # the claim (running, attempt) is committed; see Checkpoint.claim
    claiming: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.source_hashes:
            self.source_hashes = list(self.hashes)
        if not self.media_refs:
            self.media_refs = [None] * len(self.hashes)


@dataclass(frozen=True)
class Completion:
    """A batch whose points Qdrant holds durably, to be marked done (Checkpoint.complete)."""

    work: BatchWork
    cache_hits: int
    saved_tokens: int
    duration_s: float
    skips: dict[int, str] = field(default_factory=dict)  # record index -> why the embedder refused it


@dataclass
class _Write:
    """One caller's part of a group commit."""

    apply: Callable[[Any], Any]  # runs inside the shared transaction
    committed: bool = False  # read and set only under the committer lock
    result: Any = None
    error: BaseException | None = None


class Checkpoint:
    """The writes of one run, guarded by its lease and group-committed."""

    def __init__(self, store: Store, lease: Lease, clock: Clock, target: str, embedder_signature: str) -> None:
        self.store = store
        self.lease = lease
        self.job_id = lease.job_id
        self.clock = clock
        self.target = target  # see JobSpec.target
        self.embedder_signature = embedder_signature
        self._queued: list[_Write] = []
        self._queue_lock = threading.Lock()
        self._committer = threading.Lock()  # held by the thread committing the current group
        self._manifests: dict[int, list[tuple[Any, ...]]] = {}  # read ahead: batch_no -> manifest rows
        self._manifests_lock = threading.Lock()
        self.vectors = vector_file_for(store.path)
        # Whether the target already holds points for records of this job (a re-sync, a publish over an
        # earlier one): only then must `complete` delete their old rows first. A fresh backfill skips the
        # delete, which scans the whole points table and would make each batch slower than the last.
        self._replaces_points = bool(
            target
            and self.store.query_rows(
                """SELECT EXISTS (SELECT 1 FROM points WHERE target = ? AND record_id IN
                       (SELECT record_id FROM manifest WHERE job_id = ?))""",
                [target, self.job_id],
            )[0][0]
        )

    def _write(self, apply: Callable[[Any], T]) -> T:
        """Run `apply(con)` in a lease-checked transaction; return its result once committed."""
        write = _Write(apply)
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
                self.lease.verify_and_touch(con, self.clock.now())
                results = [write.apply(con) for write in group]
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

    def claim(self, batch_no: int) -> BatchWork:
        """Take the batch for a new attempt and load its records. The claim (running, attempt + 1) is written
        in the batch's first write: the intent of its first paid call, or its completion. That saves a
        transaction a batch on the file every worker waits for; a crash before it leaves the batch pending,
        and nothing was spent on it yet. Raises RuntimeError if the batch is not pending or failed."""
        rows = self.store.query_rows(
            "SELECT attempts, status FROM batches WHERE job_id = ? AND batch_no = ?", [self.job_id, batch_no]
        )
        row = rows[0] if rows else None
        if row is None or row[1] not in (BatchState.PENDING, BatchState.FAILED):
            raise RuntimeError(f"batch {batch_no} of {self.job_id!r} is not claimable")
        attempt = int(row[0]) + 1
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
            media_refs=[r[6] for r in records],
        )

    def _claim(self, con: Any, work: BatchWork) -> None:
        batch_no, now = work.batch_no, self.clock.now()
        row = first_row(
            con.execute(
                """UPDATE batches SET status = 'running', attempts = attempts + 1, started_at = ?
                   WHERE job_id = ? AND batch_no = ? AND status IN ('pending', 'failed')
                   RETURNING attempts""",
                [now, self.job_id, batch_no],
            )
        )
        if row is None or int(row[0]) != work.attempt:
            raise RuntimeError(f"batch {batch_no} of {self.job_id!r} is not claimable")
        con.execute(
            "INSERT INTO attempts VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, NULL)",
            [self.job_id, batch_no, work.attempt, self.lease.pid, self.lease.token, now],
        )

    def _write_for(self, works: Sequence[BatchWork], apply: Callable[[Any], T]) -> T:
        """`_write` a change to these batches, claiming first (same transaction) those not claimed yet."""
        if all(work.claimed for work in works):
            return self._write(apply)
        with contextlib.ExitStack() as held:
            # Writes of one batch may run at once (its enrichment calls): the first claims, the others wait.
            for work in sorted(works, key=lambda w: w.batch_no):
                held.enter_context(work.claiming)
            unclaimed = [work for work in works if not work.claimed]

            def claimed_then(con: Any) -> T:
                for work in unclaimed:
                    self._claim(con, work)
                return apply(con)

            result = self._write(claimed_then)
            for work in unclaimed:
                work.claimed = True
            return result

    def _manifest(self, batch_no: int) -> list[tuple[Any, ...]]:
        """The batch's records, read MANIFEST_READ_AHEAD batches at a time (one query instead of many)."""
        with self._manifests_lock:
            rows = self._manifests.pop(batch_no, None)
        if rows is not None:
            return rows
        fetched = self.store.query_rows(
            """SELECT batch_no, ordinal, record_id, content_hash, text, token_estimate, payload, media_ref FROM manifest
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
        with self.store.reading() as con:
            return lookup_vectors(con, self.vectors, embedder, hashes, free_origin=batch_mode_origin(self.job_id))

    def record_embeddings(
        self,
        work: BatchWork,
        embedder: CacheIdentity,
        hashes: list[str],
        vectors: Vectors,
        tokens_per_text: list[int],
        tokens_estimated: bool,
        cost: float,
        intent: str | None = None,
        media_tokens: int = 0,
        media_tokens_estimated: bool = False,
    ) -> None:
        """Persist freshly paid-for vectors and their cost, settling the call's intent. Called before the
        upsert. `media_tokens`: the part of the tokens that were images or document pages;
        `media_tokens_estimated`: that part was split by qsync's estimates, not reported by the API."""
        now = self.clock.now()
        tokens = int(sum(tokens_per_text))
        offsets = append_vectors(self.vectors, vectors)  # durable before the rows that point at them
        split_estimated = media_tokens_estimated and media_tokens > 0

        def apply(con: Any, ignore_existing: bool) -> None:
            insert_vectors(con, embedder, hashes, offsets, tokens_per_text, now, None, ignore_existing=ignore_existing)
            con.execute(
                """UPDATE batches SET embedded_texts = embedded_texts + ?, tokens = tokens + ?,
                       cost_usd = cost_usd + ?, tokens_estimated = tokens_estimated OR ?,
                       media_tokens = coalesce(media_tokens, 0) + ?,
                       media_tokens_estimated = coalesce(media_tokens_estimated, false) OR ?
                   WHERE job_id = ? AND batch_no = ?""",
                [
                    len(hashes),
                    tokens,
                    cost,
                    tokens_estimated,
                    media_tokens,
                    split_estimated,
                    self.job_id,
                    work.batch_no,
                ],
            )
            self._settle(con, intent)

        self._write_vectors(apply, work)

    def _write_vectors(self, apply: Callable[[Any, bool], None], work: BatchWork | None = None) -> None:
        """Commit rows of new vectors; if another job saved one of the keys meanwhile, again, keeping its."""
        works = [work] if work is not None else []
        try:
            self._write_for(works, lambda con: apply(con, False))
        except duckdb.ConstraintException:
            self._write_for(works, lambda con: apply(con, True))

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
        self,
        work: BatchWork,
        key: str,
        model: str,
        answer: str,
        tokens_in: int,
        tokens_out: int,
        cost: float,
        intent: str | None = None,
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
            self._settle(con, intent)

        self._write_for([work], apply)

    def complete(self, batches: Sequence[Completion]) -> None:
        """Mark batches done, in one transaction: Qdrant holds their points durably (see QdrantSink.durable)."""

        def apply(con: Any) -> None:
            now = self.clock.now()
            for done in batches:
                work = done.work
                con.execute(
                    """UPDATE batches SET status = 'done', finished_at = ?, duration_s = ?, last_error = NULL,
                           cache_hits = cache_hits + ?, saved_tokens = saved_tokens + ?, skipped_records = ?
                       WHERE job_id = ? AND batch_no = ?""",
                    [now, done.duration_s, done.cache_hits, done.saved_tokens, len(done.skips), self.job_id,
                     work.batch_no],
                )  # fmt: skip
                for i, reason in done.skips.items():
                    con.execute(
                        "INSERT INTO skipped VALUES (?, ?, ?, 'embed', ?, ?)",
                        [self.job_id, work.ordinals[i], work.record_ids[i], reason, now],
                    )
                self._end_attempt(con, work, now, "done", None)
            skipped = sum(len(done.skips) for done in batches)
            if skipped:
                con.execute(
                    "UPDATE jobs SET skipped_records = skipped_records + ? WHERE job_id = ?", [skipped, self.job_id]
                )
            self._record_points(con, batches, now)

        self._write_for([done.work for done in batches], apply)

    def _record_points(self, con: Any, batches: Sequence[Completion], now: Any) -> None:
        """What the collection now holds for these batches, in the transaction that marks them done."""
        kept = [(done.work, i) for done in batches for i in range(len(done.work.record_ids)) if i not in done.skips]
        ids = [work.record_ids[i] for work, i in kept]
        if not ids or not self.target:
            return
        table = pa.table(
            {
                "target": [self.target] * len(kept),
                "record_id": ids,
                "point_id": [point_id(r) for r in ids],
                "source_hash": [work.source_hashes[i] for work, i in kept],
                "vector_hash": [work.hashes[i] for work, i in kept],
                "embedder": [self.embedder_signature] * len(kept),
                "payload": [work.payloads[i] for work, i in kept],
                "job_id": [self.job_id] * len(kept),
                "updated_at": pa.array([now] * len(kept), pa.timestamp("us")),
            }
        )
        con.register("__qsync_points", table)
        try:
            if self._replaces_points:
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

        self._write_for([work], apply)

    def release(self, work: BatchWork) -> None:
        """Hand an unfinished batch back (clean stop): pending again, its paid vectors kept. A batch whose
        claim was never written is pending already."""
        if not work.claimed:
            return

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

    # -- Gemini Batch Mode jobs ------------------------------------------------------------------------

    def record_remote_job(self, name: str, hashes: list[str], intent: str) -> None:
        """A Batch Mode job was created: recorded at once, so a restart polls it instead of paying again.
        Its intent takes the job's name and stays open (unconfirmed spend) until its vectors are ingested."""

        def apply(con: Any) -> None:
            con.execute(
                "INSERT INTO remote_jobs (job_id, name, state, content_hashes, texts, submitted_at) "
                "VALUES (?, ?, 'submitted', ?, ?, ?)",
                [self.job_id, name, hashes, len(hashes), self.clock.now()],
            )
            con.execute(
                "UPDATE spend_intents SET intent_id = ? WHERE job_id = ? AND intent_id = ?", [name, self.job_id, intent]
            )

        self._write(apply)

    def fail_remote_job(self, name: str, error: str) -> None:
        def apply(con: Any) -> None:
            con.execute(
                "UPDATE remote_jobs SET state = 'failed', error = ?, finished_at = ? WHERE job_id = ? AND name = ?",
                [error, self.clock.now(), self.job_id, name],
            )
            self._close(con, name, "void")

        self._write(apply)

    def ingest_remote_job(
        self, name: str, embedder: CacheIdentity, hashes: list[str], vectors: Vectors, tokens: list[int], price: float
    ) -> None:
        """A Batch Mode job succeeded: its vectors into the cache, its tokens and cost (Batch Mode price)."""
        now = self.clock.now()
        total = int(sum(tokens))
        offsets = append_vectors(self.vectors, vectors)
        origin = batch_mode_origin(self.job_id)

        def apply(con: Any, ignore_existing: bool) -> None:
            insert_vectors(con, embedder, hashes, offsets, tokens, now, origin, ignore_existing=ignore_existing)
            con.execute(
                "UPDATE remote_jobs SET state = 'ingested', tokens = ?, cost_usd = ?, finished_at = ? "
                "WHERE job_id = ? AND name = ?",
                [total, total * price / 1e6, now, self.job_id, name],
            )
            self._settle(con, name)

        self._write_vectors(apply)

    # -- write-ahead for money ---------------------------------------------------------------------------

    def open_intent(
        self,
        kind: str,
        work: BatchWork | None,
        texts: int,
        tokens: int,
        cost: float,
        hashes: list[str] | None = None,
    ) -> str:
        """Record a paid call before it is sent: `tokens` and `cost` are what it can cost at most; `work`: the
        batch it is for (None: Batch Mode). Returns the intent's id, to settle (`record_*`) or close
        (`close_intent`) once the call ends."""
        intent = uuid.uuid4().hex
        batch_no = None if work is None else work.batch_no

        def apply(con: Any) -> None:
            con.execute(
                """INSERT INTO spend_intents (job_id, intent_id, batch_no, kind, texts, tokens, cost_usd, state,
                       content_hashes, lease_token, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, 'open', ?, ?, ?)""",
                [self.job_id, intent, batch_no, kind, texts, tokens, cost, hashes, self.lease.token, self.clock.now()],
            )

        self._write_for([] if work is None else [work], apply)
        return intent

    def close_intent(self, intent: str, state: str) -> None:
        """The call ended without an answer to save: 'void' (refused, so not billed) or 'unconfirmed' (it
        may have been billed: a timeout, a dropped connection)."""
        self._write(lambda con: self._close(con, intent, state))

    def _settle(self, con: Any, intent: str | None) -> None:
        if intent is not None:
            self._close(con, intent, "settled")

    def _close(self, con: Any, intent: str, state: str) -> None:
        con.execute(
            "UPDATE spend_intents SET state = ?, closed_at = ? WHERE job_id = ? AND intent_id = ?",
            [state, self.clock.now(), self.job_id, intent],
        )

    def count_unconfirmed(self, count_tokens: Callable[[list[str]], int], price_per_million: float) -> int:
        """Replace the upper bound of unconfirmed embedding calls by their exact token count (countTokens
        on the texts they sent). Returns how many intents were counted."""
        rows = self.store.query_rows(
            "SELECT intent_id, content_hashes FROM spend_intents "
            "WHERE job_id = ? AND kind = 'embed' AND state = 'unconfirmed' AND NOT counted",
            [self.job_id],
        )
        counted = 0
        for intent, hashes in rows:
            sent = self.store.query_rows(
                "SELECT any_value(text), bool_or(media_ref IS NOT NULL) FROM manifest WHERE job_id = ? AND "
                "content_hash IN (SELECT unnest(?::VARCHAR[])) GROUP BY content_hash",
                [self.job_id, list(hashes or [])],
            )
            # countTokens on the captions alone would undercount a media call: its upper bound stays.
            if not sent or any(media for _, media in sent):
                continue
            texts = [str(t) for t, _ in sent]
            tokens = int(count_tokens(texts))

            def apply(con: Any, intent: str = intent, tokens: int = tokens) -> None:
                con.execute(
                    "UPDATE spend_intents SET tokens = ?, cost_usd = ?, counted = true WHERE job_id = ? AND intent_id = ?",
                    [tokens, tokens * price_per_million / 1e6, self.job_id, intent],
                )

            self._write(apply)
            counted += 1
        return counted

    def last_error(self) -> str:
        errors = self.store.query_rows(
            "SELECT last_error FROM batches WHERE job_id = ? AND status = 'failed' ORDER BY finished_at DESC LIMIT 1",
            [self.job_id],
        )
        return str(errors[0][0]) if errors else "unknown"
