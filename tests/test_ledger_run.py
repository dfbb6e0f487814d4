"""The writes of one run (LeasedJob): group commit, claims written with a batch's first write, the manifest
read ahead, a lost lease that writes nothing, and a vector two jobs saved at once."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
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
from qsync.ledger.cache import Lookup, cache_key, lookup_vectors
from qsync.ledger.fresh import FreshVectors, record_fresh
from qsync.ledger.lease import release_lease, take_lease
from qsync.ledger.ledger import Ledger
from qsync.ledger.readahead import ManifestReadAhead
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

    def paid(work: BatchWork) -> Callable[[], BatchWork]:
        return lambda: (_paid(job, work), work)[1]

    return _together(job, {b: paid(work) for b, work in works.items()})


def _together(job: LeasedJob, calls: dict[int, Callable[[], Any]]) -> dict[int, Any]:
    """Each call (one write of the run) from a thread of its own, all queued behind a commit in progress, then let go
    at once: they commit in one group. Each call's result, or the exception it raised."""
    results: dict[int, Any] = {}
    release = threading.Event()

    def write(key: int) -> None:
        try:
            results[key] = calls[key]()
        except BaseException as exc:
            results[key] = exc

    holder = threading.Thread(target=job.commit.write, args=(lambda con: release.wait(30),))
    holder.start()  # a commit in progress: the writes below queue up meanwhile
    wait_for(lambda: job.commit.queued == 0 and holder.is_alive(), timeout=10)
    threads = [threading.Thread(target=write, args=(key,)) for key in calls]
    for t in threads:
        t.start()
    wait_for(lambda: job.commit.queued == len(calls), timeout=10)
    release.set()
    for t in [holder, *threads]:
        t.join(timeout=30)
    return results


def _statuses(job: LeasedJob) -> dict[int, tuple[str, int]]:
    rows = job.ledger.query_rows("SELECT batch_no, status, attempts FROM batches WHERE job_id = 'g'")
    return {int(b): (str(s), int(a)) for b, s, a in rows}


