"""The writes of one run (LeasedJob): group commit, claims written with a batch's first write, the manifest
read ahead, a lost lease that writes nothing, and a vector two jobs saved at once."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from qsync_testing import make_records, wait_for

from qsync.app.jobs import create_job
from qsync.clock import SYSTEM_CLOCK
from qsync.embedders.hashing import HashingEmbedder
from qsync.errors import LeaseLost, NotClaimable
from qsync.ledger import batches as ledger_batches
from qsync.ledger.batches import MANIFEST_READ_AHEAD, BatchWork, Completion
from qsync.ledger.cache import cache_key, lookup_vectors
from qsync.ledger.lease import release_lease, take_lease
from qsync.ledger.ledger import Ledger
from qsync.ledger.run import LeasedJob
from qsync.ledger.states import JobState


class CountingLedger(Ledger):
    """A Ledger that counts its transactions."""

    transactions = 0

    @contextlib.contextmanager
    def transaction(self, *, keeps_open: bool = True) -> Iterator[Any]:
        self.transactions += 1
        with super().transaction(keeps_open=keeps_open) as con:
            yield con


@pytest.fixture
def job(tmp_path: Path) -> Iterator[LeasedJob]:
    yield _job(tmp_path)


def _job(tmp_path: Path, batch_size: int = 10) -> LeasedJob:
    """A job of 100 records (10 batches of 10), its lease taken; `job.ledger.transactions` counts from here."""
    db = tmp_path / "q.duckdb"
    create_job(pd.DataFrame(make_records(100)), collection="c", job="g", db=db, dimensions=8, batch_size=batch_size)
    ledger = CountingLedger(db)
    lease, _ = take_lease(ledger, "g", SYSTEM_CLOCK, 60, os.getpid())
    ledger.transactions = 0
    return LeasedJob(ledger, lease, SYSTEM_CLOCK, "", "")


def _transactions(job: LeasedJob) -> int:
    assert isinstance(job.ledger, CountingLedger)
    return job.ledger.transactions


def _paid(job: LeasedJob, work: BatchWork) -> str:
    """The batch's first paid call is recorded: its claim is written with the intent."""
    return job.open_intent("embed", work, len(work.hashes), 100, 0.001, work.hashes)


def _write_together(job: LeasedJob, works: dict[int, BatchWork]) -> dict[int, BatchWork | BaseException]:
    """Write each batch's first intent (and so its claim) from one thread per batch, all queued behind a commit
    in progress, then let them go at once."""
    results: dict[int, BatchWork | BaseException] = {}
    release = threading.Event()

    def write(batch_no: int) -> None:
        try:
            _paid(job, works[batch_no])
            results[batch_no] = works[batch_no]
        except BaseException as exc:
            results[batch_no] = exc

    holder = threading.Thread(target=job.commit.write, args=(lambda con: release.wait(30),))
    holder.start()  # a commit in progress: the writes below queue up meanwhile
    wait_for(lambda: job.commit.queued == 0 and holder.is_alive(), timeout=10)
    threads = [threading.Thread(target=write, args=(b,)) for b in works]
    for t in threads:
        t.start()
    wait_for(lambda: job.commit.queued == len(works), timeout=10)
    release.set()
    for t in [holder, *threads]:
        t.join(timeout=30)
    return results


def _statuses(job: LeasedJob) -> dict[int, tuple[str, int]]:
    rows = job.ledger.query_rows("SELECT batch_no, status, attempts FROM batches WHERE job_id = 'g'")
    return {int(b): (str(s), int(a)) for b, s, a in rows}


def test_queued_writes_commit_in_one_transaction_and_each_caller_gets_its_own_result(job: LeasedJob) -> None:
    works = {b: job.claim(b) for b in range(8)}
    results = _write_together(job, works)
    assert _transactions(job) == 2  # the commit in progress, then eight claims with their intents in one
    for batch_no, work in results.items():
        assert isinstance(work, BatchWork)
        assert work.batch_no == batch_no and work.attempt == 1
        assert work.record_ids == [f"r{i}" for i in range(batch_no * 10, batch_no * 10 + 10)]
    statuses = _statuses(job)
    assert all(statuses[b] == ("running", 1) for b in range(8))
    assert statuses[8] == statuses[9] == ("pending", 0)


