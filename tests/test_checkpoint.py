"""The checkpoint's group commit: writes that queue while another commits go into one transaction, and
each caller still gets its own result, or its own error."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from qsync_testing import make_records, wait_for

import qsync
from qsync import checkpoint as cp
from qsync.checkpoint import MANIFEST_READ_AHEAD, BatchWork, Checkpoint, Completion
from qsync.clock import SYSTEM_CLOCK
from qsync.errors import LeaseLost
from qsync.store import open_store


def _ledger(tmp_path: Path, batch_size: int = 10) -> tuple[Checkpoint, list[int]]:
    """A job of 100 records (10 batches of 10), its lease taken; returns the ledger and a transaction count."""
    db = tmp_path / "q.duckdb"
    qsync.create_job(
        pd.DataFrame(make_records(100)), collection="c", job="g", db=db, dimensions=8, batch_size=batch_size
    )
    store = open_store(db)
    lease, _ = cp.acquire_lease(store, "g", SYSTEM_CLOCK, 60, os.getpid())
    transactions = [0]
    opened = store.transaction

    @contextlib.contextmanager
    def counted() -> Iterator[Any]:
        transactions[0] += 1
        with opened() as con:
            yield con

    store.transaction = counted  # type: ignore[method-assign]
    return Checkpoint(store, lease, SYSTEM_CLOCK, "", ""), transactions


def _paid(ledger: Checkpoint, work: BatchWork) -> str:
    """The batch's first paid call is recorded: its claim is written with the intent."""
    return ledger.open_intent("embed", work, len(work.hashes), 100, 0.001, work.hashes)


def _claim_together(ledger: Checkpoint, batch_nos: list[int]) -> dict[int, BatchWork | BaseException]:
    """Take each batch, then write its first intent (and so its claim) from one thread per batch, all
    queued behind a held commit, then let them go at once."""
    works = {b: ledger.claim(b) for b in batch_nos}
    results: dict[int, BatchWork | BaseException] = {}

    def write(batch_no: int) -> None:
        try:
            _paid(ledger, works[batch_no])
            results[batch_no] = works[batch_no]
        except BaseException as exc:
            results[batch_no] = exc

    with ledger._committer:  # as if another group were committing: the writes queue up meanwhile
        threads = [threading.Thread(target=write, args=(b,)) for b in batch_nos]
        for t in threads:
            t.start()
        wait_for(lambda: len(ledger._queued) == len(batch_nos), timeout=10)
    for t in threads:
        t.join(timeout=30)
    return results


def _statuses(ledger: Checkpoint) -> dict[int, tuple[str, int]]:
    rows = ledger.store.query_rows("SELECT batch_no, status, attempts FROM batches WHERE job_id = 'g'")
    return {int(b): (str(s), int(a)) for b, s, a in rows}


def test_queued_writes_commit_in_one_transaction_and_each_caller_gets_its_own_result(tmp_path: Path) -> None:
    ledger, transactions = _ledger(tmp_path)
    results = _claim_together(ledger, list(range(8)))
    assert transactions[0] == 1  # eight claims with their intents, one lease check, one commit
    for batch_no, work in results.items():
        assert isinstance(work, BatchWork)
        assert work.batch_no == batch_no and work.attempt == 1
        assert work.record_ids == [f"r{i}" for i in range(batch_no * 10, batch_no * 10 + 10)]
    statuses = _statuses(ledger)
    assert all(statuses[b] == ("running", 1) for b in range(8))
    assert statuses[8] == statuses[9] == ("pending", 0)


