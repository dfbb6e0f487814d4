"""The Python API as a notebook uses it: `run` and `start` plan (or pick up) a job and run it, showing its live
progress where the cell is when in a Jupyter kernel.

    handle = qsync.start(df, collection="docs")     # plans, then runs in a background thread
    handle.pause(); handle.wait(); handle.result    # or qsync.run(..., background=True)
    qsync.run(df, collection="docs")                # in a notebook: a live progress widget, then the result

`run` is `app.jobs.run` with two additions: in a Jupyter kernel it shows the job's progress (the notebook layer's
JobMonitor, imported only then: nothing below this module needs ipywidgets), and `background=True` returns a
`JobHandle` at once. The CLI calls `app.jobs.run`. This module sits on top of the layers, beside the notebook.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, overload

from typing_extensions import Unpack

from qsync.app import jobs
from qsync.app.options import SourceLike, SpecOptions
from qsync.app.session import JobHandle, start_job
from qsync.clock import SYSTEM_CLOCK, Clock
from qsync.engine.events import Listener
from qsync.engine.runner import RunResult
from qsync.spec.job import KEEP, BudgetOption
from qsync.spec.settings import RunSettings

PathLike = str | os.PathLike[str]


def start(
    source: SourceLike,
    *,
    db: PathLike | None = None,
    settings: RunSettings | None = None,
    concurrency: int | None = None,
    listeners: Sequence[Listener] = (),
    max_cost_usd: BudgetOption = KEEP,
    progress: bool | None = None,
    clock: Clock = SYSTEM_CLOCK,
    **options: Unpack[SpecOptions],
) -> JobHandle:
    """Plan the job (or pick up the unfinished one of that name; its estimate is recorded when new), then
    run it in a background thread. In a notebook, shows its progress (`progress=False`: not)."""
    job = jobs.open_for_run(source, db=db, max_cost_usd=max_cost_usd, settings=settings, clock=clock,
                           listeners=listeners, **options)  # fmt: skip
    shown = [*listeners, *_notebook_progress(job, db, progress)]
    return start_job(job, db=db, settings=settings, concurrency=concurrency, listeners=shown,
                     max_cost_usd=max_cost_usd, clock=clock)  # fmt: skip


@overload
def run(
    source: SourceLike, *, background: Literal[False] = ..., db: PathLike | None = ...,
    settings: RunSettings | None = ..., concurrency: int | None = ..., listeners: Sequence[Listener] = ...,
    max_cost_usd: BudgetOption = ..., progress: bool | None = ..., clock: Clock = ..., **options: Unpack[SpecOptions],
) -> RunResult: ...  # fmt: skip
@overload
def run(
    source: SourceLike, *, background: Literal[True], db: PathLike | None = ...,
    settings: RunSettings | None = ..., concurrency: int | None = ..., listeners: Sequence[Listener] = ...,
    max_cost_usd: BudgetOption = ..., progress: bool | None = ..., clock: Clock = ..., **options: Unpack[SpecOptions],
) -> JobHandle: ...  # fmt: skip
def run(
    source: SourceLike,
    *,
    background: bool = False,
    db: PathLike | None = None,
    settings: RunSettings | None = None,
    concurrency: int | None = None,
    listeners: Sequence[Listener] = (),
    max_cost_usd: BudgetOption = KEEP,
    progress: bool | None = None,
    clock: Clock = SYSTEM_CLOCK,
    **options: Unpack[SpecOptions],
) -> RunResult | JobHandle:
    """Open the job (`app.jobs.open_for_run`, as `qsync run` does: the collection checked is the
    one the run writes to, a Qdrant Edge shard loaded once) and run it until it completes, pauses or fails.

    `background=True` returns a `JobHandle` at once (see `start`). In a Jupyter kernel the run shows its
    progress where the cell is; elsewhere it is exactly `app.jobs.run`."""
    if background:
        return start(source, db=db, settings=settings, concurrency=concurrency, listeners=listeners,
                     max_cost_usd=max_cost_usd, progress=progress, clock=clock, **options)  # fmt: skip
    if not _in_notebook() or progress is False:
        return jobs.run(source, db=db, settings=settings, concurrency=concurrency, listeners=listeners,
                        max_cost_usd=max_cost_usd, clock=clock, **options)  # fmt: skip
    job = jobs.open_for_run(source, db=db, max_cost_usd=max_cost_usd, settings=settings, clock=clock,
                           listeners=listeners, **options)  # fmt: skip
    shown = [*listeners, *_notebook_progress(job, db, progress)]
    return jobs.run_job(job, db=db, settings=settings, concurrency=concurrency, listeners=shown,
                        max_cost_usd=max_cost_usd, clock=clock)  # fmt: skip


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


def _notebook_progress(job: jobs.OpenedJob, db: PathLike | None, progress: bool | None) -> list[Listener]:
    """A JobMonitor shown in the cell's output, when in a notebook (`progress` None) or asked for. The job's open
    sink is closed if it cannot be shown (its run does not start)."""
    if progress is False or (progress is None and not _in_notebook()):
        return []
    try:
        from IPython.display import display

        from qsync.notebook.monitor import JobMonitor

        monitor = JobMonitor(job.job_id, db=None if db is None else Path(db))
        display(monitor)  # type: ignore[no-untyped-call]
    except BaseException:
        job.close()
        raise
    listener: Listener = monitor
    return [listener]
