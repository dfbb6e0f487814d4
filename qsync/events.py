"""What a running job tells its listeners (CLI progress bar, notebook widgets, logging).

Listeners are plain callables, called on the runner's scheduling thread; a slow listener slows the
scheduler, so widgets throttle their own redraws. A listener that raises is logged and ignored: a
broken progress bar must never stop a paid backfill.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger("qsync")


@dataclass(frozen=True)
class JobStarted:
    job_id: str
    total_records: int
    done_records: int  # already done before this run: what a resume does not redo
    skipped_records: int
    batches_total: int
    batches_done: int
    took_over_stale_owner: bool


@dataclass(frozen=True)
class Progress:
    job_id: str
    total_records: int
    done_records: int
    skipped_records: int
    batches_total: int
    batches_done: int
    batches_failed: int
    tokens: int
    cost_usd: float
    saved_tokens: int
    run_records: int  # records done by this run
    elapsed_s: float  # of this run


@dataclass(frozen=True)
class BatchFinished:
    job_id: str
    batch_no: int
    outcome: str  # done | failed | released
    records: int
    embedded_texts: int
    cache_hits: int
    error: str | None


@dataclass(frozen=True)
class JobFinished:
    job_id: str
    status: str  # completed | paused | failed | cancelled
    message: str | None


@dataclass(frozen=True)
class Notice:
    job_id: str
    text: str


Event = JobStarted | Progress | BatchFinished | JobFinished | Notice
Listener = Callable[[Event], None]


def emit(listeners: Iterable[Listener], event: Event) -> None:
    for listener in listeners:
        try:
            listener(event)
        except Exception:
            log.exception("qsync listener %r failed on %s", listener, type(event).__name__)
