"""A batch's state, and the SQL of its transitions (each runs inside a lease-checked transaction, run.py).

Batch states:

    pending --claim--> running --complete--> done
                       running --fail------> failed --claim--> running
                       running --release---> pending        (clean stop, or a dead owner's leftovers)

A batch's claim (running, attempt + 1) is written with its first write: the intent of its first paid call, or
its completion. A crash before that leaves it pending, and nothing was spent on it yet.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from qsync.errors import NotClaimable
from qsync.spec.target import point_id
from qsync.sql import first_row

CLAIMABLE = ("pending", "failed")  # the states a batch can be claimed from (for a new attempt)
MANIFEST_READ_AHEAD = 16  # batches whose records one manifest query loads


def point_key(record_id: str, chunk_no: int) -> str:
    return record_id if not chunk_no else f"{record_id}\x00{chunk_no}"


def load_payload(text: str) -> dict[str, Any]:
    """A manifest row's payload (JSON) as a dict."""
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


@dataclass
class BatchWork:
    """A claimed batch: its records, as the manifest holds them."""

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
    chunk_nos: list[int] = field(default_factory=list)  # which chunk of its record each text is (0 of 1: whole)
    chunk_counts: list[int] = field(default_factory=list)
    payload_hashes: list[str | None] = field(default_factory=list)  # each payload as planned (before enrichment)
    claimed: bool = False  # the claim (running, attempt) is committed; see LeasedJob.claim
    claiming: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.source_hashes:
            self.source_hashes = list(self.hashes)
        if not self.media_refs:
            self.media_refs = [None] * len(self.hashes)
        if not self.chunk_nos:
            self.chunk_nos = [0] * len(self.hashes)
            self.chunk_counts = [1] * len(self.hashes)
        if not self.payload_hashes:
            self.payload_hashes = [None] * len(self.hashes)

    @property
    def point_keys(self) -> list[str]:
        """What each point's id is made from (spec.target.point_id): its record's id, and its chunk's number after
        the first (chunk 0 keeps the record's own point: a record that grows past the limit keeps its id)."""
        return [point_key(r, n) for r, n in zip(self.record_ids, self.chunk_nos, strict=True)]

    def records_among(self, indexes: Iterable[int]) -> int:
        """How many records the texts at `indexes` belong to."""
        return len({self.ordinals[i] for i in indexes})


@dataclass(frozen=True)
class Completion:
    """A batch whose points Qdrant holds durably, to be marked done (LeasedJob.complete)."""

    work: BatchWork
    cache_hits: int
    saved_tokens: int
    duration_s: float
    skips: dict[int, str] = field(default_factory=dict)  # record index -> why the embedder refused it
    claims: list[str] = field(default_factory=list)  # text claims of its paid texts, let go when it is done


def next_attempt(job_id: str, batch_no: int, state: tuple[int, str] | None) -> int:
    """The attempt a claim of the batch would be, from its (attempts, status) as read with its records; NotClaimable
    unless it is pending or failed. (The claim's write checks it again: batches.claim.)"""
    if state is None or state[1] not in CLAIMABLE:
        raise NotClaimable(f"batch {batch_no} of {job_id!r} is not claimable")
    return int(state[0]) + 1


Records = list[tuple[Any, ...]]


def read_manifest(con: Any, job_id: str, first: int, last: int) -> dict[int, tuple[Records, tuple[int, str]]]:
    """batch_no -> its texts (ordinal, record_id, content_hash, text, token_estimate, payload, media_ref, chunk_no,
    chunk_count, payload_hash), and its (attempts, status): one query for a batch's claim and its records. The
    payload's hash is computed here (older plans stored it in the manifest; a plan no longer does)."""
    rows = con.execute(
        """SELECT m.batch_no, ordinal, record_id, content_hash, text, token_estimate, payload, media_ref,
               coalesce(chunk_no, 0), coalesce(chunk_count, 1),
               coalesce(payload_hash, sha256(payload::VARCHAR)), b.attempts, b.status
           FROM manifest m JOIN batches b ON b.job_id = m.job_id AND b.batch_no = m.batch_no
           WHERE m.job_id = ? AND m.batch_no BETWEEN ? AND ? ORDER BY m.batch_no, ordinal, chunk_no""",
        [job_id, first, last],
    ).fetchall()
    by_batch: dict[int, tuple[Records, tuple[int, str]]] = {}
    for row in rows:
        by_batch.setdefault(int(row[0]), ([], (int(row[11]), str(row[12]))))[0].append(tuple(row[1:11]))
    if first not in by_batch:  # a batch with no records in the manifest: its state alone
        state = first_row(con.execute("SELECT attempts, status FROM batches WHERE job_id = ? AND batch_no = ?",
                                      [job_id, first]))  # fmt: skip
        if state is not None:
            by_batch[first] = ([], (int(state[0]), str(state[1])))
    return by_batch


