"""A terminal progress bar (records, rate, ETA) that listens to the runner's events.

The bar counts processed records (loaded, skipped or unchanged: figures.py) out of the job's total, and
shows the same figures `qsync status` would, since both come from the checkpoint."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

from qsync.engine.events import Event, JobFinished, JobStarted, Notice, Progress
from qsync.formatting import chunked, unconfirmed, usd


class ProgressBar:
    def __init__(self, stream: TextIO | None = None, disable: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.disable = disable
        self._bar: Any = None  # tqdm
        self._shown = 0
        self._planned = False  # this run planned its job (a Notice said so): a job it did not plan is resumed

    @property
    def wants_progress(self) -> bool:
        """Whether the bar is drawn: not with --quiet (disable=True), and with disable=None only on a terminal, as
        tqdm decides. A bar not drawn needs no figures while the job runs (events.wants_progress)."""
        if self.disable is None:
            isatty = getattr(self.stream, "isatty", None)
            return isatty is None or bool(isatty())  # tqdm draws on a stream that cannot tell
        return not self.disable

    def __call__(self, event: Event) -> None:
        if isinstance(event, JobStarted):
            figures = event.figures
            for line in self._opening(event):
                self._write(line)
            if event.took_over_stale_owner:
                self._write("the previous runner had stopped without finishing; its unfinished batches are redone")
            self._bar = tqdm(
                total=figures.total_records,
                initial=figures.processed_records,
                unit="rec",
                desc=event.job_id,
                file=self.stream,
                disable=self.disable,
                dynamic_ncols=True,
                smoothing=0.1,
            )
            self._shown = figures.processed_records
        elif isinstance(event, Progress) and self._bar is not None:
            figures = event.figures
            self._bar.update(figures.processed_records - self._shown)
            self._shown = figures.processed_records
            self._bar.set_postfix(
                skipped=figures.skipped_records,
                failed=figures.batches_failed,
                cost=f"${figures.cost_usd:.4f}",
                refresh=False,
            )
        elif isinstance(event, Notice):
            self._planned = self._planned or event.planning
            self._write(event.text)
        elif isinstance(event, JobFinished) and self._bar is not None:
            self._bar.close()
            self._bar = None

    def _opening(self, event: JobStarted) -> list[str]:
        """What the terminal is told as the run starts: where a resumed job stands, what planning left out."""
        figures = event.figures
        if figures.batches_done or figures.cost_usd or figures.unconfirmed_cost_usd:
            # Spent as `qsync status` and `qsync cost` say it: confirmed, and what may have been billed besides.
            return [
                f"resuming {event.job_id}: {figures.processed_records:,} of {figures.total_records:,} records "
                f"already processed ({figures.batches_done}/{figures.batches_total} batches), "
                f"{usd(figures.cost_usd)} already spent{unconfirmed(figures.unconfirmed_cost_usd)}; continuing"
            ]
        lines = []
        if not self._planned:  # planned by an earlier run that did nothing yet (stopped in its first calls)
            lines.append(f"resuming {event.job_id}: no batch done yet ({figures.batches_total} to do); continuing")
        if figures.skipped_records or figures.unchanged_records:
            lines.append(
                f"{event.job_id}: {figures.total_records:,} records: {figures.skipped_records:,} skipped at "
                f"planning, {figures.unchanged_records:,} already in the collection unchanged, "
                f"{figures.remaining_records:,} to do"
                + chunked(figures.total_records - figures.skipped_records, figures.total_chunks)
            )
        elif note := chunked(figures.total_records - figures.skipped_records, figures.total_chunks):
            lines.append(f"{event.job_id}: long records were cut into chunks, a point each{note}")
        return lines

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream)
