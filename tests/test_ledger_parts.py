"""The ledger's parts on their own, without a run: planning a source into the manifest, the lease and the liveness
status shows, and the figures' one query. A fake clock stands in for time."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from qsync.app.options import build_spec
from qsync.errors import ConfigError, JobNotRunnable, LeaseHeld, LeaseLost
from qsync.input.plan import plan_job
from qsync.input.records import RejectedRow
from qsync.input.sources import DataFrameSource
from qsync.ledger.figures import job_figures
from qsync.ledger.jobs import cancel, job_record, newest_job, next_resync_name
from qsync.ledger.lease import release_lease, renew_lease, take_lease
from qsync.ledger.ledger import Ledger
from qsync.ledger.process import lease_is_live
from qsync.ledger.states import JobState
from qsync.spec.chunking import Chunking
from qsync.spec.columns import Columns
from qsync.sql import SqlConnection


class FakeClock:
    def __init__(self) -> None:
        self.at = datetime(2026, 12, 2, 12, 0, 0)

    def monotonic(self) -> float:
        return (self.at - datetime(2026, 1, 1)).total_seconds()

    def now(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


class Limits:
    model = "qsync-hash-v2"
    dimensions = 8
    task_type = ""
    max_text_tokens = 10
    max_batch_texts = 3


def _plan(
    ledger: Ledger,
    frame: pd.DataFrame,
    job: str = "p",
    clock: FakeClock | None = None,
    chunking: Chunking | None = None,
) -> None:
    spec, _ = build_spec(
        frame, collection="c", job=job.split("#", maxsplit=1)[0], qdrant_path=":memory:", embedder="hash"
    )
    plan_job(
        ledger, job, DataFrameSource(frame), Columns(), Limits(), spec.to_dict(), "c", 100, clock or FakeClock(),
        chunking=chunking,
    )  # fmt: skip


def test_planning_keeps_the_good_records_in_batches_and_skips_each_bad_one_with_its_reason(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "id": ["a", "b", None, "a", "c", "d", "e", "f", "g"],
            "text": ["one", "two", "three", "again", "   ", None, "x " * 30, 7, "seven"],
        }
    )
    with Ledger(tmp_path / "q.duckdb") as ledger:
        _plan(ledger, frame, chunking=Chunking(0))  # without chunking, a text over the limit is a skip
        manifest = ledger.query_rows("SELECT record_id, batch_no FROM manifest WHERE job_id = 'p' ORDER BY ordinal")
        reasons = dict(ledger.query_rows("SELECT coalesce(record_id, CAST(ordinal AS VARCHAR)), reason FROM skipped"))
        figures = job_figures(ledger, FakeClock(), "p")
    assert manifest == [("a", 0), ("b", 0), ("g", 0)]  # batches of at most max_batch_texts
    assert reasons == {
        "2": "id is missing",
        "a": "duplicate id (first seen at row 1)",
        "c": "text is empty or whitespace",
        "d": "text is missing",
        "e": "text too long: ~15 tokens (estimated), limit 10",
        "f": "text is not a string (int)",
    }
    assert (figures.total_records, figures.skipped_records, figures.remaining_records) == (9, 6, 3)


def test_a_duplicate_id_outranks_only_the_payload_and_length_checks(tmp_path: Path) -> None:
    """Rows after the first of an id are duplicates, whether the first was good or bad; a duplicate that is also
    blank is told as blank, one that is also too long as a duplicate (the order the checks have always had)."""
    frame = pd.DataFrame(
        {
            "id": ["a", "a", "a", "b", "b", "c"],
            "text": ["   ", "fine", "x " * 30, "ok", "", "fine"],
        }
    )
    with Ledger(tmp_path / "q.duckdb") as ledger:
        _plan(ledger, frame, chunking=Chunking(0))
        reasons = ledger.query_rows("SELECT ordinal, reason FROM skipped ORDER BY ordinal")
        manifest = ledger.query_rows("SELECT record_id FROM manifest ORDER BY ordinal")
    assert reasons == [
        (0, "text is empty or whitespace"),
        (1, "duplicate id (first seen at row 1)"),
        (2, "duplicate id (first seen at row 1)"),
        (4, "text is empty or whitespace"),
    ]
    assert manifest == [("b",), ("c",)]


def test_a_plan_that_fails_half_way_leaves_nothing_behind(tmp_path: Path) -> None:
    class Broken(DataFrameSource):
        def register(self, con: SqlConnection, columns: Columns) -> list[RejectedRow]:
            super().register(con, columns)
            raise OSError("the disk went away while reading the source")

    with Ledger(tmp_path / "q.duckdb") as ledger:
        with pytest.raises(OSError, match="went away"):
            plan_job(ledger, "p", Broken(pd.DataFrame({"id": ["a"], "text": ["t"]})), Columns(), Limits(), {}, "c", 100,
                     FakeClock())  # fmt: skip
        for table in ("jobs", "manifest", "batches", "skipped"):
            assert ledger.query_rows(f"SELECT count(*) FROM {table}") == [(0,)], table
        _plan(ledger, pd.DataFrame({"id": ["a"], "text": ["t"]}))  # the name is free: nothing was left
        with pytest.raises(ConfigError, match="exists already"):
            _plan(ledger, pd.DataFrame({"id": ["a"], "text": ["t"]}))


def test_names_and_resyncs(tmp_path: Path) -> None:
    db = tmp_path / "q.duckdb"
    frame = pd.DataFrame({"id": ["a"], "text": ["t"]})
    with Ledger(db) as ledger:
        for name in ("docs", "docs#2", "docs#10", "docsx"):
            _plan(ledger, frame, job=name)
        newest = newest_job(ledger, "docs")
        assert newest is not None and newest.job_id == "docs#10"  # #10 after #2: numbers, not text
        assert next_resync_name(ledger, "docs") == "docs#11"
        assert newest_job(ledger, "doc") is None  # a prefix of a name is another name
        assert job_record(ledger, "docsx").spec.collection == "c"


def test_one_owner_and_the_budget_written_with_the_lease(tmp_path: Path) -> None:
    clock = FakeClock()
    with Ledger(tmp_path / "q.duckdb") as ledger:
        _plan(ledger, pd.DataFrame({"id": ["a"], "text": ["t"]}), clock=clock)
        lease, took_over = take_lease(ledger, "p", clock, 60, os.getpid(), budget=2.5)
        assert not took_over and job_record(ledger, "p").max_cost_usd == 2.5
        with pytest.raises(LeaseHeld):
            take_lease(ledger, "p", clock, 60, os.getpid(), budget=9.0)
        assert job_record(ledger, "p").max_cost_usd == 2.5  # the refused run wrote nothing
        clock.advance(30)
        assert renew_lease(ledger, lease, clock)
        cancel(ledger, "p", clock)  # a running job: asked, seen at the next heartbeat
        assert not renew_lease(ledger, lease, clock)
        release_lease(ledger, lease, clock, JobState.CANCELLED, "cancelled")
        with pytest.raises(JobNotRunnable, match="cancelled"):
            take_lease(ledger, "p", clock, 60, os.getpid())


def test_a_stale_lease_is_taken_over_and_the_old_owner_writes_nothing(tmp_path: Path) -> None:
    clock = FakeClock()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with Ledger(tmp_path / "q.duckdb") as ledger:
        _plan(ledger, pd.DataFrame({"id": ["a"], "text": ["t"]}), clock=clock)
        old, _ = take_lease(ledger, "p", clock, 60, dead.pid)  # its process is gone: stale at once, on this host
        new, took_over = take_lease(ledger, "p", clock, 60, os.getpid())
        assert took_over
        with pytest.raises(LeaseLost, match=f"now owned by process {os.getpid()}"):
            renew_lease(ledger, old, clock)
        assert renew_lease(ledger, new, clock)


def test_liveness_is_judged_by_the_stale_timeout_the_owner_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QSYNC_STALE_AFTER_S", "60")  # what a reader would assume
    clock = FakeClock()
    with Ledger(tmp_path / "q.duckdb") as ledger:
        _plan(ledger, pd.DataFrame({"id": ["a"], "text": ["t"]}), clock=clock)
        take_lease(ledger, "p", clock, 600, os.getpid())  # this runner lets its heartbeat lapse up to 10 minutes
        clock.advance(120)
        assert job_figures(ledger, clock, "p").status == "running"  # not stale after 2 minutes: its own figure
        with pytest.raises(LeaseHeld):
            take_lease(ledger, "p", clock, 60, os.getpid())  # nor for a runner that would call it stale at 60 s
        clock.advance(600)
        assert job_figures(ledger, clock, "p").status == "stale"
        _, took_over = take_lease(ledger, "p", clock, 60, os.getpid())
        assert took_over


def test_lease_is_live() -> None:
    now = datetime(2026, 12, 2, 12, 0, 0)
    assert lease_is_live(os.getpid(), "elsewhere", now - timedelta(seconds=5), now, 60)
    assert not lease_is_live(os.getpid(), "elsewhere", now - timedelta(seconds=61), now, 60)
    assert not lease_is_live(None, None, None, now, 60)