def work_of(batch_no: int, attempt: int, records: list[tuple[Any, ...]]) -> BatchWork:
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
        chunk_nos=[int(r[7]) for r in records],
        chunk_counts=[int(r[8]) for r in records],
        payload_hashes=[r[9] for r in records],
    )


def claim(con: Any, job_id: str, works: Sequence[BatchWork], pid: int, token: str, now: Any) -> None:
    """Claim these batches for their attempts (running, attempts + 1, an attempts row each), in two statements
    whatever their number. NotClaimable if one of them is no longer pending or failed at the attempt read."""
    if not works:
        return
    if len({work.batch_no for work in works}) < len(works):  # two takes of one batch: the first claims it, alone
        raise NotClaimable(f"batch of {job_id!r} claimed twice at once")
    rows = con.execute(
        f"""UPDATE batches SET status = 'running', attempts = attempts + 1, started_at = ?
            WHERE job_id = ? AND batch_no IN ({", ".join(str(int(w.batch_no)) for w in works)})
              AND status IN ('pending', 'failed')
            RETURNING batch_no, attempts""",
        [now, job_id],
    ).fetchall()
    attempts = {int(batch_no): int(attempt) for batch_no, attempt in rows}
    for work in works:
        if attempts.get(work.batch_no) != work.attempt:
            raise NotClaimable(f"batch {work.batch_no} of {job_id!r} is not claimable")
    con.execute(
        """INSERT INTO attempts SELECT ?, unnest(?::BIGINT[]), unnest(?::INTEGER[]), ?, ?, ?, NULL, NULL, NULL""",
        [job_id, [w.batch_no for w in works], [w.attempt for w in works], pid, token, now],
    )


def end_attempt(con: Any, job_id: str, work: BatchWork, token: str, now: Any, outcome: str, error: str | None) -> None:
    con.execute(
        """UPDATE attempts SET finished_at = ?, outcome = ?, error = ?
           WHERE job_id = ? AND batch_no = ? AND attempt = ? AND lease_token = ?""",
        [now, outcome, error, job_id, work.batch_no, work.attempt, token],
    )


def mark_done(con: Any, job_id: str, token: str, dones: Sequence[Completion], now: Any) -> None:
    """Mark batches done, their attempts ended and their refused records listed: one statement each for the whole
    group (a statement costs the host 1 to 3 ms whatever its size)."""
    if not dones:
        return
    numbers = [done.work.batch_no for done in dones]
    con.execute(
        """UPDATE batches SET status = 'done', finished_at = ?, duration_s = n.d, last_error = NULL,
               cache_hits = cache_hits + n.h, saved_tokens = saved_tokens + n.s, skipped_records = n.k
           FROM (SELECT unnest(?::INTEGER[]) AS b, unnest(?::DOUBLE[]) AS d, unnest(?::BIGINT[]) AS h,
                        unnest(?::BIGINT[]) AS s, unnest(?::BIGINT[]) AS k) n
           WHERE batches.job_id = ? AND batches.batch_no = n.b""",
        [now, numbers, [done.duration_s for done in dones], [done.cache_hits for done in dones],
         [done.saved_tokens for done in dones], [done.work.records_among(done.skips) for done in dones], job_id],
    )  # fmt: skip
    con.execute(
        """UPDATE attempts SET finished_at = ?, outcome = 'done', error = NULL
           FROM (SELECT unnest(?::INTEGER[]) AS b, unnest(?::INTEGER[]) AS a) n
           WHERE attempts.job_id = ? AND attempts.batch_no = n.b AND attempts.attempt = n.a AND lease_token = ?""",
        [now, numbers, [done.work.attempt for done in dones], job_id, token],
    )
    skips = [(done.work.ordinals[i], done.work.record_ids[i], why) for done in dones for i, why in done.skips.items()]
    if skips:
        ordinals, ids, reasons = (list(column) for column in zip(*skips, strict=True))
        con.execute(
            "INSERT INTO skipped (job_id, ordinal, record_id, stage, reason, created_at) "
            "SELECT ?, unnest(?::BIGINT[]), unnest(?::VARCHAR[]), 'embed', unnest(?::VARCHAR[]), ?",
            [job_id, ordinals, ids, reasons, now],
        )


def mark_failed(con: Any, job_id: str, work: BatchWork, error: str, now: Any) -> None:
    con.execute(
        "UPDATE batches SET status = 'failed', last_error = ?, finished_at = ? WHERE job_id = ? AND batch_no = ?",
        [error, now, job_id, work.batch_no],
    )


def mark_pending(con: Any, job_id: str, work: BatchWork) -> None:
    con.execute(
        "UPDATE batches SET status = 'pending' WHERE job_id = ? AND batch_no = ? AND status = 'running'",
        [job_id, work.batch_no],
    )


