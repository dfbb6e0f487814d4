"""The runner in-process: cache reuse, real sink failures, permanent failures, pause, cancel, one owner."""

from __future__ import annotations

import io
import itertools
import shutil
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from qsync_testing import make_records, qdrant_points, wait_for, write_records

import qsync
from qsync.app import reading
from qsync.app.jobs import create_job, make_runner
from qsync.cli.progress import ProgressBar
from qsync.embedders.hashing import HashingEmbedder
from qsync.embedders.protocol import EmbedResult
from qsync.engine.events import BatchFinished, Notice, Progress, RunError
from qsync.engine.runner import Runner
from qsync.errors import ConfigError, LeaseHeld, PermanentError
from qsync.ledger.run import LeasedJob
from qsync.sink.edge import EdgeSink
from qsync.sink.factory import open_sink as QdrantSink
from qsync.spec.settings import RunSettings
from qsync.spec.target import SinkSpec

FAST = RunSettings(concurrency=2, retry_base_s=0.01, retry_max_s=0.05, heartbeat_s=0.2)


class RecordingEmbedder(HashingEmbedder):
    def __init__(self, dimensions: int = 32, latency_s: float = 0.0, poison: str | None = None) -> None:
        super().__init__(dimensions, latency_s)
        self.calls: list[list[str]] = []
        self.poison = poison

    def embed(self, texts: list[str]) -> EmbedResult:
        if self.poison and any(self.poison in t for t in texts):
            raise PermanentError(f"the API rejected a text containing {self.poison!r}")
        self.calls.append(list(texts))
        return super().embed(texts)


class UnreachableFirstSink(EdgeSink):
    """Upserts go to a Qdrant server that is not there (a closed port) for the first `failures` calls."""

    def __init__(self, real: EdgeSink, failures: int) -> None:
        super().__init__(real.spec, real.collection, real.dimensions, real.options)
        self.failures = failures
        self.acknowledged: list[list[str]] = []
        self._down = QdrantSink(SinkSpec(url="http://127.0.0.1:9"), real.collection, real.dimensions)

    def write(self, record_ids: list[str], vectors: Any, payloads: list[dict[str, Any]]) -> int:
        if self.failures > 0:
            self.failures -= 1
            self._down.write(record_ids, vectors, payloads)  # raises: connection refused
        written = super().write(record_ids, vectors, payloads)
        self.acknowledged.append(list(record_ids))
        return written


def _plan(tmp_path: Path, n: int = 400, job: str = "j", src_name: str = "src.jsonl") -> tuple[Path, Path]:
    src, db = tmp_path / src_name, tmp_path / "q.duckdb"
    write_records(src, make_records(n))
    create_job(src, collection="c", job=job, db=db, qdrant_path=tmp_path / "qdrant", dimensions=32, batch_size=50)
    return src, db


def _runner(db: Path, job: str = "j", embedder: Any = None, **kw: Any) -> Runner:
    return make_runner(job, db=db, settings=kw.pop("settings", FAST), embedder=embedder, **kw)


def _stored_sink(db: Path, job: str = "j") -> EdgeSink:
    """The job's own sink, as its spec builds it (to wrap in a test's fake)."""
    spec = reading.stored_job(job, db=db).spec
    sink = QdrantSink(spec.sink, spec.collection, spec.embedder.dimensions, spec.collection_options, base=db.parent)
    assert isinstance(sink, EdgeSink)
    return sink


def test_second_job_over_the_same_texts_embeds_nothing(tmp_path: Path) -> None:
    src, db = _plan(tmp_path)
    first = RecordingEmbedder()
    assert _runner(db, embedder=first).run().ok
    assert sum(map(len, first.calls)) == 400

    create_job(src, collection="c2", job="again", db=db, qdrant_path=tmp_path / "qdrant", dimensions=32)
    second = RecordingEmbedder()
    assert _runner(db, "again", embedder=second).run().ok
    assert second.calls == []
    info = qsync.status("again", db=db)
    assert info["embedded_texts"] == 0 and info["cache_hits"] == 400 and info["saved_tokens"] > 0
    assert len(qdrant_points(tmp_path / "qdrant", "c2")) == 400


