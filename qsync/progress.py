"""A terminal progress bar (records, rate, ETA) that listens to the runner's events."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

from .events import Event, JobFinished, JobStarted, Notice, Progress


class ProgressBar:
    def __init__(self, stream: TextIO | None = None, disable: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.disable = disable
        self._bar: Any = None  # tqdm
        self._shown = 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, JobStarted):
            if event.done_records:
                self._write(
                    f"resuming {event.job_id}: {event.done_records:,} of {event.total_records - event.skipped_records:,} "
                    f"records already done ({event.batches_done}/{event.batches_total} batches); continuing"
                )
            if event.took_over_stale_owner:
                self._write("the previous runner had stopped without finishing; its unfinished batches are redone")
            self._bar = tqdm(
                total=event.total_records - event.skipped_records,
                initial=event.done_records,
                unit="rec",
                desc=event.job_id,
                file=self.stream,
                disable=self.disable,
                dynamic_ncols=True,
                smoothing=0.1,
            )
            self._shown = event.done_records
        elif isinstance(event, Progress) and self._bar is not None:
            total = event.total_records - event.skipped_records  # the embedder may refuse a record
            if total != self._bar.total:
                self._bar.total = total
            self._bar.update(event.done_records - self._shown)
            self._shown = event.done_records
            self._bar.set_postfix(
                failed=event.batches_failed,
                tokens=f"{event.tokens:,}",
                cost=f"${event.cost_usd:.4f}",
                refresh=False,
            )
        elif isinstance(event, Notice):
            self._write(event.text)
        elif isinstance(event, JobFinished) and self._bar is not None:
            self._bar.close()
            self._bar = None

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream)
