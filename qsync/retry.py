"""Retrying transient failures: honour the server's delay when it gives one, else back off with jitter."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from .clock import SYSTEM_CLOCK, Clock
from .errors import TransientError

T = TypeVar("T")


@dataclass
class RetryPolicy:
    max_attempts: int = 8
    base_s: float = 1.0
    max_s: float = 60.0
    clock: Clock = SYSTEM_CLOCK
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after_s: float | None) -> float:
        """Seconds to wait before attempt `attempt + 1`."""
        if retry_after_s is not None:
            return retry_after_s
        ceiling = min(self.max_s, self.base_s * float(2 ** (attempt - 1)))
        return ceiling * (0.5 + self.rng.random() / 2)  # jitter: concurrent retries spread out

    def call(self, fn: Callable[[], T], on_retry: Callable[[TransientError, float], None] | None = None) -> T:
        """Run `fn`, retrying TransientError up to max_attempts; the last one propagates."""
        attempt = 1
        while True:
            try:
                return fn()
            except TransientError as exc:
                if attempt >= self.max_attempts:
                    raise
                wait = self.delay(attempt, exc.retry_after_s)
                if on_retry is not None:
                    on_retry(exc, wait)
                self.clock.sleep(wait)
                attempt += 1
