"""Batches of a job, page by page: filter by status or error text, open one batch's records, retry
failed batches (the table follows the retry as it runs), and the skipped records with their reasons."""

from __future__ import annotations

import html
import math
import threading
import time
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd

from qsync.app import reading
from qsync.app.session import JobHandle, active_run, start_job
from qsync.engine.events import Event
from qsync.engine.runner import RunResult
from qsync.errors import QsyncError
from qsync.formatting import count, counted, skip_kinds, skips_for_people
from qsync.notebook.formatting import error_html, frame_html, page_style, small_print
from qsync.notebook.picker import JobPicker
from qsync.notebook.ui import KernelSide

PAGE_SIZE = 20
_STATUSES = ["all", "failed", "pending", "running", "done"]
_COLUMNS = {"batch_no": "batch", "status": "status", "records": "records", "skipped_records": "skipped",
            "attempts": "attempts", "last_error": "last error", "embedded_texts": "embedded (paid)",
            "cache_hits": "from the cache", "tokens": "tokens", "cost_usd": "cost ($)", "duration_s": "seconds"}  # fmt: skip
_REFRESH_S = 0.5


class BatchInspector:
    """`BatchInspector(db=DB)`: a job picker, then its batches. `BatchInspector(JOB, db=DB)` opens JOB."""

    def __init__(self, job: str | None = None, db: str | Path | None = None, page_size: int = PAGE_SIZE) -> None:
        self.db = db
        self.job: str | None = None
        self.page_size = page_size
        self.page = 0
        self.result: RunResult | None = None
        self.handle: JobHandle | None = None
        self._frame = pd.DataFrame()
        self._last_refresh = 0.0
        self._fresh = True
        self.ui = KernelSide()  # a retry's events arrive on its run's thread
        self.summary = widgets.HTML("")
        self.summary.add_class("qsync-batch-summary")
        self.status = widgets.Dropdown(options=_STATUSES, value="all", description="Status",
                                       layout={"width": "200px"}, style={"description_width": "50px"})  # fmt: skip
        self.status.add_class("qsync-filter")
        self.error_filter = widgets.Text(placeholder="error contains…", layout={"width": "240px"})
        self.error_filter.add_class("qsync-error-filter")
        self.refresh_button = widgets.Button(description="Refresh", icon="sync", layout={"width": "100px"})
        self.prev_button = widgets.Button(description="Previous", layout={"width": "110px"})
        self.next_button = widgets.Button(description="Next", layout={"width": "90px"})
        self.prev_button.add_class("qsync-prev")
        self.next_button.add_class("qsync-next")
        self.page_label = widgets.HTML("")
        self.page_label.add_class("qsync-page")
        self.table = widgets.HTML()
        self.table.add_class("qsync-batches")
        self.batch_no = widgets.BoundedIntText(0, min=0, max=0, description="Batch", layout={"width": "170px"},
                                               style={"description_width": "45px"})  # fmt: skip
        self.batch_no.add_class("qsync-batch-no")
        self._statuses: dict[int, str] = {}
        self.show_button = widgets.Button(description="Show records", icon="list", layout={"width": "130px"})
        self.show_button.add_class("qsync-show-records")
        self.retry_one_button = widgets.Button(description="Retry this batch", icon="redo", layout={"width": "150px"})
        self.retry_one_button.add_class("qsync-retry-one")
        self.retry_button = widgets.Button(description="Retry failed batches", icon="redo", button_style="warning",
                                           layout={"width": "190px"})  # fmt: skip
        self.retry_button.add_class("qsync-retry")
        self.message = widgets.HTML()
        self.message.add_class("qsync-inspector-message")
        self.records = widgets.HTML()
        self.records.add_class("qsync-records")
        self.skips = widgets.HTML()
        self.skips.add_class("qsync-skipped")
        self.status.observe(lambda _: self._filter_changed(), names="value")
        self.error_filter.observe(lambda _: self._filter_changed(), names="value")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.prev_button.on_click(lambda _: self.go(self.page - 1))
        self.next_button.on_click(lambda _: self.go(self.page + 1))
        self.show_button.on_click(lambda _: self.show_records())
        self.retry_one_button.on_click(lambda _: self.retry([int(self.batch_no.value)]))
        self.retry_button.on_click(lambda _: self.retry())
        self.batch_no.observe(lambda _: self._batch_picked(), names="value")
        self.paging = widgets.HBox([self.prev_button, self.page_label, self.next_button])
        # A job with no batch (every record unchanged or skipped at planning) has nothing to page, open or retry.
        self.one_batch = widgets.VBox([widgets.HTML("<b>One batch</b>"), widgets.HBox([
            self.batch_no, self.show_button, self.retry_one_button, self.retry_button])])  # fmt: skip
        self.one_batch.add_class("qsync-one-batch")
        self.counts_note = widgets.HTML(small_print(
            "embedded (paid) and from the cache are summed over a batch's attempts: a batch paid for on an "
            "attempt that failed or was paused takes its vectors from the cache on the next, and shows both."
        ))  # fmt: skip
        self.body = widgets.VBox([
            self.summary,
            widgets.HBox([self.status, self.error_filter, self.refresh_button]),
            self.table,
            self.counts_note,
            self.paging,
            self.one_batch,
            self.message, self.records,
            widgets.HTML("<b>Skipped records</b>"), self.skips,
        ])  # fmt: skip
        self.picker = JobPicker(db, job, on_change=self.open)
        self.widget = widgets.VBox([page_style(), self.picker.widget, self.body])
        self.widget.add_class("qsync-inspector")
        if self.job is None:
            self.open(self.picker.job)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def open(self, job: str | None) -> None:
        """Show another job's batches (None: the file has no job yet)."""
        self.job = job
        self.page = 0
        self._fresh = True
        self.records.value = self.message.value = ""
        self.body.layout.display = "" if job else "none"
        if job:
            self.refresh()

    def frame(self) -> pd.DataFrame:
        """The batches that pass the filters (status, error text)."""
        if self.job is None:
            return pd.DataFrame(columns=list(_COLUMNS))
        status = None if self.status.value == "all" else self.status.value
        frame = reading.batches(self.job, status=status, db=self.db)
        needle = self.error_filter.value.strip().lower()
        if needle:
            frame = frame[frame["last_error"].fillna("").str.lower().str.contains(needle, regex=False)]
        return frame

    def _filter_changed(self) -> None:
        self.page = 0
        self.refresh()

    @property
    def pages(self) -> int:
        return max(1, math.ceil(len(self._frame) / self.page_size))

    def go(self, page: int) -> None:
        self.page = min(max(0, page), self.pages - 1)
        self._render_page()

    def refresh(self) -> None:
        """Read the job's batches and skipped records again."""
        if self.job is None:
            return
        self._last_refresh = time.monotonic()
        try:
            everything = reading.batches(self.job, db=self.db)
            self._frame = self.frame()
            skipped = reading.skipped(self.job, db=self.db)
        except QsyncError as exc:
            self.message.value = error_html(str(exc))
            return
        by_status = everything["status"].value_counts()
        parts = [
            f"{count(by_status.get(s, 0))} {s}" for s in ("done", "failed", "running", "pending") if by_status.get(s)
        ]
        self.summary.value = (
            f"<b>{html.escape(self.job)}</b>: {counted(len(everything), 'batch', 'batches')} ({', '.join(parts) or 'none'}); "
            f"{counted(len(skipped), 'record')} skipped"
        )
        has_batches = not everything.empty
        for part in (self.paging, self.one_batch, self.counts_note):
            part.layout.display = "" if has_batches else "none"
        if len(everything):
            self.batch_no.max = int(everything["batch_no"].max())
        failed = everything[everything["status"] == "failed"]
        self.retry_button.disabled = failed.empty
        self.retry_button.description = (
            f"Retry {counted(len(failed), 'failed batch', 'failed batches')}" if len(failed) else "Retry failed batches"
        )
        self._statuses = dict(zip(everything["batch_no"].astype(int), everything["status"], strict=True))
        self._batch_picked()
        if self._fresh and not failed.empty:  # a job just opened: point at its first failed batch
            self.batch_no.value = int(failed["batch_no"].iloc[0])
        self._fresh = False
        self.page = min(self.page, self.pages - 1)
        self._render_page()
        self._render_skips(skipped)

    def _batch_picked(self) -> None:
        """Retry this batch is offered for a batch that has something left to do (failed or pending), not a done one."""
        status = self._statuses.get(int(self.batch_no.value))
        self.retry_one_button.disabled = status not in ("failed", "pending")
        self.retry_one_button.tooltip = f"batch {self.batch_no.value} is {status or 'not in this job'}"

    def _render_page(self) -> None:
        start = self.page * self.page_size
        shown = self._frame.iloc[start : start + self.page_size][list(_COLUMNS)].rename(columns=_COLUMNS)
        filtered = self.status.value != "all" or self.error_filter.value.strip()
        empty = ("No batches match these filters." if filtered
                 else "This job has no batches: every record was unchanged or skipped while planning.")  # fmt: skip
        self.table.value = frame_html(shown, empty, max_chars=90)
        n = len(self._frame)
        self.page_label.value = (
            f"&nbsp;page {self.page + 1} of {self.pages} · rows {count(start + 1)} to "
            f"{count(min(n, start + self.page_size))} of {counted(n, 'batch', 'batches')}&nbsp;"
            if n
            else "&nbsp;no batch matches these filters&nbsp;"
        )
        self.prev_button.disabled = self.page == 0
        self.next_button.disabled = self.page >= self.pages - 1

    def _render_skips(self, skipped: pd.DataFrame, limit: int = 50) -> None:
        if skipped.empty:
            self.skips.value = "<p><i>No record was skipped.</i></p>"
            return
        by_reason = skip_kinds(skipped["reason"])
        if by_reason["example"].isna().all():  # every reason is its own kind: nothing more to show
            by_reason = by_reason.drop(columns="example")
        shown = skips_for_people(skipped.head(limit))
        more = small_print(
            f"first {limit} of {count(len(skipped))} shown; all of them: <code>qsync.skipped(JOB)</code>"
        )
        whole = small_print("A reason cut with … shows whole when you hover it.")
        self.skips.value = (
            frame_html(by_reason, css="qsync-table qsync-skip-reasons")
            + frame_html(shown, max_chars=140)
            + (whole if shown["reason"].str.len().max() > 140 else "")
            + (more if len(skipped) > limit else "")
        )

    def show_records(self) -> None:
        if self.job is None:
            return
        batch = int(self.batch_no.value)
        frame = reading.batch_records(self.job, batch, db=self.db)
        self.records.value = f"<b>Records of batch {batch}</b>" + frame_html(
            frame[["ordinal", "record_id", "text"]].rename(columns={"ordinal": "row", "record_id": "id"}),
            f"Batch {batch} does not exist.",
        )

    def retry(self, batches: list[int] | None = None, wait: bool = False) -> None:
        """Run batches again (default: every failed one) in the background; the table follows."""
        if self.job is None:
            return
        if batches is None:
            failed = reading.batches(self.job, status="failed", db=self.db)
            batches = [int(b) for b in failed["batch_no"]]
        if not batches:
            self.message.value = "No failed batch to retry."
            return
        if active_run(self.job, self.db) is not None:
            self.message.value = "The job is running in this kernel; retry once it has stopped."
            return
        what = f"batch {batches[0]}" if len(batches) == 1 else f"{len(batches)} batches"
        self.message.value = f"Retrying {what}…"
        self.retry_button.disabled = self.retry_one_button.disabled = True
        try:
            self.handle = start_job(self.job, db=self.db, only_batches=batches, listeners=[self._on_event])
        except QsyncError as exc:
            self.message.value = error_html(str(exc))
            self.retry_button.disabled = False
            self._batch_picked()
            return
        if wait:
            self._after_retry(self.handle)
        else:  # told when the run's thread ends, however it ends: a refused run (a cancelled job) never starts
            threading.Thread(target=self._after_retry, args=(self.handle,), daemon=True).start()

    def _on_event(self, event: Event) -> None:
        """A listener of the retry's run (called on its thread): the table follows it."""
        self.ui.call(self._heard, event)

    def _heard(self, event: Event) -> None:
        if time.monotonic() - self._last_refresh >= _REFRESH_S:
            self.refresh()

    def _after_retry(self, handle: JobHandle) -> None:
        try:
            result = handle.wait()
        except BaseException as exc:  # QsyncError: why it stopped (said); anything else, said too: never a silent hang
            self.ui.call(self._retried, None, exc)
            return
        self.ui.call(self._retried, result, None)

    def _retried(self, result: RunResult | None, error: BaseException | None) -> None:
        self.picker.reload()  # the job's status changed: it reopens (and reads) the job, clearing the message: first
        if error is not None:
            text = str(error) if isinstance(error, QsyncError) else f"{type(error).__name__}: {error}"
            self.message.value = error_html(text)
        if result is not None:
            self.result = result
            self.message.value = f"Retry finished: the job is <b>{html.escape(result.status)}</b>."