@pytest.mark.reliability
def test_unreachable_qdrant_fails_batches_which_complete_later_never_done_early(tmp_path: Path) -> None:
    _, db = _plan(tmp_path)
    flaky = UnreachableFirstSink(_stored_sink(db), failures=5)
    notices: list[Any] = []
    runner = _runner(
        db, embedder=RecordingEmbedder(), sink=flaky,
        listeners=[lambda e: notices.append(e) if isinstance(e, Notice) else None],
    )  # fmt: skip
    result = runner.run()
    assert result.ok, result.message
    batches = qsync.batches("j", db=db)
    # One retry layer: the refused upserts were retried as calls, inside each batch's one attempt.
    assert batches.attempts.sum() == 8 and flaky.failures == 0
    assert (batches.status == "done").all()
    # Every batch marked done had its upsert acknowledged; each refusal was announced with its reason.
    assert sorted(map(tuple, flaky.acknowledged)) == sorted(
        tuple(reading.batch_records("j", b, db=db).record_id) for b in range(8)
    )
    refusals = [n.text for n in notices if "trying again" in n.text]
    assert len(refusals) == 5 and all("unreachable" in r for r in refusals)
    # The vectors paid for before each refused upsert were reused, not bought again.
    assert qsync.status("j", db=db)["embedded_texts"] == 400


class FlushWatchingSink(EdgeSink):
    """Records which write each record went out in, and how far the flushes have come."""

    def __init__(self, real: EdgeSink) -> None:
        super().__init__(real.spec, real.collection, real.dimensions, real.options)
        self.write_of: dict[str, int] = {}
        self.durable_up_to = 0
        self.flush_calls = 0

    def write(self, record_ids: list[str], vectors: Any, payloads: list[dict[str, Any]]) -> int:
        written = super().write(record_ids, vectors, payloads)
        self.write_of.update(dict.fromkeys(record_ids, written))
        return written

    def durable(self, written: int) -> None:
        super().durable(written)
        self.flush_calls += 1
        self.durable_up_to = max(self.durable_up_to, written)


