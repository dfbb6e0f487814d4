"""Client-side rate limits shared by every concurrent batch: texts per minute and tokens per minute.

Gemini counts each text as one request against a per-project limit, so the limiter paces texts and
tokens, not HTTP calls. It reserves capacity before a call (going into debt and sleeping it off, so
callers are served in order and the pace is smooth), corrects the token count once the answer says
what was used, and slows down when 429s still arrive: each one cuts the pace by a fifth and stops
every caller until the server's retry delay has passed; successes win the pace back slowly.

Gemini's limits belong to a project, not to a run: `shared_limiter` gives every run of this process that uses
the same API key and model one limiter, so two jobs in one kernel together pace to the limit, not each to it.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

from qsync.clock import SYSTEM_CLOCK, Clock

# Aim just under the limit: a request carries up to 100 texts and the server's window is exact.
SAFETY = 0.97


@dataclass
class _Bucket:
    per_second: float
    level: float = 0.0  # starts empty: no burst at start-up that a sliding window would count
    updated: float = 0.0


class RateLimiter:
    def __init__(
        self,
        texts_per_minute: float | None,
        tokens_per_minute: float | None,
        *,
        safety: float = SAFETY,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.clock = clock
        self.safety = safety
        self._lock = threading.Lock()
        now = clock.monotonic()
        self._texts = _Bucket(texts_per_minute * safety / 60, updated=now) if texts_per_minute else None
        self._tokens = _Bucket(tokens_per_minute * safety / 60, updated=now) if tokens_per_minute else None
        self.pace = 1.0  # adaptive multiplier in (0.2, 1]
        self._paused_until = now
        self.throttled = 0  # 429s seen

    def acquire(self, texts: int, tokens: int) -> float:
        """Reserve `texts` and `tokens`; return the seconds to wait before sending them. The caller waits
        (through the run's Control, so that a Pause cuts the wait short)."""
        with self._lock:
            now = self.clock.monotonic()
            wait = max(0.0, self._paused_until - now)
            for bucket, amount in ((self._texts, texts), (self._tokens, tokens)):
                if bucket is None:
                    continue
                rate = bucket.per_second * self.pace
                bucket.level += (now - bucket.updated) * rate
                bucket.level = min(bucket.level, amount)  # never bank more than one request's worth
                bucket.updated = now
                bucket.level -= amount
                if bucket.level < 0:
                    wait = max(wait, -bucket.level / rate)
        return wait

    def settle(self, estimated_tokens: int, actual_tokens: int) -> None:
        """The answer said how many tokens the call really used."""
        if self._tokens is not None:
            with self._lock:
                self._tokens.level -= actual_tokens - estimated_tokens

    def throttle(self, retry_after_s: float | None) -> None:
        """A 429 arrived despite the pacing: slow down, and hold everyone until the delay passes."""
        with self._lock:
            self.throttled += 1
            self.pace = max(0.2, self.pace * 0.8)
            self._paused_until = max(self._paused_until, self.clock.monotonic() + (retry_after_s or 1.0))

    def succeeded(self) -> None:
        with self._lock:
            self.pace = min(1.0, self.pace + 0.02)

    @property
    def limits(self) -> tuple[float | None, float | None]:
        """(texts, tokens) per minute this limiter paces to (before its safety margin)."""
        with self._lock:
            return tuple(  # type: ignore[return-value]
                None if bucket is None else round(bucket.per_second * 60 / self.safety, 6)
                for bucket in (self._texts, self._tokens)
            )

    def limit_to(self, texts_per_minute: float | None, tokens_per_minute: float | None) -> None:
        """Pace to at most these limits too (a second run sharing this limiter asked for a lower pace)."""
        with self._lock:
            for bucket, limit in ((self._texts, texts_per_minute), (self._tokens, tokens_per_minute)):
                if bucket is not None and limit:
                    bucket.per_second = min(bucket.per_second, limit * self.safety / 60)


# The limiters of this process, by the quota they pace (an API key's fingerprint and a model): kept while a run
# uses one, dropped when the last run using it ends.
_shared: weakref.WeakValueDictionary[str, RateLimiter] = weakref.WeakValueDictionary()
_shared_lock = threading.Lock()


def shared_limiter(key: str, texts_per_minute: float | None, tokens_per_minute: float | None) -> RateLimiter:
    """The one limiter of this process for the quota `key`; a run that asks for lower limits lowers them."""
    with _shared_lock:
        limiter = _shared.get(key)
        if limiter is None:
            limiter = _shared[key] = RateLimiter(texts_per_minute, tokens_per_minute)
        else:
            limiter.limit_to(texts_per_minute, tokens_per_minute)
        return limiter
