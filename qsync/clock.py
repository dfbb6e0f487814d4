"""Time as a dependency, so retry, lease and rate logic can be tested without waiting."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def now(self) -> datetime:
        """Wall-clock time in UTC, comparable across processes (leases, ledger timestamps)."""
        ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        # Naive UTC: DuckDB TIMESTAMP columns are naive, and every process must agree on the zone.
        return datetime.now(timezone.utc).replace(tzinfo=None)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


SYSTEM_CLOCK = SystemClock()