def test_a_batch_is_marked_done_only_once_a_flush_covers_its_points_and_flushes_are_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A SIGKILL cannot show this (Edge's WAL survives a killed process without a flush; only a lost machine
    # would expose a batch marked done too early), so the order is watched where it happens.
    _, db = _plan(tmp_path, n=2000)
    sink = FlushWatchingSink(_stored_sink(db))
    marked: list[str] = []
    real_complete = LeasedJob.complete

    def complete(self: LeasedJob, batches: Any) -> None:
        for done in batches:
            assert all(sink.write_of[r] <= sink.durable_up_to for r in done.work.record_ids), done.work.batch_no
            marked.extend(done.work.record_ids)
        real_complete(self, batches)

    monkeypatch.setattr(LeasedJob, "complete", complete)
    runner = _runner(db, embedder=RecordingEmbedder(), sink=sink, settings=replace(FAST, concurrency=4))
    assert runner.run().ok
    assert sorted(marked) == sorted(sink.write_of) and len(marked) == 2000
    # 40 batches, but far fewer flushes: a group of batches shares one (each costs ~10 ms + ~4 ms per 100 points).
    assert sink.flush_calls < 40 / 2, sink.flush_calls


@pytest.mark.reliability
def test_a_flush_that_fails_fails_its_group_and_a_resume_loads_it_from_the_cache(tmp_path: Path) -> None:
    # A real flush failure: once the shard's payload journal is gone (as a failed second load of a shard in
    # use leaves it, qdrant-edge-py 0.9.0), every flush of the open shard fails.
    _, db = _plan(tmp_path, n=3000)
    broken: list[Path] = []

    def break_the_shard(event: Any) -> None:
        if isinstance(event, BatchFinished) and not broken:
            broken.extend((tmp_path / "qdrant" / "c").rglob("tracker_journal.dat"))
            for journal in broken:
                journal.unlink()

    first = RecordingEmbedder()
    result = _runner(db, embedder=first, listeners=[break_the_shard]).run()
    assert broken and result.status == "failed" and "Qdrant Edge failed" in (result.message or "")
    statuses = qsync.batches("j", db=db).status.value_counts().to_dict()
    assert statuses.get("failed", 0) > 0 and statuses.get("done", 0) + statuses["failed"] == 60
    assert sum(map(len, first.calls)) == 3000  # every vector was paid for, and cached, before the flush

    again = RecordingEmbedder()
    assert _runner(db, embedder=again).run().ok
    assert again.calls == []  # the failed groups' vectors came from the cache
    assert qsync.verify("j", db=db).ok and len(qdrant_points(tmp_path / "qdrant", "c")) == 3000


@pytest.mark.reliability
def test_failing_batches_end_the_job_failed_and_resume_retries_them(tmp_path: Path) -> None:
    _, db = _plan(tmp_path)
    result = _runner(db, embedder=RecordingEmbedder(poison="text 120 ")).run()
    assert result.status == "failed"
    assert result.message is not None
    assert "1 batch failed" in result.message and "rejected a text containing" in result.message
    failed = qsync.batches("j", status="failed", db=db)
    assert list(failed.batch_no) == [2]
    assert "rejected a text containing" in failed.last_error.iloc[0]
    info = qsync.status("j", db=db)
    assert info["status"] == "failed" and info["owner"] is None and info["processed_records"] == 350

    again = RecordingEmbedder()
    assert _runner(db, embedder=again).run().ok
    assert sum(map(len, again.calls)) == 50  # only the failed batch
    assert qsync.status("j", db=db)["processed_records"] == 400


def test_dimension_mismatch_is_refused_before_any_embedding(tmp_path: Path) -> None:
    src = tmp_path / "other.jsonl"
    write_records(src, make_records(10, prefix="other"))
    db = tmp_path / "q.duckdb"
    # Planned against an empty Qdrant; the collection is then replaced, behind qsync's back, by one of 32-d
    # vectors: the run checks again before it embeds anything.
    create_job(src, collection="c", job="wide", db=db, qdrant_path=tmp_path / "qdrant", dimensions=64)
    shutil.rmtree(tmp_path / "qdrant" / "c")
    _plan(tmp_path)
    assert _runner(db, embedder=RecordingEmbedder()).run().ok
    with pytest.raises(ConfigError, match="holds vectors of size 32, but this job makes 64"):
        create_job(src, collection="c", job="wider", db=db, qdrant_path=tmp_path / "qdrant", dimensions=64)
    embedder = RecordingEmbedder(dimensions=64)
    result = _runner(db, "wide", embedder=embedder).run()
    assert result.status == "failed"
    assert "holds vectors of size 32, but this job makes 64" in (result.message or "")
    assert embedder.calls == []


def test_stop_pauses_within_a_batch_and_resume_completes(tmp_path: Path) -> None:
    _, db = _plan(tmp_path, n=1000)
    runner = _runner(db, embedder=RecordingEmbedder(latency_s=0.1))  # 18 calls of 0.1 s, 2 at once, after the stop
    thread = threading.Thread(target=lambda: setattr(runner, "result", runner.run()))
    thread.start()
    wait_for(lambda: qsync.status("j", db=db)["processed_records"] >= 100)
    runner.request_stop()
    thread.join(timeout=10)
    assert not thread.is_alive()
    result = runner.result  # type: ignore[attr-defined]
    assert result.status == "paused" and "batches to go" in result.message
    info = qsync.status("j", db=db)
    assert info["status"] == "paused" and info["batches_running"] == 0 and info["processed_records"] < 1000
    assert _runner(db, embedder=RecordingEmbedder()).run().ok
    assert qsync.status("j", db=db)["processed_records"] == 1000


def test_cancel_stops_a_running_job_at_its_next_heartbeat(tmp_path: Path) -> None:
    _, db = _plan(tmp_path, n=2000)
    runner = _runner(db, embedder=RecordingEmbedder(latency_s=0.05))
    thread = threading.Thread(target=lambda: setattr(runner, "result", runner.run()))
    thread.start()
    wait_for(lambda: qsync.status("j", db=db)["processed_records"] >= 100)
    assert qsync.cancel("j", db=db) == "cancel requested"
    thread.join(timeout=10)
    assert runner.result.status == "cancelled"  # type: ignore[attr-defined]
    assert qsync.status("j", db=db)["status"] == "cancelled"
    with pytest.raises(qsync.QsyncError, match="was cancelled"):
        _runner(db, embedder=RecordingEmbedder()).run()


@pytest.mark.reliability
def test_a_second_runner_in_the_same_process_is_refused(tmp_path: Path) -> None:
    _, db = _plan(tmp_path, n=1000)
    first = _runner(db, embedder=RecordingEmbedder(latency_s=0.05))
    thread = threading.Thread(target=first.run)
    thread.start()
    try:
        wait_for(lambda: qsync.status("j", db=db)["status"] == "running")
        heard: list[Any] = []
        with pytest.raises(LeaseHeld, match="is being run by process"):
            _runner(db, embedder=RecordingEmbedder(), listeners=[heard.append]).run()
        # Its listeners (a notebook's buttons) hear that the run ended, and why: it never started.
        assert [type(e) for e in heard] == [RunError] and "is being run by process" in heard[0].error
        assert heard[0].resumable, "once the other runner stops, the job can be resumed"
    finally:
        first.request_stop()
        thread.join(timeout=10)


def test_listeners_see_start_progress_and_finish(tmp_path: Path) -> None:
    _, db = _plan(tmp_path, n=200)
    events: list[Any] = []
    assert _runner(db, embedder=RecordingEmbedder(), listeners=[events.append]).run().ok
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "JobStarted" and kinds[-1] == "JobFinished"
    progress = [e for e in events if isinstance(e, Progress)]
    assert [p.done_records for p in progress][-1] == 200
    assert all(a.done_records <= b.done_records for a, b in itertools.pairwise(progress))


def test_no_figures_are_read_while_running_when_no_listener_shows_them(tmp_path: Path) -> None:
    _, db = _plan(tmp_path, n=300)
    heard: list[Any] = []

    class Counting:
        wants_progress = False  # like the CLI's RunTexts, or a progress bar that is not drawn

        def __call__(self, event: Any) -> None:
            heard.append(event)

    assert _runner(db, embedder=RecordingEmbedder(), listeners=[Counting(), ProgressBar(disable=True)]).run().ok
    assert sum(isinstance(e, BatchFinished) for e in heard) == 6
    assert not [e for e in heard if isinstance(e, Progress)]  # the figures query was never made for them
    assert not ProgressBar(io.StringIO()).wants_progress  # tqdm draws nothing on a stream that is not a terminal
    assert ProgressBar(io.StringIO(), disable=False).wants_progress


def test_a_pause_while_waiting_for_qdrant_leaves_the_job_paused_not_failed(tmp_path: Path) -> None:
    _, db = _plan(tmp_path, n=100)
    away = QdrantSink(SinkSpec(url="http://127.0.0.1:9"), "c", 32)  # a Qdrant server that is not there
    slow_retries = RunSettings(concurrency=2, retry_base_s=5.0, retry_max_s=5.0, heartbeat_s=0.2)
    runner = _runner(db, embedder=RecordingEmbedder(), sink=away, settings=slow_retries)
    threading.Timer(0.5, runner.request_stop).start()
    result = runner.run()
    assert result.status == "paused", result.message
    assert qsync.status("j", db=db)["status"] == "paused"
