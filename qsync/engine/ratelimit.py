"""Client-side rate limits shared by every concurrent batch: texts per minute and tokens per minute.

Gemini counts each text as one request against a per-project limit, so the limiter paces texts and
tokens, not HTTP calls. It reserves capacity before a call (going into debt and sleeping it off, so
callers are served in order and the pace is smooth), corrects the token count once the answer says
what was used, and slows down when 429s still arrive: each one cuts the pace by a fifth and stops
every caller until the server's retry delay has passed; successes win the pace back slowly.

Gemini's limits belong to a project, not to a run: `shared_limiter` gives every run of this process that uses
the same API key and model one limiter, and keeps its state where every other process of the machine using that
quota reads and writes it too (engine.pace: a small file under the user's cache folder, with a lock), so two jobs
in one kernel, or in two kernels and a terminal, together pace to the limit, not each to it.
"""

from __future__ import annotations

import threading
import weakref

from qsync.clock import SYSTEM_CLOCK, Clock
from qsync.engine.pace import MemoryPace, PaceState, PaceStore, shared_store

# Aim just under the limit: a request carries up to 100 texts and the server's window is exact.
SAFETY = 0.97


class RateLimiter:
    def __init__(
        self,
        texts_per_minute: float | None,
        tokens_per_minute: float | None,
        *,
        safety: float = SAFETY,
        clock: Clock = SYSTEM_CLOCK,
        store: PaceStore | None = None,
    ) -> None:
        self.clock = clock
        self.safety = safety
        self._lock = threading.Lock()
        # per second, after the safety margin; None: that dimension is not limited
        self._rates: dict[str, float | None] = {
            "texts": texts_per_minute * safety / 60 if texts_per_minute else None,
            "tokens": tokens_per_minute * safety / 60 if tokens_per_minute else None,
        }
        self.store = store or MemoryPace()
        self.throttled = 0  # 429s this process saw

    def acquire(self, texts: int, tokens: int) -> float:
        """Reserve `texts` and `tokens`; return the seconds to wait before sending them. The caller waits
        (through the run's Control, so that a Pause cuts the wait short)."""
        rates = self._rates_now()

        def take(state: PaceState) -> float:
            now = self.clock.monotonic()
            wait = max(0.0, state.holds_until(now) - now)
            for name, amount in (("texts", texts), ("tokens", tokens)):
                per_second = rates[name]
                if per_second is None:
                    continue
                rate = per_second * state.pace
                level, updated = state.level(name, now)
                level = min(level + (now - updated) * rate, amount)  # never bank more than one request's worth
                level -= amount
                state.levels[name] = [level, now]
                if level < 0:
                    wait = max(wait, -level / rate)
            return wait

        return self.store.update(take)

    def settle(self, estimated_tokens: int, actual_tokens: int) -> None:
        """The answer said how many tokens the call really used."""
        if self._rates["tokens"] is None:
            return

        def correct(state: PaceState) -> None:
            now = self.clock.monotonic()
            level, updated = state.level("tokens", now)
            state.levels["tokens"] = [level - (actual_tokens - estimated_tokens), updated]

        self.store.update(correct)

    def throttle(self, retry_after_s: float | None) -> None:
        """A 429 arrived despite the pacing: slow down, and hold everyone until the delay passes."""
        with self._lock:
            self.throttled += 1

        def slow(state: PaceState) -> None:
            now = self.clock.monotonic()
            state.pace = max(0.2, state.pace * 0.8)
            state.paused_until = max(state.holds_until(now), now + (retry_after_s or 1.0))

        self.store.update(slow)

    def succeeded(self) -> None:
        def recover(state: PaceState) -> None:
            state.pace = min(1.0, state.pace + 0.02)

        self.store.update(recover)

    @property
    def pace(self) -> float:
        """The adaptive multiplier in (0.2, 1], shared with every limiter of the same store."""
        return self.store.update(lambda state: state.pace)

    def _rates_now(self) -> dict[str, float | None]:
        with self._lock:
            return dict(self._rates)

    @property
    def limits(self) -> tuple[float | None, float | None]:
        """(texts, tokens) per minute this limiter paces to (before its safety margin)."""
        with self._lock:
            return tuple(  # type: ignore[return-value]
                None if rate is None else round(rate * 60 / self.safety, 6) for rate in self._rates.values()
            )

    def limit_to(self, texts_per_minute: float | None, tokens_per_minute: float | None) -> None:
        """Pace to at most these limits too (a second run sharing this limiter asked for a lower pace)."""
        with self._lock:
            for name, limit in (("texts", texts_per_minute), ("tokens", tokens_per_minute)):
                rate = self._rates[name]
                if rate is not None and limit:
                    self._rates[name] = min(rate, limit * self.safety / 60)


# The limiters of this process, by the quota they pace (an API key's fingerprint and a model): kept while a run
# uses one, dropped when the last run using it ends. Their state is in a file shared with the other processes of
# this machine that pace the same quota (engine.pace).
_shared: weakref.WeakValueDictionary[str, RateLimiter] = weakref.WeakValueDictionary()
_shared_lock = threading.Lock()


def shared_limiter(key: str, texts_per_minute: float | None, tokens_per_minute: float | None) -> RateLimiter:
    """The one limiter of this process for the quota `key`, its pace shared with every process of this machine
    that uses the same quota; a run that asks for lower limits lowers them."""
    with _shared_lock:
        limiter = _shared.get(key)
        if limiter is None:
            limiter = _shared[key] = RateLimiter(texts_per_minute, tokens_per_minute, store=shared_store(key))
        else:
            limiter.limit_to(texts_per_minute, tokens_per_minute)
        return limiter
