"""When a run tells its listeners the job's figures (Progress): read from the checkpoint file, so at most every
EVERY_S and at most SHARE of the time (the figures query holds the file's host, which every batch's writes wait for;
a long job's figures take longer to read, and on a busy machine so does everything), and only while some listener
shows them (events.wants_progress)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from qsync.clock import Clock
from qsync.engine.events import Listener, Progress, emit, wants_progress
from qsync.errors import LedgerError
from qsync.ledger.figures import job_figures
from qsync.ledger.ledger import Ledger

log = logging.getLogger("qsync")
EVERY_S = 0.5
SHARE = 0.05


class ProgressReports:
    def __init__(
        self, ledger: Ledger, clock: Clock, job_id: str, listeners: Sequence[Listener], started: float
    ) -> None:
        self.ledger = ledger
        self.clock = clock
        self.job_id = job_id
        self.listeners = listeners
        self.started = started  # time.monotonic() when the run began
        self._last = 0.0
        self._every_s = EVERY_S

    def due(self, run_records: int) -> None:
        """After a batch: the figures, if the last were told long enough ago."""
        now = time.monotonic()
        if now - self._last >= self._every_s:
            self.now(run_records)
            self._last = time.monotonic()
            self._every_s = max(EVERY_S, (self._last - now) / SHARE)

    def now(self, run_records: int) -> None:
        """The figures, now (`run_records`: the records this run finished)."""
        if not wants_progress(self.listeners):
            return  # nobody shows them: the figures query is not free
        try:
            figures = job_figures(self.ledger, self.clock, self.job_id)
        except LedgerError as exc:  # a progress bar must never stop a paid backfill
            log.warning("qsync could not read progress: %s", exc)
            return
        emit(self.listeners, Progress(self.job_id, figures, run_records, time.monotonic() - self.started))
