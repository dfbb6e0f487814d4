"""A run's pace: records per second over a recent window, and the time left at that pace."""

from __future__ import annotations

from collections import deque


class RateMeter:
    """Records per second over the last `window_s` of one run, so the rate neither jumps when a run starts
    with a burst of batches finishing together nor counts the records done before a Resume."""

    def __init__(self, window_s: float = 30.0, min_span_s: float = 4.0) -> None:
        self.window_s = window_s
        self.min_span_s = min_span_s
        self._samples: deque[tuple[float, int]] = deque()

    def restart(self, t: float, done: int) -> None:
        """A new run (Start, Resume, attach): earlier samples say nothing about this run's pace."""
        self._samples = deque([(t, done)])

    def add(self, t: float, done: int) -> None:
        if not self._samples:
            self._samples.append((t, done))
            return
        self._samples.append((t, done))
        while len(self._samples) > 2 and self._samples[1][0] <= t - self.window_s:
            self._samples.popleft()

    def rate(self) -> float | None:
        """None until the run has gone on for `min_span_s` (a rate from one burst would mislead)."""
        if len(self._samples) < 2:
            return None
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        if t1 - t0 < self.min_span_s:
            return None
        return max(0.0, (d1 - d0) / (t1 - t0))

    def eta_s(self, remaining: int) -> float | None:
        rate = self.rate()
        if remaining <= 0:
            return 0.0
        return remaining / rate if rate else None