def test_a_failing_write_fails_only_its_caller_and_the_others_commit(tmp_path: Path) -> None:
    ledger, transactions = _ledger(tmp_path)
    taken = ledger.claim(3)

    def claim_3_first(sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        rows = original(sql, params)
        if "FROM batches" in sql and params == ["g", 3]:
            _paid(ledger, taken)  # meanwhile batch 3 was claimed and is running: this claim must fail
        return rows

    original = ledger.store.query_rows
    ledger.store.query_rows = claim_3_first  # type: ignore[method-assign]
    results = _claim_together(ledger, [1, 2, 3, 4])
    assert isinstance(results[3], RuntimeError) and "not claimable" in str(results[3])
    assert all(isinstance(results[b], BatchWork) for b in (1, 2, 4))
    # the group rolled back, then each write was committed on its own (after the one that took batch 3)
    assert transactions[0] == 1 + 1 + 4
    statuses = _statuses(ledger)
    assert [statuses[b] for b in (1, 2, 3, 4)] == [("running", 1)] * 4  # batch 3: still the one claim
    assert statuses[5] == ("pending", 0)


def test_a_lost_lease_fails_every_queued_write_and_writes_nothing(tmp_path: Path) -> None:
    ledger, _ = _ledger(tmp_path)
    with ledger.store.transaction() as con:  # another runner took the job over
        con.execute("UPDATE jobs SET lease_token = 'someone-else' WHERE job_id = 'g'")
    results = _claim_together(ledger, [0, 1, 2])
    assert all(isinstance(r, LeaseLost) for r in results.values())
    assert all(status == ("pending", 0) for status in _statuses(ledger).values())


def test_the_batch_records_are_read_ahead_and_served_once(tmp_path: Path) -> None:
    ledger, _ = _ledger(tmp_path)
    queries: list[str] = []
    original = ledger.store.query_rows

    def counting(sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        if "FROM manifest" in sql:
            queries.append(sql)
        return original(sql, params)

    ledger.store.query_rows = counting  # type: ignore[method-assign]
    works = [ledger.claim(b) for b in range(10)]
    assert len(queries) == 1  # ten batches, one manifest query
    assert [w.record_ids[0] for w in works] == [f"r{b * 10}" for b in range(10)]
    _paid(ledger, works[4])
    ledger.release(works[4])
    again = ledger.claim(4)  # served from the manifest again, not a stale copy
    assert again.attempt == 2 and again.record_ids == works[4].record_ids
    assert len(queries) == 2


def test_the_read_ahead_holds_at_most_one_read_of_batches(tmp_path: Path) -> None:
    ledger, _ = _ledger(tmp_path, batch_size=1)  # 100 batches of one record
    for batch_no in range(0, 100, 20):  # scattered claims, as when only failed batches are retried
        work = ledger.claim(batch_no)
        assert work.record_ids == [f"r{batch_no}"]
        assert len(ledger._manifests) <= MANIFEST_READ_AHEAD - 1


@pytest.mark.parametrize("kind", ["complete", "fail", "release"])
def test_every_transition_goes_through_the_group_commit(tmp_path: Path, kind: str) -> None:
    ledger, transactions = _ledger(tmp_path)
    work = ledger.claim(0)
    _paid(ledger, work)
    before = transactions[0]
    if kind == "complete":
        ledger.complete([Completion(work, cache_hits=0, saved_tokens=0, duration_s=0.1)])
    elif kind == "fail":
        ledger.fail(work, "boom")
    else:
        ledger.release(work)
    assert transactions[0] == before + 1
    expected = {"complete": "done", "fail": "failed", "release": "pending"}[kind]
    assert _statuses(ledger)[0][0] == expected


def test_a_claim_is_written_with_the_batch_first_write_and_not_at_all_before_it(tmp_path: Path) -> None:
    ledger, transactions = _ledger(tmp_path)
    cached, stopped = ledger.claim(0), ledger.claim(1)
    assert transactions[0] == 0 and _statuses(ledger)[0] == ("pending", 0)
    # A batch whose vectors all came from the cache: claimed and done in one transaction.
    ledger.complete([Completion(cached, cache_hits=10, saved_tokens=0, duration_s=0.1)])
    assert transactions[0] == 1 and _statuses(ledger)[0] == ("done", 1)
    attempts = ledger.store.query_rows("SELECT attempt, outcome FROM attempts WHERE job_id = 'g' AND batch_no = 0")
    assert attempts == [(1, "done")]
    # Stopped before its first write: nothing to hand back, and no attempt was counted.
    ledger.release(stopped)
    assert transactions[0] == 1 and _statuses(ledger)[1] == ("pending", 0)


def test_a_vector_another_job_saved_meanwhile_keeps_the_first_copy(tmp_path: Path) -> None:
    """Two jobs that embedded the same text at once both persist it: the second plain INSERT hits the
    cache's key for real, is retried keeping the first copy, and the batch's figures still count it."""
    import numpy as np

    from qsync.cache import lookup_vectors
    from qsync.embedders.hashing import HashingEmbedder

    ledger, _ = _ledger(tmp_path)
    embedder = HashingEmbedder(dimensions=8)
    first_work, second_work = ledger.claim(0), ledger.claim(1)
    text_hash = first_work.hashes[0]
    first = np.full((1, 8), 1.0, dtype=np.float32)
    ledger.record_embeddings(first_work, embedder, [text_hash], first, [3], False, 0.0)
    ledger.record_embeddings(second_work, embedder, [text_hash], np.full((1, 8), 2.0, np.float32), [3], False, 0.0)
    with ledger.store.reading() as con:
        found = lookup_vectors(con, ledger.vectors, embedder, [text_hash])
    np.testing.assert_array_equal(found[text_hash][0], first[0])
    rows = ledger.store.query_rows("SELECT batch_no, embedded_texts FROM batches WHERE job_id = 'g' AND batch_no < 2")
    assert sorted(rows) == [(0, 1), (1, 1)]  # both calls were paid: both are counted