@dataclass(frozen=True)
class OldRows:
    """Where a batch's records' earlier `points` rows were when the run started: rowids `low` to `high`, `count` rows."""

    low: int
    high: int
    count: int


@dataclass(frozen=True)
class Replacing:
    """The job's batches with records the target already held points for when the run started (a re-sync's changed
    records, a publish over an earlier one): completing one deletes those rows first. Their rowids let that delete
    read only the row groups that hold them, and the rows appended since the run started (`appended_from` on),
    instead of the whole table (40 - 150 ms a completion at 2M points: 2 of the 9 s the ledger worked in a re-sync of
    20,000 changed records); their count tells whether all were found there. A checkpoint may move rows (DuckDB
    compacts row groups with many deletions): a delete that finds fewer scans the whole table, as before. (Left:
    another job writing the same points meanwhile, into rows a checkpoint moved below `appended_from`.)"""

    old: dict[int, OldRows]
    appended_from: int

    def __contains__(self, batch_no: object) -> bool:
        return batch_no in self.old

    def rows_of(self, batch_nos: Iterable[int]) -> OldRows | None:
        """The rows of these batches together (None: none of them replaces anything)."""
        found = [self.old[n] for n in batch_nos if n in self.old]
        if not found:
            return None
        return OldRows(min(r.low for r in found), max(r.high for r in found), sum(r.count for r in found))


def record_points(
    con: Any, job_id: str, target: str, signature: str, batches: Sequence[Completion], now: Any, replacing: Replacing
) -> None:
    """What the collection now holds for these batches, in the transaction that marks them done. Batches in
    `replacing`: the target holds rows for their points already (a re-sync), which are deleted first."""
    kept = [(done.work, i) for done in batches for i in range(len(done.work.record_ids)) if i not in done.skips]
    ids = [work.record_ids[i] for work, i in kept]
    if not ids or not target:
        return
    table = pa.table(
        {
            "target": [target] * len(kept),
            "record_id": ids,
            "point_id": [point_id(point_key(work.record_ids[i], work.chunk_nos[i])) for work, i in kept],
            "source_hash": [work.source_hashes[i] for work, i in kept],
            "vector_hash": [work.hashes[i] for work, i in kept],
            "embedder": [signature] * len(kept),
            "payload": [work.payloads[i] for work, i in kept],
            "job_id": [job_id] * len(kept),
            "updated_at": pa.array([now] * len(kept), pa.timestamp("us")),
            "chunk_no": pa.array([work.chunk_nos[i] for work, i in kept], pa.int32()),
            "payload_hash": pa.array([work.payload_hashes[i] for work, i in kept], pa.string()),
        }
    )
    con.register("__qsync_points", table)
    try:
        old = replacing.rows_of(done.work.batch_no for done in batches)
        if old is not None:
            _delete_old_rows(con, target, old, replacing.appended_from)
        con.execute("INSERT INTO points BY NAME SELECT * FROM __qsync_points")
    finally:
        con.unregister("__qsync_points")


def _delete_old_rows(con: Any, target: str, old: OldRows, appended_from: int) -> None:
    """Delete the target's rows of the points in __qsync_points: where they were when the run started, then among
    the rows appended since (another job's); the whole table instead if fewer than counted were where they were (a
    checkpoint moved them, or the embedder skipped one of the records)."""
    where = "target = ? AND point_id IN (SELECT point_id FROM __qsync_points)"
    found = first_row(con.execute(f"DELETE FROM points WHERE {where} AND rowid BETWEEN ? AND ?",
                                  [target, old.low, old.high]))  # fmt: skip
    if found is None or int(found[0]) != old.count:
        con.execute(f"DELETE FROM points WHERE {where}", [target])
    else:
        con.execute(f"DELETE FROM points WHERE {where} AND rowid >= ?", [target, appended_from])


def batches_replacing_points(con: Any, job_id: str, target: str) -> Replacing:
    """The job's batches with points the target holds rows for, and where those rows are (see Replacing); a
    re-sync's new records are in none. One join of the job's manifest with the points table, when the run starts."""
    if not target:
        return Replacing({}, 0)
    rows = con.execute(
        """SELECT m.batch_no, min(p.rowid), max(p.rowid), count(*)
           FROM manifest m JOIN points p
             ON p.target = ? AND p.record_id = m.record_id AND coalesce(p.chunk_no, 0) = coalesce(m.chunk_no, 0)
           WHERE m.job_id = ? GROUP BY m.batch_no""",
        [target, job_id],
    ).fetchall()
    appended = first_row(con.execute("SELECT coalesce(max(rowid), -1) + 1 FROM points"))
    assert appended is not None
    return Replacing({int(r[0]): OldRows(int(r[1]), int(r[2]), int(r[3])) for r in rows}, int(appended[0]))