def test_queued_writes_commit_in_one_transaction_and_each_caller_gets_its_own_result(
    job: LeasedJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    works = {b: job.claim(b) for b in range(8)}
    statements = _statements_sent(job, monkeypatch)
    results = _write_together(job, works)
    assert _transactions(job) == 2  # the commit in progress, then eight claims with their intents in one
    # ... made together: one claim, one insert of attempts, one of intents for the eight
    assert [sql.split()[:3] for sql in statements if sql.split()[0] in ("UPDATE", "INSERT")] == [
        ["UPDATE", "batches", "SET"], ["INSERT", "INTO", "attempts"], ["INSERT", "INTO", "spend_intents"]
    ]  # fmt: skip
    intents = job.ledger.query_rows("SELECT batch_no, texts, state, len(content_hashes) FROM spend_intents")
    assert sorted(intents) == [(b, 10, "open", 10) for b in range(8)]
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


def test_texts_claimed_by_many_batches_at_once_are_claimed_in_one_go_each_batch_told_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run's batches ask for their texts' claims together (all of them, as it starts): one look at the cache and the
    # other runs' claims, one insert, for the whole group; each batch is answered for its own texts only.
    job = _job(tmp_path)
    embedder = HashingEmbedder(8)
    works = {b: job.claim(b) for b in range(4)}
    saved = works[1].hashes[0]  # in the cache already: taken from it, not claimed
    job.record_embeddings(works[1], embedder, [saved], np.ones((1, 8), np.float32), [3], False, 0.0)
    other = _second_job(job, "h")  # another live run is paying for one of batch 2's texts: batch 2 waits for it
    other.claim_texts(embedder, [works[2].hashes[0]])
    statements = _statements_sent(job, monkeypatch)

    def claim(work: BatchWork) -> Callable[[], tuple[Lookup, set[str]]]:
        return lambda: job.claim_texts(embedder, work.hashes)

    results = _together(job, {b: claim(work) for b, work in works.items()})
    assert sum("FROM text_claims c JOIN jobs" in sql for sql in statements) == 1
    assert sum(sql.startswith("INSERT INTO text_claims") for sql in statements) == 1
    for b, work in works.items():
        found, elsewhere = results[b]
        assert set(found.found) == ({saved} if b == 1 else set())
        assert elsewhere == ({work.hashes[0]} if b == 2 else set())
    claimed = job.ledger.query_rows("SELECT cache_key FROM text_claims WHERE job_id = 'g'")
    expected = {h for w in works.values() for h in w.hashes} - {saved, works[2].hashes[0]}
    assert {str(k) for (k,) in claimed} == {cache_key(embedder, h) for h in expected}


def test_a_combined_write_that_fails_is_made_again_alone_for_each_caller(job: LeasedJob) -> None:
    calls: list[list[str]] = []

    def many(con: Any, names: list[str]) -> list[str]:
        calls.append(names)
        con.execute("INSERT INTO text_claims SELECT unnest(?::VARCHAR[]), 'g', 'x', now()", [names])
        if "bad" in names:
            raise ValueError("bad write")
        return [name.upper() for name in names]

    names = {0: "a", 1: "bad", 2: "c"}

    def write(name: str) -> Callable[[], str]:
        return lambda: job.commit.write_combined("kind", many, name)

    results = _together(job, {i: write(name) for i, name in names.items()})
    assert sorted(map(sorted, calls)) == [["a"], ["a", "bad", "c"], ["bad"], ["c"]]  # together, then each alone
    assert results[0] == "A" and results[2] == "C" and isinstance(results[1], ValueError)
    rows = job.ledger.query_rows("SELECT cache_key FROM text_claims ORDER BY 1")
    assert rows == [("a",), ("c",)]  # the group's transaction rolled back; the bad write's own too


def test_two_takes_of_one_batch_in_one_group_claim_it_once(job: LeasedJob) -> None:
    taken, stale = job.claim(3), job.claim(3)  # two takes of batch 3, neither written, their intents made together
    results = _write_together(job, {1: taken, 2: stale})
    assert sorted(type(r).__name__ for r in results.values()) == ["BatchWork", "NotClaimable"]
    assert job.ledger.query_rows("SELECT batch_no, attempt FROM attempts") == [(3, 1)]
    assert job.ledger.query_rows("SELECT count(*) FROM spend_intents") == [(1,)]


def test_vectors_the_file_lost_are_counted_once_when_batches_ask_for_them_together(tmp_path: Path) -> None:
    job = _job(tmp_path)
    embedder = HashingEmbedder(8)
    work = job.claim(0)
    paid = embedder.embed(work.texts)
    job.record_embeddings(work, embedder, work.hashes, paid.vectors, paid.tokens_per_text, False, 0.0)
    os.truncate(job.ledger.vectors.path, job.ledger.vectors.size() - 2 * 8 * 4)  # the last two vectors' bytes lost

    def ask(hashes: list[str]) -> Callable[[], tuple[Lookup, set[str]]]:
        return lambda: job.claim_texts(embedder, hashes)

    results = _together(job, {1: ask(work.hashes), 2: ask(work.hashes[5:])})
    assert len(results[1][0].found) == 8 and sorted(len(r[0].lost) for r in results.values()) == [0, 2]
    assert job.lost_vectors == 2


def test_a_free_embedders_batches_looking_in_the_cache_at_once_are_looked_up_in_one_query_each_told_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A free embedder's batches look in the cache first, every one of them (at a 2M re-sync, the checkpoint file's
    # busiest statement): those asking at once are one query for the group, each batch answered for its own texts,
    # a vector whose bytes are lost told once (and forgotten) in the same round trip.
    job = _job(tmp_path)
    embedder = HashingEmbedder(8)
    works = {b: job.claim(b) for b in range(4)}
    for b in (1, 2):
        paid = embedder.embed(works[b].texts[:3])
        job.record_embeddings(works[b], embedder, works[b].hashes[:3], paid.vectors, [3] * 3, False, 0.0)
    os.truncate(job.ledger.vectors.path, job.ledger.vectors.size() - 8 * 4)  # batch 2's third vector lost
    statements = _statements_sent(job, monkeypatch)

    def ask(hashes: list[str]) -> Callable[[], Lookup]:
        return lambda: job.cached_vectors(embedder, hashes)

    results = _together(job, {0: ask(works[0].hashes), 1: ask(works[1].hashes), 2: ask(works[2].hashes),
                              3: ask(works[2].hashes[2:])})  # fmt: skip
    assert sum(sql.startswith("SELECT content_hash") and "FROM embeddings" in sql for sql in statements) == 1
    assert not results[0].found and not results[0].lost
    assert set(results[1].found) == set(works[1].hashes[:3])
    assert set(results[2].found) == set(works[2].hashes[:2]) and not results[3].found
    assert sorted(len(results[b].lost) for b in (2, 3)) == [0, 1] and job.lost_vectors == 1
    assert set(job.cached_vectors(embedder, works[2].hashes).found) == set(works[2].hashes[:2])  # forgotten: a miss
    assert job.lost_vectors == 1


def _answer(
    job: LeasedJob, work: BatchWork, hashes: list[str], value: float, intent: str | None = None, uncounted: bool = False
) -> None:
    """The answer of one call for these texts of the batch: vectors of `value`, 3 tokens a text, $0.001 a text
    (`uncounted`: an answer without usage, counted later)."""
    vectors = np.full((len(hashes), 8), value, np.float32)
    job.record_embeddings(work, HashingEmbedder(8), hashes, vectors, [3] * len(hashes), False, 0.001 * len(hashes),
                          intent, uncounted=uncounted)  # fmt: skip


def _answering(
    job: LeasedJob, work: BatchWork, hashes: list[str], value: float, intent: str | None = None, uncounted: bool = False
) -> Callable[[], None]:
    return lambda: _answer(job, work, hashes, value, intent, uncounted)


def _cached(job: LeasedJob, hashes: list[str]) -> dict[str, float]:
    with job.ledger.reading() as con:
        found = lookup_vectors(con, job.ledger.vectors, HashingEmbedder(8), hashes)
    return {h: float(vector[0]) for h, (vector, _) in found.found.items()}


def test_answers_recorded_at_once_are_recorded_together_each_batch_counted_its_own(
    job: LeasedJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run's answers arriving together (a zero-latency API, or a free embedder) are one insert into the cache, one
    # update of the batches' figures and one of the intents for the group, the batches not claimed yet claimed with
    # them; two answers of one batch add up on it.
    works = {b: job.claim(b) for b in range(4)}
    intents = {half: _paid(job, works[0]) for half in (0, 1)}  # batch 0 is claimed: its two calls, half each
    statements = _statements_sent(job, monkeypatch)
    calls = {b: _answering(job, works[b], works[b].hashes, float(b)) for b in (1, 2, 3)}
    for half in (0, 1):
        calls[10 + half] = _answering(job, works[0], works[0].hashes[half * 5 : half * 5 + 5], 0.5, intents[half])
    results = _together(job, calls)
    assert all(result is None for result in results.values())
    writes = [" ".join(sql.split()[:3]) for sql in statements if sql.split()[0] in ("UPDATE", "INSERT", "DELETE")]
    assert sorted(writes) == sorted(["UPDATE batches SET", "INSERT INTO attempts", "INSERT INTO embeddings",
                                     "UPDATE batches SET", "UPDATE spend_intents SET"])  # fmt: skip
    assert sum("FROM embeddings WHERE byte_offset" in sql for sql in statements) == 1  # the file's end checked once
    figures = job.ledger.query_rows("SELECT batch_no, embedded_texts, tokens, cost_usd FROM batches WHERE batch_no < 4")
    assert sorted((b, n, t, round(c, 6)) for b, n, t, c in figures) == [(b, 10, 30, 0.01) for b in range(4)]
    assert all(_statuses(job)[b] == ("running", 1) for b in range(4))
    assert job.ledger.query_rows("SELECT DISTINCT state FROM spend_intents") == [("settled",)]
    cached = _cached(job, [h for work in works.values() for h in work.hashes])
    assert cached == {h: (0.5 if b == 0 else float(b)) for b, work in works.items() for h in work.hashes}


def test_a_vector_saved_meanwhile_fails_only_its_batch_in_a_group_which_keeps_the_first_copy(job: LeasedJob) -> None:
    works = {b: job.claim(b) for b in range(4)}
    _answer(job, works[0], [works[2].hashes[0]], 9.0)  # batch 2's first text, saved by another batch first
    results = _together(job, {b: _answering(job, works[b], works[b].hashes, float(b)) for b in (1, 2, 3)})
    assert all(result is None for result in results.values())
    cached = _cached(job, [h for b in (1, 2, 3) for h in works[b].hashes])
    assert cached == {h: (9.0 if h == works[2].hashes[0] else float(b)) for b in (1, 2, 3) for h in works[b].hashes}
    figures = job.ledger.query_rows("SELECT batch_no, embedded_texts, attempts FROM batches WHERE batch_no < 4")
    assert sorted(figures) == [(0, 1, 1), (1, 10, 1), (2, 10, 1), (3, 10, 1)]  # every call paid is counted once


def test_answers_with_and_without_usage_recorded_together_close_each_intent_in_its_own_state(job: LeasedJob) -> None:
    works = {b: job.claim(b) for b in range(2)}
    intents = {b: _paid(job, work) for b, work in works.items()}
    results = _together(job, {0: _answering(job, works[0], works[0].hashes, 1.0, intents[0]),
                              1: _answering(job, works[1], works[1].hashes, 2.0, intents[1], uncounted=True)})  # fmt: skip
    assert results == {0: None, 1: None}
    states = job.ledger.query_rows("SELECT batch_no, state FROM spend_intents")
    assert sorted(states) == [(0, "settled"), (1, "uncounted")]
    figures = job.ledger.query_rows("SELECT batch_no, embedded_texts, tokens, cost_usd FROM batches WHERE batch_no < 2")
    assert sorted((b, n, t, round(c, 6)) for b, n, t, c in figures) == [(0, 10, 30, 0.01), (1, 10, 0, 0.0)]


def test_one_text_in_two_answers_of_a_group_is_saved_once_and_counted_for_both(job: LeasedJob) -> None:
    works = {b: job.claim(b) for b in (1, 2)}
    shared = works[1].hashes[0]  # both calls sent it (two batches that did not wait for each other)
    results = _together(job, {1: _answering(job, works[1], works[1].hashes, 1.0),
                              2: _answering(job, works[2], [shared, *works[2].hashes], 2.0)})  # fmt: skip
    assert results == {1: None, 2: None}
    assert job.ledger.query_rows("SELECT count(*) FROM embeddings WHERE content_hash = ?", [shared]) == [(1,)]
    assert list(_cached(job, [shared]).values()) in ([1.0], [2.0])  # one copy, whole
    figures = job.ledger.query_rows("SELECT batch_no, embedded_texts, attempts FROM batches WHERE batch_no IN (1, 2)")
    assert sorted(figures) == [(1, 10, 1), (2, 11, 1)]


def test_a_stale_take_of_a_batch_in_a_group_of_answers_is_refused_alone(job: LeasedJob) -> None:
    taken, stale, other = job.claim(3), job.claim(3), job.claim(4)
    results = _together(job, {1: _answering(job, taken, taken.hashes, 1.0), 2: _answering(job, stale, stale.hashes, 2.0),
                              3: _answering(job, other, other.hashes, 3.0)})  # fmt: skip
    assert sorted(type(r).__name__ for r in results.values()) == ["NoneType", "NoneType", "NotClaimable"]
    assert sorted(job.ledger.query_rows("SELECT batch_no, attempt FROM attempts")) == [(3, 1), (4, 1)]
    figures = job.ledger.query_rows("SELECT batch_no, embedded_texts FROM batches WHERE batch_no IN (3, 4)")
    assert sorted(figures) == [(3, 10), (4, 10)]  # the refused take recorded nothing
    assert set(_cached(job, taken.hashes).values()) in ({1.0}, {2.0})


def test_a_write_tried_again_forgets_again_the_entries_its_rolled_back_try_had_forgotten(job: LeasedJob) -> None:
    # The vector file lost batch 0's last three vectors (cut while the run goes). Batch 2's answer forgets their
    # entries, appends its vectors where they pointed, and fails on a key saved before: the rollback restores the
    # entries, pointing at batch 2's vectors now. Tried again (keeping the first copy), it forgets them again.
    first, second = job.claim(0), job.claim(2)
    _answer(job, first, first.hashes, 0.5)
    os.truncate(job.ledger.vectors.path, job.ledger.vectors.size() - 3 * 8 * 4)
    _answer(job, second, [first.hashes[0], *second.hashes], 2.0)
    assert _cached(job, first.hashes) == dict.fromkeys(first.hashes[:7], 0.5)  # the three lost: misses, not 2.0
    assert _cached(job, second.hashes) == dict.fromkeys(second.hashes, 2.0)
    assert job.lost_vectors == 3


def test_vectors_kept_from_a_rolled_back_try_are_appended_again_when_the_file_lost_them(job: LeasedJob) -> None:
    # A try appends X's vectors then Y's, and rolls back; the file is then cut inside X's. Tried again with Y first,
    # Y's append ends past X's old bytes: X must not keep offsets whose bytes are Y's now.
    embedder, now = HashingEmbedder(8), SYSTEM_CLOCK.now()
    works = {value: job.claim(b) for b, value in ((0, 1.0), (1, 2.0))}
    appenders = {value: job.appender(np.full((10, 8), value, np.float32)) for value in works}
    answers = {value: FreshVectors(work, work.hashes, appenders[value], [3] * 10, 30, 0.0, False, 0, False, None,
                                   "settled") for value, work in works.items()}  # fmt: skip

    def rolled_back(con: Any) -> None:
        record_fresh(con, "g", embedder, [answers[1.0], answers[2.0]], now, ignore_existing=False)
        raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        job.commit.write(rolled_back)
    os.truncate(job.ledger.vectors.path, appenders[1.0].offsets[0] + 5 * 8 * 4)  # X keeps 5 of its 10
    job.commit.write(lambda con: record_fresh(con, "g", embedder, [answers[2.0], answers[1.0]], now,
                                              ignore_existing=False))  # fmt: skip
    for value, work in works.items():
        assert _cached(job, work.hashes) == dict.fromkeys(work.hashes, value)


def _statements_sent(job: LeasedJob, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SQL of every statement the job sends to the host from now on (filled as they are sent)."""
    statements: list[str] = []
    connection = job.ledger._connection
    original = connection.request

    def request(*parts: Any) -> Any:
        for sent in parts[1] if parts[0] == "batch" else [parts]:
            statements.extend([str(sent[1])] if sent[0] == "execute" else [])
        return original(*parts)

    monkeypatch.setattr(connection, "request", request)
    return statements


def _second_job(job: LeasedJob, name: str) -> LeasedJob:
    """Another job of the same records in the same file, its lease taken by this (live) process."""
    create_job(pd.DataFrame(make_records(100)), collection="c", job=name, db=job.ledger.path, dimensions=8,
               batch_size=10)  # fmt: skip
    lease, _ = take_lease(job.ledger, name, SYSTEM_CLOCK, 60, os.getpid())
    return LeasedJob(job.ledger, lease, SYSTEM_CLOCK, "", "")


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


def test_batches_asked_for_at_once_are_read_in_one_query(job: LeasedJob, monkeypatch: pytest.MonkeyPatch) -> None:
    # A run's workers start together, each asking for its batch: one manifest read serves them all, not one each.
    reads: list[int] = []
    first_read = threading.Event()
    original = ledger_batches.read_manifest

    def slow_first(con: Any, job_id: str, first: int, last: int) -> Any:
        reads.append(first)
        if len(reads) == 1:
            first_read.wait(30)
        return original(con, job_id, first, last)

    asked: list[int] = []
    pop = ManifestReadAhead._pop

    def counted_pop(self: ManifestReadAhead, batch_no: int) -> Any:
        asked.append(batch_no)
        return pop(self, batch_no)

    monkeypatch.setattr(ledger_batches, "read_manifest", slow_first)
    monkeypatch.setattr(ManifestReadAhead, "_pop", counted_pop)
    works: dict[int, BatchWork] = {}
    threads = [threading.Thread(target=lambda b=b: works.update({b: job.claim(b)})) for b in range(8)]
    threads[0].start()
    wait_for(lambda: reads, timeout=10)  # batch 0's read is under way
    for t in threads[1:]:
        t.start()
    wait_for(lambda: set(asked) == set(range(8)), timeout=10)  # every other batch asked (and missed) meanwhile
    first_read.set()
    for t in threads:
        t.join(timeout=30)
    assert reads == [0]
    assert {b: w.record_ids[0] for b, w in works.items()} == {b: f"r{b * 10}" for b in range(8)}


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
