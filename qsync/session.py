"""Runs from a notebook cell: live progress where the cell is, and runs that do not hold the kernel.

    handle = qsync.start(df, collection="docs")     # plans, then runs in a background thread
    handle.pause(); handle.wait(); handle.result    # or qsync.run(..., background=True)
    qsync.run(df, collection="docs")                # in a notebook: a live progress widget, then the result

`qsync.run` is `api.run` with two additions: in a Jupyter kernel it shows the job's progress (the
notebook layer's JobMonitor, imported only then: the core never needs ipywidgets), and `background=True`
returns a `JobHandle` at once. The CLI calls `api.run` directly and is unchanged.

Every background run of this process is registered by (db, job), so a notebook re-run (Run All) finds the
run its previous cells started instead of starting a second runner on the same job.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, overload

import pandas as pd
from typing_extensions import Unpack

from . import api, estimates
from .clock import SYSTEM_CLOCK, Clock
from .config import resolve_db
from .errors import ConfigError
from .events import Event, JobFinished, JobStarted, Listener, Progress, emit
from .figures import JobFigures
from .runner import Runner, RunResult
from .sources import Source
from .spec import KEEP, Budget, RunSettings, SpecOptions

PathLike = str | os.PathLike[str]

_runs: dict[tuple[str, str], JobHandle] = {}
_runs_lock = threading.Lock()


class JobHandle:
    """A job running in a background thread of this process. Listeners can join while it runs."""

    def __init__(self, job_id: str, db: Path, listeners: Sequence[Listener] = ()) -> None:
        self.job_id = job_id
        self.db = db
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        self.figures: JobFigures | None = None  # as of the latest event
        self.started: JobStarted | None = None
        self._listeners = list(listeners)
        self._lock = threading.Lock()
        self._runner: Runner | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else (self.result.status if self.result else "not started")
        return f"<JobHandle {self.job_id!r}: {state}>"

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
        return self._runner.settings.concurrency if self._runner else 0

    @property
    def batches_in_flight(self) -> int:
        return self._runner.batches_in_flight if self._runner else 0

    def pause(self) -> None:
        """Let the API calls in flight finish (their answers are saved), then leave the job paused."""
        if self._runner is not None:
            self._runner.request_stop()

    def cancel(self) -> None:
        """Stop like pause, and leave the job cancelled (vectors already paid for stay in the cache)."""
        if self._runner is not None:
            self._runner.request_cancel()

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
    job: str,
    *,
    db: PathLike | None = None,
    settings: RunSettings | None = None,
    concurrency: int | None = None,
    listeners: Sequence[Listener] = (),
    max_cost_usd: Budget = KEEP,
    only_batches: Sequence[int] | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> JobHandle:
    """Run (or resume) a planned job in a background thread; returns at once."""
    path = resolve_db(db)
    with _runs_lock:
        existing = _runs.get((str(path), job))
        if existing is not None and existing.running:
            raise ConfigError(f"job {job!r} is already running in this kernel")
        handle = JobHandle(job, path, listeners)
        runner = api.make_runner(job, db=path, settings=settings, concurrency=concurrency, listeners=[handle._dispatch],
                                 max_cost_usd=max_cost_usd, only_batches=only_batches, clock=clock)  # fmt: skip
        _runs[(str(path), job)] = handle
    handle._start(runner)
    return handle


def start(
    source: Source | pd.DataFrame | PathLike,
    *,
    db: PathLike | None = None,
    settings: RunSettings | None = None,
    concurrency: int | None = None,
    listeners: Sequence[Listener] = (),
    max_cost_usd: Budget = KEEP,
    progress: bool | None = None,
    clock: Clock = SYSTEM_CLOCK,
    **options: Unpack[SpecOptions],
) -> JobHandle:
    """Plan the job (or pick up the unfinished one of that name; its estimate is recorded when new), then
    run it in a background thread. In a notebook, shows its progress (`progress=False`: not)."""
    job = estimates.prepare(source, db=db, max_cost_usd=max_cost_usd, settings=settings, clock=clock, **options)
    shown = [*listeners, *_notebook_progress(job, db, progress)]
    return start_job(job, db=db, settings=settings, concurrency=concurrency, listeners=shown, clock=clock)


@overload
def run(
    source: Source | pd.DataFrame | PathLike, *, background: Literal[False] = ..., db: PathLike | None = ...,
    settings: RunSettings | None = ..., concurrency: int | None = ..., listeners: Sequence[Listener] = ...,
    max_cost_usd: Budget = ..., progress: bool | None = ..., clock: Clock = ..., **options: Unpack[SpecOptions],
) -> RunResult: ...  # fmt: skip
@overload
def run(
    source: Source | pd.DataFrame | PathLike, *, background: Literal[True], db: PathLike | None = ...,
    settings: RunSettings | None = ..., concurrency: int | None = ..., listeners: Sequence[Listener] = ...,
    max_cost_usd: Budget = ..., progress: bool | None = ..., clock: Clock = ..., **options: Unpack[SpecOptions],
) -> JobHandle: ...  # fmt: skip
def run(
    source: Source | pd.DataFrame | PathLike,
    *,
    background: bool = False,
    db: PathLike | None = None,
    settings: RunSettings | None = None,
    concurrency: int | None = None,
    listeners: Sequence[Listener] = (),
    max_cost_usd: Budget = KEEP,
    progress: bool | None = None,
    clock: Clock = SYSTEM_CLOCK,
    **options: Unpack[SpecOptions],
) -> RunResult | JobHandle:
    """Open the job (`api.open_job`) and run it until it completes, pauses or fails.

    `background=True` returns a `JobHandle` at once (see `start`). In a Jupyter kernel the run shows its
    progress where the cell is and records the job's estimate when it plans a new job; elsewhere it is
    exactly `api.run`."""
    if background:
        return start(source, db=db, settings=settings, concurrency=concurrency, listeners=listeners,
                     max_cost_usd=max_cost_usd, progress=progress, clock=clock, **options)  # fmt: skip
    if not _in_notebook() or progress is False:
        return api.run(source, db=db, settings=settings, concurrency=concurrency, listeners=listeners,
                       max_cost_usd=max_cost_usd, clock=clock, **options)  # fmt: skip
    job = estimates.prepare(source, db=db, max_cost_usd=max_cost_usd, settings=settings, clock=clock, **options)
    shown = [*listeners, *_notebook_progress(job, db, progress)]
    return api.run_job(job, db=db, settings=settings, concurrency=concurrency, listeners=shown, clock=clock)


def _in_notebook() -> bool:
    """In a Jupyter kernel (not a plain IPython terminal) that can show widgets."""
    shell = sys.modules.get("IPython") and getattr(sys.modules["IPython"], "get_ipython", lambda: None)()
    if shell is None or not hasattr(shell, "kernel"):
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def _notebook_progress(job: str, db: PathLike | None, progress: bool | None) -> list[Listener]:
    """A JobMonitor shown in the cell's output, when in a notebook (`progress` None) or asked for."""
    if progress is False or (progress is None and not _in_notebook()):
        return []
    from IPython.display import display

    from .notebook.monitor import JobMonitor

    monitor = JobMonitor(job, db=None if db is None else Path(db))
    display(monitor)  # type: ignore[no-untyped-call]
    listener: Listener = monitor
    return [listener]


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


__all__ = ["JobHandle", "active_run", "run", "start", "start_job"]
