"""Pause, Stop and Ctrl-C reach every wait: backoffs, rate-limit waits, polls.

A run owns one `Control`. Its waits sleep on an event, so `request_stop()` from any thread (a notebook
button, the scheduler's Ctrl-C handler, the heartbeat that saw a cancel) wakes them at once and they
raise `Interrupted`; the batch that was waiting goes back to pending, having paid for nothing. What a
stop cannot cut short is an API call already on the wire: its answer is saved when it arrives.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from qsync.errors import Interrupted


class Control:
    def __init__(self, sleep: Callable[[float], None] | None = None) -> None:
        self._stop = threading.Event()
        self._cancel = threading.Event()
        self._wind_down = threading.Event()
        # Tests inject a sleep that records instead of waiting; it is called only when not stopping.
        self._sleep = sleep

    def request_stop(self) -> None:
        """Finish the API calls in flight, then pause the job."""
        self._stop.set()

    def wind_down(self) -> None:
        """Start no new batch and no new call; let the calls under way finish and be saved, and the batches that made
        them finish (the job must stop for a reason of its own, such as the budget). A batch still waiting for a
        call slot goes back to pending (engine.slots)."""
        self._wind_down.set()

    @property
    def winding_down(self) -> bool:
        """No new batch is to start: the run is stopping or winding down."""
        return self._wind_down.is_set() or self._stop.is_set()

    def request_cancel(self) -> None:
        """Stop like request_stop, and leave the job cancelled."""
        self._cancel.set()
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        if self._stop.is_set():
            raise Interrupted("the run is stopping")

    def wait(self, seconds: float) -> None:
        """Sleep `seconds`, or raise Interrupted as soon as a stop is requested."""
        self.check()
        if seconds <= 0:
            return
        if self._sleep is not None:
            self._sleep(seconds)
            self.check()
            return
        if self._stop.wait(seconds):
            raise Interrupted("the run is stopping")

    def pause_for(self, seconds: float) -> bool:
        """Sleep up to `seconds`; False if a stop cut it short (for loops that poll, never raise)."""
        if self._sleep is not None:
            if not self._stop.is_set():
                self._sleep(seconds)
            return not self._stop.is_set()
        return not self._stop.wait(seconds)
