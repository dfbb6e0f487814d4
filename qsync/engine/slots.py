"""At most `concurrency` paid calls at once, while more batches than that are under way.

A batch spends most of its time away from the API: claimed and loaded, its texts looked up and claimed, its
vectors recorded, its points written to Qdrant. With one worker per call, the API sat idle through all of that
(at one call at a time and 300 ms a call, a fifth of each batch). So the scheduler runs a few more batches than
calls, and a batch takes one of these slots only for its call: from its spend reservation and rate-limit wait to
its answer saved in the cache (retries and their backoffs included). A paid answer not yet saved is still a call
in flight (a kill would pay for it again): so what a kill can make us pay twice stays at most `concurrency` calls.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from qsync.engine.control import Control
from qsync.errors import Interrupted

_POLL_S = 0.1  # how often a batch waiting for a slot looks whether the run is stopping


class CallSlots:
    def __init__(self, size: int) -> None:
        self._free = max(1, size)
        self._cond = threading.Condition()

    @contextmanager
    def held(self, control: Control) -> Iterator[None]:
        """Hold a slot for the block; wait for one first. Raises Interrupted if the run stops or winds down first."""
        with self._cond:
            while self._free == 0:
                _may_call(control)
                self._cond.wait(_POLL_S)
            _may_call(control)
            self._free -= 1
        try:
            yield
        finally:
            with self._cond:
                self._free += 1
                self._cond.notify()


def _may_call(control: Control) -> None:
    """A batch waiting for a slot has not started its call: a run that is stopping, or winding down (the budget, a
    refused key), sends it back to pending instead (Interrupted) rather than let it call."""
    control.check()
    if control.winding_down:
        raise Interrupted("the run is winding down")


def batches_under_way(concurrency: int) -> int:
    """Batches a run keeps under way for `concurrency` calls at once: one or two more per call slot than calls
    (half as many again, at least two), so a call slot never waits for a batch to be claimed or recorded."""
    return concurrency + max(2, concurrency // 2)