def test_a_failing_write_fails_only_its_caller_and_the_others_commit(job: LeasedJob) -> None:
    taken, stale = job.claim(3), job.claim(3)  # two takes of batch 3 before either is written
    _paid(job, taken)  # the first is written: batch 3 is running, and the stale take can no longer claim it
    before = _transactions(job)
    results = _write_together(job, {1: job.claim(1), 2: job.claim(2), 3: stale, 4: job.claim(4)})
    assert isinstance(results[3], NotClaimable) and "not claimable" in str(results[3])
    assert all(isinstance(results[b], BatchWork) for b in (1, 2, 4))
    # the held commit, the group that rolled back, then each write on its own
    assert _transactions(job) == before + 1 + 1 + 4
    statuses = _statuses(job)
    assert [statuses[b] for b in (1, 2, 3, 4)] == [("running", 1)] * 4  # batch 3: still the one claim
    assert statuses[5] == ("pending", 0)


def test_a_lost_lease_fails_every_queued_write_and_writes_nothing(job: LeasedJob) -> None:
    job.ledger.write(lambda con: con.execute("UPDATE jobs SET lease_token = 'someone-else' WHERE job_id = 'g'"))
    vector_bytes = job.ledger.vectors.size()
    works = {b: job.claim(b) for b in range(3)}
    with pytest.raises(LeaseLost):
        job.record_embeddings(works[0], HashingEmbedder(dimensions=8), works[0].hashes[:1],
                              np.ones((1, 8), np.float32), [3], False, 0.0)  # fmt: skip
    for work in (works[1], works[2]):
        with pytest.raises(LeaseLost):
            _paid(job, work)
    assert all(status == ("pending", 0) for status in _statuses(job).values())
    assert job.ledger.vectors.size() == vector_bytes  # not even the vectors' bytes were written


