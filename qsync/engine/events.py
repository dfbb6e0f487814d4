"""What a running job tells its listeners (CLI progress bar, notebook widgets, logging).

Listeners are plain callables, called on the runner's scheduling thread; a slow listener slows the
scheduler, so widgets throttle their own redraws. A listener that raises is logged and ignored: a
broken progress bar must never stop a paid backfill. A listener that never shows Progress says so with
`wants_progress = False`: the figures behind each Progress are a query of the checkpoint file that every batch's
writes wait for, made only while some listener shows them (`wants_progress`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from qsync.ledger.figures import JobFigures

log = logging.getLogger("qsync")


@dataclass(frozen=True)
class JobStarted:
    job_id: str
    figures: JobFigures  # as the run starts: processed_records is what this run does not redo
    took_over_stale_owner: bool


@dataclass(frozen=True)
class Progress:
    job_id: str
    figures: JobFigures  # read from the checkpoint, as `qsync status` would show them now
    run_records: int  # records this run finished (loaded or skipped)
    elapsed_s: float  # of this run

    @property
    def done_records(self) -> int:
        return self.figures.processed_records


@dataclass(frozen=True)
class BatchFinished:
    job_id: str
    batch_no: int
    outcome: str  # done | failed | released
    records: int
    embedded_texts: int
    cache_hits: int
    error: str | None
    batch_mode_texts: int = 0  # texts whose vectors the job's Batch Mode paid for (not cache hits)


@dataclass(frozen=True)
class JobFinished:
    job_id: str
    status: str  # completed | paused | failed | cancelled
    message: str | None
    figures: JobFigures | None = None  # None when the run could not read them (the store broke)


@dataclass(frozen=True)
class RunError:
    """The run ended on an error without telling how the job ended (no JobFinished): it was refused before it
    started (the job was cancelled, another process runs it, the checkpoint file is damaged), lost its lease to
    another runner, or met an error while it wound up (the checkpoint file could not be read or written). The job
    is as the error left it; the caller of `Runner.run` gets the error itself. `resumable`: whether running the job
    again can help (not for a cancelled job, nor a damaged file before `qsync recover`)."""

    job_id: str
    error: str
    resumable: bool = True


@dataclass(frozen=True)
class Notice:
    job_id: str
    text: str
    planning: bool = False  # the notice that the job is being planned (it was not: a run that hears none resumes)


Event = JobStarted | Progress | BatchFinished | JobFinished | RunError | Notice
Listener = Callable[[Event], None]


def wants_progress(listeners: Iterable[Listener]) -> bool:
    """Whether any of these listeners shows Progress events (a plain callable is taken to)."""
    return any(getattr(listener, "wants_progress", True) for listener in listeners)


def emit(listeners: Iterable[Listener], event: Event) -> None:
    for listener in listeners:
        try:
            listener(event)
        except Exception:
            log.exception("qsync listener %r failed on %s", listener, type(event).__name__)
