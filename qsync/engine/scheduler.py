"""Runs batches through the pipeline on `workers` threads, and hears Ctrl-C.

A run has a few more workers than calls in flight (engine.slots: a batch holds a call slot only for its
call). Workers take the next batch number until none is left or the run is stopping; a batch is never
requeued (the retry layer is per call, engine.retry). A worker hands a batch whose points it wrote to the
completer (engine.completer), which marks batches done in groups, and takes its next one. The scheduling
thread (the caller's) hands each outcome to `on_outcome`. The first Ctrl-C asks the run to stop after the calls in flight; a second one
stops at once (the unfinished batches go back to pending when the lease is released).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from qsync.engine.completer import Completer
from qsync.engine.control import Control
from qsync.engine.outcome import Outcome, Upserted
from qsync.engine.pipeline import BatchPipeline

# Beyond this many written batches per worker waiting to be marked done, workers wait: bounded memory, and
# bounded work to redo (from the cache, no API call) after a crash.
WAITING_PER_WORKER = 4


class Scheduler:
    def __init__(self, pipeline: BatchPipeline, workers: int, control: Control) -> None:
        self.pipeline = pipeline
        self.workers = max(1, workers)
        self.control = control
        self._taken = 0  # batches taken by workers
        self._ended = 0  # of those, whose outcome reached the scheduling thread
        self._count_lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        """Batches under way: taken by a worker, not yet ended (done, failed, released...)."""
        with self._count_lock:
            return self._taken - self._ended

    def run(
        self,
        batches: list[int],
        on_outcome: Callable[[Outcome], None],
        on_first_interrupt: Callable[[], None] = lambda: None,
    ) -> bool:
        """Process `batches`; return False if a second Ctrl-C cut the run short (workers not joined)."""
        todo: queue.Queue[int] = queue.Queue()
        for batch_no in batches:
            todo.put(batch_no)
        done: queue.Queue[Outcome] = queue.Queue()
        count = min(self.workers, max(1, len(batches)))
        completer = Completer(self.pipeline.complete, done.put, max_waiting=WAITING_PER_WORKER * count)
        workers = [
            threading.Thread(target=self._work, args=(todo, done, completer), name=f"qsync-worker-{i}", daemon=True)
            for i in range(count)
        ]
        for worker in workers:
            worker.start()
        interrupted = 0
        completed = False
        while True:
            try:
                if not completed and not any(w.is_alive() for w in workers):
                    completer.close()  # every batch handed in is now done (or failed) and in `done`
                    completed = True
                if completed and done.empty():
                    return True
                try:
                    outcome = done.get(timeout=0.05)
                except queue.Empty:
                    continue
                self._heed(outcome)
                with self._count_lock:
                    self._ended += 1
                on_outcome(outcome)
            except KeyboardInterrupt:
                interrupted += 1
                self.control.request_stop()
                if interrupted > 1:
                    return False
                on_first_interrupt()

    def _work(self, todo: queue.Queue[int], done: queue.Queue[Outcome], completer: Completer) -> None:
        while (batch_no := self._take(todo)) is not None:
            try:
                result = self.pipeline.process(batch_no)
            except BaseException as exc:  # never let a worker die silently: the run must hear of it
                result = Outcome(batch_no, "lost", fatal=exc)
            if isinstance(result, Upserted):
                completer.submit(result)
            else:
                self._heed(result)  # before this worker takes another batch
                done.put(result)

    def _heed(self, outcome: Outcome) -> None:
        """A lost lease or a broken store stops the run at once; a job that must stop (the budget, a refused
        key) starts no new batch or call, and the calls under way finish (engine.control.wind_down)."""
        if outcome.fatal is not None:
            self.control.request_stop()
        elif outcome.halt is not None:
            self.control.wind_down()

    def _take(self, todo: queue.Queue[int]) -> int | None:
        if self.control.winding_down:
            return None
        try:
            batch_no = todo.get_nowait()
        except queue.Empty:
            return None
        with self._count_lock:
            self._taken += 1
        return batch_no
