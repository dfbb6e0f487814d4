"""Time as a dependency, so lease and rate logic can be tested without waiting. (Waits themselves go
through the run's Control, control.py, so that Pause can cut them short.)"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def now(self) -> datetime:
        """Wall-clock time in UTC, comparable across processes (leases, ledger timestamps)."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        # Naive UTC: DuckDB TIMESTAMP columns are naive, and every process must agree on the zone.
        return datetime.now(timezone.utc).replace(tzinfo=None)


SYSTEM_CLOCK = SystemClock()
