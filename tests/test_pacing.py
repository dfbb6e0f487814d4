"""Retry and rate-limit logic with an injected clock: no test waits on a real timer."""

from __future__ import annotations

import threading
import time
from datetime import datetime

import pytest

from qsync.engine.control import Control
from qsync.engine.ratelimit import RateLimiter
from qsync.engine.retry import Retrier, RetryPolicy
from qsync.errors import Interrupted, RateLimited, TransientError


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.t)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += max(0.0, seconds)


def test_retry_honours_the_servers_delay_then_backs_off_exponentially() -> None:
    clock = FakeClock()
    failures = [RateLimited("429", 15.0), TransientError("503"), TransientError("503"), None]
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        error = failures[len(calls) - 1]
        if error is not None:
            raise error
        return "ok"

    assert Retrier(RetryPolicy(max_attempts=5, base_s=1.0), Control(sleep=clock.sleep)).call(flaky) == "ok"
    assert clock.sleeps[0] == 15.0  # RetryInfo.retryDelay
    assert 1.0 <= clock.sleeps[1] <= 2.0 and 2.0 <= clock.sleeps[2] <= 4.0  # 2^(n-1) with jitter in [1/2, 1]


def test_retry_gives_up_after_max_attempts() -> None:
    clock = FakeClock()

    def always() -> None:
        raise TransientError("down")

    with pytest.raises(TransientError):
        Retrier(RetryPolicy(max_attempts=3), Control(sleep=clock.sleep)).call(always)
    assert len(clock.sleeps) == 2


def test_limiter_paces_texts_just_under_the_limit() -> None:
    clock = FakeClock()
    limiter = RateLimiter(3000, None, clock=clock)
    start = clock.t
    for _ in range(60):
        clock.sleep(limiter.acquire(100, 0))
    sent_per_minute = 6000 / ((clock.t - start) / 60)
    assert 0.95 * 3000 <= sent_per_minute <= 3000


def test_limiter_paces_tokens_and_settles_real_counts() -> None:
    clock = FakeClock()
    limiter = RateLimiter(None, 60_000, clock=clock)  # 1,000 tokens a second (x 0.97)
    clock.sleep(limiter.acquire(1, 970))
    assert clock.sleeps[-1] == pytest.approx(1.0)
    limiter.settle(estimated_tokens=970, actual_tokens=1940)  # the answer cost twice the estimate
    clock.sleep(limiter.acquire(1, 970))
    assert clock.sleeps[-1] == pytest.approx(2.0)


def test_a_429_slows_everyone_down_and_success_wins_the_pace_back() -> None:
    clock = FakeClock()
    limiter = RateLimiter(6000, None, clock=clock)
    limiter.throttle(retry_after_s=7.0)
    waited = limiter.acquire(1, 0)
    assert waited >= 7.0 and limiter.pace == pytest.approx(0.8)
    for _ in range(10):
        limiter.succeeded()
    assert limiter.pace == 1.0


def test_a_stop_ends_a_backoff_at_once_and_no_further_call_is_made() -> None:
    control = Control()
    calls: list[float] = []

    def rate_limited() -> None:
        calls.append(time.monotonic())
        raise RateLimited("429", 30.0)  # the server asks for 30 s

    retrier = Retrier(RetryPolicy(max_attempts=5), control)
    threading.Timer(0.2, control.request_stop).start()
    started = time.monotonic()
    with pytest.raises(Interrupted):
        retrier.call(rate_limited)
    assert time.monotonic() - started < 1.0  # not 30 s
    assert len(calls) == 1
