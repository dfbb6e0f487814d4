"""The one retry layer: every API and Qdrant call of a run goes through a `Retrier`.

Transient failures (429, 5xx, timeouts, dropped connections, a Qdrant away) are retried per call,
honouring the server's delay when it gives one, else backing off exponentially with jitter. Nothing
else retries: embedders and sinks make exactly one attempt per call, and the scheduler never requeues a
batch (a batch whose call gave up is `failed`, for `qsync resume` or the notebook's Retry). Waits go
through the run's Control, so Pause, Stop and Ctrl-C cut a backoff short.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from qsync.engine.control import Control
from qsync.errors import TransientError

T = TypeVar("T")


@dataclass
class RetryPolicy:
    max_attempts: int = 8
    base_s: float = 1.0
    max_s: float = 60.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after_s: float | None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if retry_after_s is not None:
            return retry_after_s
        ceiling = min(self.max_s, self.base_s * float(2 ** (attempt - 1)))
        return ceiling * (0.5 + self.rng.random() / 2)  # jitter: concurrent retries spread out


class Retrier:
    def __init__(
        self,
        policy: RetryPolicy,
        control: Control,
        on_retry: Callable[[TransientError, float], None] | None = None,
    ) -> None:
        self.policy = policy
        self.control = control
        self.on_retry = on_retry

    def call(self, fn: Callable[[], T], before_retry: Callable[[TransientError], None] | None = None) -> T:
        """Run `fn`; retry TransientError up to max_attempts, the last one propagates. Raises
        Interrupted if the run stops during a wait."""
        attempt = 1
        while True:
            self.control.check()
            try:
                return fn()
            except TransientError as exc:
                if attempt >= self.policy.max_attempts:
                    raise
                wait = self.policy.delay(attempt, exc.retry_after_s)
                if before_retry is not None:
                    before_retry(exc)
                if self.on_retry is not None:
                    self.on_retry(exc, wait)
                self.control.wait(wait)
                attempt += 1
