"""Runs that do not hold the caller: a job run in a background thread of this process, with a handle to pause,
cancel or wait for it, and listeners that can join while it runs (the notebook's widgets).

    handle = start_job("docs:records", db="q.duckdb")
    handle.pause(); handle.wait(); handle.resume(); handle.wait(); handle.result

Every background run of this process is registered by (db, job), so a notebook re-run (Run All) finds the run
its previous cells started instead of starting a second runner on the same job; a kernel shut down under a run
pauses it cleanly.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from qsync.app import jobs
from qsync.clock import SYSTEM_CLOCK, Clock
from qsync.engine.events import Event, JobFinished, JobStarted, Listener, Progress, emit
from qsync.engine.runner import Runner, RunResult
from qsync.errors import ConfigError
from qsync.ledger.figures import JobFigures
from qsync.spec.defaults import resolve_db
from qsync.spec.job import KEEP, BudgetOption
from qsync.spec.settings import RunSettings

PathLike = str | os.PathLike[str]

_runs: dict[tuple[str, str], JobHandle] = {}
_runs_lock = threading.Lock()


class JobHandle:
    """A job running in a background thread of this process. Listeners can join while it runs."""

    def __init__(
        self, job_id: str, db: Path, listeners: Sequence[Listener] = (), settings: RunSettings | None = None,
        concurrency: int | None = None, clock: Clock = SYSTEM_CLOCK,
    ) -> None:  # fmt: skip
        self.job_id = job_id
        self.db = db
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        self.figures: JobFigures | None = None  # as of the latest event
        self.started: JobStarted | None = None
        self.finished: JobFinished | None = None  # the run ended (its thread returns a moment later)
        self._listeners = list(listeners)
        self._lock = threading.Lock()
        self._runner: Runner | None = None
        self._thread: threading.Thread | None = None
        self._settings, self._concurrency, self._clock = settings, concurrency, clock  # for resume()

    def __repr__(self) -> str:
        return f"<JobHandle {self.job_id!r}: {self.state}>"

    @property
    def state(self) -> str:
        """running, pausing, cancelling (asked to stop, calls in flight still finishing), or how the run ended."""
        if self.running:
            control = self._runner.control if self._runner is not None else None
            if control is not None and control.cancelled:
                return "cancelling"
            return "pausing" if control is not None and control.stopping else "running"
        if self.error is not None:
            return f"stopped by an error: {self.error}"
        return self.result.status if self.result else "not started"

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, JobStarted):
            self.started = event
        if isinstance(event, JobStarted | Progress) or (isinstance(event, JobFinished) and event.figures):
            self.figures = event.figures
        if isinstance(event, JobFinished):
            self.finished = event
        with self._lock:
            listeners = list(self._listeners)
        emit(listeners, event)

    def _start(self, runner: Runner) -> None:
        self._runner = runner
        self._thread = threading.Thread(target=self._run, name=f"qsync {self.job_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._runner is not None
        try:
            self.result = self._runner.run()
        except BaseException as exc:  # kept for wait(): a thread's exception would otherwise be lost
            self.error = exc
        finally:
            with _runs_lock:
                if _runs.get((str(self.db), self.job_id)) is self:
                    del _runs[(str(self.db), self.job_id)]

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def concurrency(self) -> int:
        return self._runner.concurrency if self._runner else 0

    def pause(self) -> None:
        """Let the API calls in flight finish (their answers are saved), then leave the job paused."""
        if self._runner is not None:
            self._runner.request_stop()

    def cancel(self) -> None:
        """Stop like pause, and leave the job cancelled (vectors already paid for stay in the cache)."""
        if self._runner is not None:
            self._runner.request_cancel()

    def resume(self) -> None:
        """Run the job again in the background, as stored, with the same listeners: after pause(), or a failure
        (its failed batches are tried again). A run still stopping is waited for first."""
        if self.running and self._runner is not None and not self._runner.control.stopping:
            raise ConfigError(f"job {self.job_id!r} is running; pause() it first")
        if self._thread is not None:
            self._thread.join()
        with _runs_lock:
            existing = _runs.get((str(self.db), self.job_id))
            if existing is not None and existing.running:
                raise ConfigError(f"job {self.job_id!r} is already running in this kernel")
            self.result, self.error, self.finished = None, None, None
            runner = jobs.make_runner(self.job_id, db=self.db, settings=self._settings, concurrency=self._concurrency,
                                      listeners=[self._dispatch], clock=self._clock)  # fmt: skip
            _runs[(str(self.db), self.job_id)] = self
        self._start(runner)

    def wait(self, timeout: float | None = None) -> RunResult | None:
        """Block until the run ends (None if `timeout` passed first); raise what stopped it, if anything did."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.result


def active_run(job: str, db: PathLike | None = None) -> JobHandle | None:
    """The background run of `job` in this process, if one is running."""
    with _runs_lock:
        handle = _runs.get((str(resolve_db(db)), job))
    return handle if handle is not None and handle.running else None


def start_job(
    job: str | jobs.OpenedJob,
    *,
    db: PathLike | None = None,
    settings: RunSettings | None = None,
    concurrency: int | None = None,
    listeners: Sequence[Listener] = (),
    max_cost_usd: BudgetOption = KEEP,
    only_batches: Sequence[int] | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> JobHandle:
    """Run (or resume) a planned job in a background thread; returns at once. A job just opened by
    `jobs.open_for_run` runs with the sink that checked its collection (closed here if it cannot start)."""
    path = resolve_db(db)
    opened = jobs.OpenedJob.of(job)
    job_id = opened.job_id
    with _runs_lock:
        existing = _runs.get((str(path), job_id))
        if existing is not None and existing.running:
            opened.close()
            raise ConfigError(f"job {job_id!r} is already running in this kernel")
        handle = JobHandle(job_id, path, listeners, settings=settings, concurrency=concurrency, clock=clock)
        runner = jobs.make_runner(job, db=path, settings=settings, concurrency=concurrency, listeners=[handle._dispatch],
                                 max_cost_usd=max_cost_usd, only_batches=only_batches, clock=clock)  # fmt: skip
        _runs[(str(path), job_id)] = handle
    handle._start(runner)
    return handle


@atexit.register
def _pause_on_exit() -> None:
    # A kernel shut down under a running job: pause it cleanly (a stale job would need a take-over).
    with _runs_lock:
        handles = list(_runs.values())
    for handle in handles:
        handle.pause()
    for handle in handles:
        if handle._thread is not None:
            handle._thread.join(30)


__all__ = ["JobHandle", "active_run", "start_job"]