def test_a_write_needing_no_answer_is_one_round_trip_to_the_host(
    job: LeasedJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lease check waits for no answer (the host fails the transaction if the lease is gone): an intent for a
    # claimed batch is begin + statements + commit in one request; a paid batch's claims ask once, then commit.
    work = job.claim(0)
    _paid(job, work)  # the claim is written with it (its check asks the host: one round trip more)
    sent: list[str] = []
    connection = job.ledger._connection
    original = connection.request

    def request(*parts: Any) -> Any:
        sent.append(parts[0])
        return original(*parts)

    monkeypatch.setattr(connection, "request", request)
    assert job.claim(1).attempt == 1 and sent == []  # its state was read ahead with its records, with batch 0's
    _paid(job, work)
    assert sent == ["batch"]
    sent.clear()
    cached, elsewhere = job.claim_texts(HashingEmbedder(8), [f"h{i}" for i in range(5)])
    assert not cached.found and elsewhere == set()
    # begin, lease check, and the claims' and the cache's queries together; then the insert and commit
    assert sent == ["batch", "batch"]


def test_the_batch_records_are_read_ahead_and_served_once(job: LeasedJob, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[tuple[int, int]] = []
    original = ledger_batches.read_manifest

    def counting(con: Any, job_id: str, first: int, last: int) -> Any:
        reads.append((first, last))
        return original(con, job_id, first, last)

    monkeypatch.setattr(ledger_batches, "read_manifest", counting)
    works = [job.claim(b) for b in range(10)]
    assert len(reads) == 1  # ten batches, one manifest query
    assert [w.record_ids[0] for w in works] == [f"r{b * 10}" for b in range(10)]
    _paid(job, works[4])
    job.release(works[4])
    again = job.claim(4)  # served from the manifest again, not a stale copy
    assert again.attempt == 2 and again.record_ids == works[4].record_ids
    assert len(reads) == 2


def test_the_read_ahead_holds_at_most_one_read_of_batches(tmp_path: Path) -> None:
    job = _job(tmp_path, batch_size=1)  # 100 batches of one record
    for batch_no in range(0, 100, 20):  # scattered claims, as when only failed batches are retried
        work = job.claim(batch_no)
        assert work.record_ids == [f"r{batch_no}"]
        assert job.prefetched <= MANIFEST_READ_AHEAD - 1


@pytest.mark.parametrize("kind", ["complete", "fail", "release"])
def test_every_transition_goes_through_the_group_commit(job: LeasedJob, kind: str) -> None:
    work = job.claim(0)
    _paid(job, work)
    before = _transactions(job)
    if kind == "complete":
        job.complete([Completion(work, cache_hits=0, saved_tokens=0, duration_s=0.1)])
    elif kind == "fail":
        job.fail(work, "boom")
    else:
        job.release(work)
    assert _transactions(job) == before + 1
    expected = {"complete": "done", "fail": "failed", "release": "pending"}[kind]
    assert _statuses(job)[0][0] == expected


def test_a_claim_is_written_with_the_batch_first_write_and_not_at_all_before_it(job: LeasedJob) -> None:
    cached, stopped = job.claim(0), job.claim(1)
    assert _transactions(job) == 0 and _statuses(job)[0] == ("pending", 0)
    # A batch whose vectors all came from the cache: claimed and done in one transaction.
    job.complete([Completion(cached, cache_hits=10, saved_tokens=0, duration_s=0.1)])
    assert _transactions(job) == 1 and _statuses(job)[0] == ("done", 1)
    attempts = job.ledger.query_rows("SELECT attempt, outcome FROM attempts WHERE job_id = 'g' AND batch_no = 0")
    assert attempts == [(1, "done")]
    # Stopped before its first write: nothing to hand back, and no attempt was counted.
    job.release(stopped)
    assert _transactions(job) == 1 and _statuses(job)[1] == ("pending", 0)


def test_a_vector_another_job_saved_meanwhile_keeps_the_first_copy(job: LeasedJob) -> None:
    """Two jobs that embedded the same text at once both persist it: the second plain INSERT hits the cache's key
    for real, is retried keeping the first copy, and the batch's figures still count it."""
    embedder = HashingEmbedder(dimensions=8)
    first_work, second_work = job.claim(0), job.claim(1)
    text_hash = first_work.hashes[0]
    first = np.full((1, 8), 1.0, dtype=np.float32)
    job.record_embeddings(first_work, embedder, [text_hash], first, [3], False, 0.0)
    job.record_embeddings(second_work, embedder, [text_hash], np.full((1, 8), 2.0, np.float32), [3], False, 0.0)
    with job.ledger.reading() as con:
        found = lookup_vectors(con, job.ledger.vectors, embedder, [text_hash])
    np.testing.assert_array_equal(found.found[text_hash][0], first[0])
    rows = job.ledger.query_rows("SELECT batch_no, embedded_texts FROM batches WHERE job_id = 'g' AND batch_no < 2")
    assert sorted(rows) == [(0, 1), (1, 1)]  # both calls were paid: both are counted


# -- texts paid for right now, across processes ---------------------------------------------------------------------


def _second_run(tmp_path: Path, first: LeasedJob) -> LeasedJob:
    """Another job on the same file, its lease taken: the other process of a pair."""
    create_job(pd.DataFrame(make_records(100)), collection="c2", job="h", db=first.ledger.path, dimensions=8,
               batch_size=10)  # fmt: skip
    ledger = Ledger(first.ledger.path)
    lease, _ = take_lease(ledger, "h", SYSTEM_CLOCK, 60, os.getpid())
    return LeasedJob(ledger, lease, SYSTEM_CLOCK, "", "")


def _claims(job: LeasedJob) -> int:
    return int(job.ledger.query_rows("SELECT count(*) FROM text_claims")[0][0])


def test_a_claimed_text_is_waited_for_until_its_vector_is_saved_and_its_claim_leaves_when_its_batch_is_done(
    tmp_path: Path, job: LeasedJob
) -> None:
    other = _second_run(tmp_path, job)
    embedder = HashingEmbedder(8)
    work = job.claim(0)
    keys = [cache_key(embedder, h) for h in work.hashes]
    assert job.claim_texts(embedder, work.hashes)[1] == set()
    cached, elsewhere = other.claim_texts(embedder, work.hashes)
    assert not cached.found and elsewhere == set(work.hashes)  # being paid for by the first: the second waits
    assert other.claimed_elsewhere(keys) == set(keys)
    vectors = embedder.embed(work.texts)
    job.record_embeddings(work, embedder, work.hashes, vectors.vectors, vectors.tokens_per_text, False, 0.0)
    # Saved a moment ago, after the second looked: taken from the cache in its claim, never claimed (and paid), and
    # not waited for, though the first batch's claims stay until it is done.
    cached, elsewhere = other.claim_texts(embedder, work.hashes)
    assert set(cached.found) == set(work.hashes) and elsewhere == set() and _claims(job) == len(keys)
    assert np.array_equal(np.stack([cached.found[h][0] for h in work.hashes]), vectors.vectors)
    job.complete([Completion(work, 0, 0, 0.1, {}, keys)])
    assert other.claimed_elsewhere(keys) == set() and _claims(job) == 0  # done: its claims left with it


@pytest.mark.parametrize("ending", ["failed", "released"])
def test_a_batch_that_ends_unfinished_after_paying_lets_go_of_its_claims(job: LeasedJob, ending: str) -> None:
    """A batch's claims stay until it ends (its vectors are in the cache meanwhile): failed after paying (its points
    refused, say) or handed back at a pause, it lets go of them in that transaction, not at the run's end."""
    embedder = HashingEmbedder(8)
    work = job.claim(0)
    keys = [cache_key(embedder, h) for h in dict.fromkeys(work.hashes)]
    job.claim_texts(embedder, work.hashes)
    vectors = embedder.embed(work.texts)
    job.record_embeddings(work, embedder, work.hashes, vectors.vectors, vectors.tokens_per_text, False, 0.0)
    assert _claims(job) == len(keys)
    if ending == "failed":
        job.fail(work, "Qdrant refused the points", keys)
    else:
        job.release(work, keys)
    assert _claims(job) == 0
    assert _statuses(job)[0][0] == ("failed" if ending == "failed" else "pending")


def test_a_run_that_ends_lets_go_of_its_claims(tmp_path: Path, job: LeasedJob) -> None:
    other = _second_run(tmp_path, job)
    embedder, hashes = HashingEmbedder(8), [f"h{i}" for i in range(5)]
    assert job.claim_texts(embedder, hashes)[1] == set() and _claims(job) == 5
    release_lease(job.ledger, job.lease, SYSTEM_CLOCK, JobState.PAUSED, "paused")
    assert _claims(job) == 0
    assert other.claim_texts(embedder, hashes)[1] == set()  # free to claim: nobody is paying for them any more


def test_a_claim_takes_cached_vectors_and_claims_those_the_vector_file_lost(job: LeasedJob) -> None:
    """A paid batch looks in the cache and claims in one transaction: what the cache holds is taken from it; a row
    whose bytes the vector file no longer holds is forgotten there, and its text claimed (to be paid once more)."""
    embedder = HashingEmbedder(8)
    work = job.claim(0)
    vectors = embedder.embed(work.texts)
    job.record_embeddings(work, embedder, work.hashes, vectors.vectors, vectors.tokens_per_text, False, 0.0)
    kept = 6
    os.truncate(job.ledger.vectors.path, job.ledger.vectors.size() - (len(work.hashes) - kept) * 8 * 4)
    cached, elsewhere = job.claim_texts(embedder, work.hashes)
    assert set(cached.found) == set(work.hashes[:kept]) and elsewhere == set()
    assert len(cached.lost) == len(work.hashes) - kept and job.lost_vectors == len(cached.lost)
    assert _claims(job) == len(work.hashes) - kept  # the lost ones, claimed to be embedded again
    assert job.ledger.query_rows("SELECT count(*) FROM embeddings")[0][0] == kept  # forgotten in that transaction
