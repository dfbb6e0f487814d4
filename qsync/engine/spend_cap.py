"""A spending cap for a job's whole spend: embeddings, enrichment answers and Batch Mode submissions,
across every resume. A run starts from what the checkpoint says the job has spent; each paid call is
reserved against the cap (at its estimated, or for answers its highest, cost) before it is made, and
settled with its real cost after."""

from __future__ import annotations

import threading

from qsync.errors import PauseJob


class SpendCap:
    def __init__(self, limit_usd: float | None, spent_usd: float = 0.0) -> None:
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        self._reserved = 0.0
        self._lock = threading.Lock()

    def reserve(self, usd: float) -> None:
        """Claim `usd` for a call about to be made, or pause the job if it would break the cap."""
        with self._lock:
            if self.limit_usd is not None and self.spent_usd + self._reserved + usd > self.limit_usd + 1e-12:
                raise PauseJob(
                    f"the budget of ${self.limit_usd:.4f} would be exceeded (${self.spent_usd:.4f} spent, "
                    f"${self._reserved:.4f} in flight, next call ~${usd:.4f}); the job is paused until it is given "
                    "a higher budget"
                )
            self._reserved += usd

    def settle(self, reserved_usd: float, actual_usd: float) -> None:
        with self._lock:
            self._reserved = max(0.0, self._reserved - reserved_usd)
            self.spent_usd += actual_usd
