"""Runs batches through the pipeline on `concurrency` worker threads, and hears Ctrl-C.

Workers take the next batch number until none is left or the run is stopping; a batch is never
requeued (the retry layer is per call, in retry.py). The scheduling thread (the caller's) hands each
outcome to `on_outcome`. The first Ctrl-C asks the run to stop after the calls in flight; a second one
stops at once (the unfinished batches go back to pending when the lease is released).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from .control import Control
from .pipeline import BatchPipeline, Outcome


class Scheduler:
    def __init__(self, pipeline: BatchPipeline, concurrency: int, control: Control) -> None:
        self.pipeline = pipeline
        self.concurrency = max(1, concurrency)
        self.control = control

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
        workers = [
            threading.Thread(target=self._work, args=(todo, done), name=f"qsync-worker-{i}", daemon=True)
            for i in range(min(self.concurrency, max(1, len(batches))))
        ]
        for worker in workers:
            worker.start()
        interrupted = 0
        while True:
            try:
                if not any(w.is_alive() for w in workers) and done.empty():
                    return True
                try:
                    outcome = done.get(timeout=0.05)
                except queue.Empty:
                    continue
                if outcome.fatal is not None or outcome.halt is not None:
                    self.control.request_stop()
                on_outcome(outcome)
            except KeyboardInterrupt:
                interrupted += 1
                self.control.request_stop()
                if interrupted > 1:
                    return False
                on_first_interrupt()

    def _work(self, todo: queue.Queue[int], done: queue.Queue[Outcome]) -> None:
        batch_no = self._take(todo)
        attempt: int | None = None  # set when the previous batch's completion claimed this one
        while batch_no is not None:
            following = self._take(todo)
            try:
                outcome = self.pipeline.process(batch_no, attempt, claim_next=following)
            except BaseException as exc:  # never let a worker die silently: the run must hear of it
                outcome = Outcome(batch_no, "lost", fatal=exc)
            if outcome.fatal is not None or outcome.halt is not None:
                self.control.request_stop()  # before this worker (or another) takes a batch: no call after a halt
            done.put(outcome)
            attempt = outcome.next_attempt
            if self.control.stopping and attempt is None:
                return  # `following` was not claimed: it stays pending
            batch_no = following

    def _take(self, todo: queue.Queue[int]) -> int | None:
        if self.control.stopping:
            return None
        try:
            return todo.get_nowait()
        except queue.Empty:
            return None
