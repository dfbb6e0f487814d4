"""The progress of one job: a bar, records, a smoothed rate and ETA, failed batches, cost; plots of
records and throughput over time that keep their history across Pause and Resume (history_plot).

Fed by the runner's events when the job runs in this kernel, or by reading the ledger (`attach`) when it
runs elsewhere (another notebook, `qsync run` in a terminal). Widgets change only through trait
assignments (safe from the runner's threads), a few times a second at most; plots are PNG outputs.
"""

from __future__ import annotations

import atexit
import html
import re
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from qsync.app import reading
from qsync.engine.events import BatchFinished, Event, JobFinished, JobStarted, Notice, Progress, RunError
from qsync.errors import QsyncError
from qsync.formatting import batch_mode_text, count, counted, duration, number, records_to_chunks, usd
from qsync.ledger.figures import JobFigures
from qsync.notebook.formatting import error_html, figure_output, humanize, small_print
from qsync.notebook.history_plot import HistoryPoint, history_figure
from qsync.notebook.rate import RateMeter
from qsync.notebook.ui import KernelSide
from qsync.spec.defaults import resolve_db

_MIN_REDRAW_S = 0.3
_PLOT_EVERY_S = 1.0
_FINAL = ("completed", "cancelled")
# The retry notice of a run that cannot reach a service ("Connection refused; trying again in 51s").
_RETRYING = re.compile(r"trying again in \d+ ?s")


class JobMonitor:
    """Progress of one job. `JobMonitor(job, db)` as a listener of a run, or `JobMonitor.attach(job, db)`."""

    def __init__(self, job: str | None = None, db: str | Path | None = None, *, show_messages: bool = True) -> None:
        self.job = job
        self.db = db
        self.show_messages = show_messages  # the Launcher shows a run's messages itself, once
        self.progress = widgets.IntProgress(value=0, min=0, max=1, layout={"width": "420px"})
        self.progress.add_class("qsync-progress")
        self.label = widgets.HTML("")
        self.label.add_class("qsync-status")
        self.cost = widgets.HTML("")
        self.cost.add_class("qsync-cost")
        self.notice = widgets.HTML("")
        self.notice.add_class("qsync-notice")
        self.plot = widgets.Output()
        self.plot.add_class("qsync-plot")
        self.widget = widgets.VBox([widgets.HBox([self.progress]), self.label, self.cost, self.notice, self.plot])
        self.widget.add_class("qsync-monitor")
        self.meter = RateMeter()
        self.figures: JobFigures | None = None
        self.status = ""
        self._history: list[HistoryPoint] = []
        self._origin: float | None = None
        self._new_run = True
        self._last_show = 0.0
        self._last_draw = 0.0
        self._lock = threading.Lock()
        self.ui = KernelSide()  # events and polls arrive on other threads: widgets change on the kernel's side
        self._poller: threading.Thread | None = None
        self._stop_polling = threading.Event()
        self._polled_state: tuple[Any, ...] | None = None
        self._known_status: str | None = None
        self._waiting: str | None = None  # the run waits for a service: no rate or ETA is true now
        if job is None:
            self.label.value = "<i>No job yet.</i>"
        else:
            self.label.value = f"<b>{html.escape(job)}</b> · waiting to start"

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # -- what is shown -------------------------------------------------------------------------------

    def reset(self, job: str, status: str = "starting…") -> None:
        """Show another job from scratch: never the previous job's figures under the new job's name."""
        with self._lock:
            self.job, self.figures, self.status = job, None, status
            self._history, self._origin, self._new_run = [], None, True
            self.meter = RateMeter()
            self._waiting = None
        with self.progress.hold_trait_notifications():
            self.progress.value, self.progress.max = 0, 1
        self.label.value = f"<b>{html.escape(job)}</b> · {html.escape(status)}"
        self.cost.value = self.notice.value = ""
        self.plot.outputs = ()

    def set_status(self, status: str) -> None:
        """A status shown at once (e.g. "pausing after the API calls in flight…"), before the job says so."""
        self.status = status
        if self.figures is not None:
            self._render(self.figures, status)
        elif self.job:
            self.label.value = f"<b>{html.escape(self.job)}</b> · {html.escape(status)}"

    def new_run(self) -> None:
        """The next figures start a new run (Resume after Pause): the rate restarts, the history stays."""
        self._new_run = True

    def show(self, figures: JobFigures, status: str, *, force: bool = False, live: bool = True) -> None:
        """Figures of the job at this moment. `live`: part of a run, so they feed the rate and the plot."""
        now = time.monotonic()
        if not force and now - self._last_show < _MIN_REDRAW_S:
            return  # a few updates a second at most: widget traffic must not slow the job
        self._last_show = now
        with self._lock:
            if self._waiting and (self.figures is None or figures.processed_records > self.figures.processed_records):
                # Work moves again: the pace before the outage says nothing about the pace now.
                self._waiting = None
                self._new_run = True
            self.figures, self.status = figures, status
            if live:
                if self._origin is None:
                    self._origin = now
                t = now - self._origin
                if self._new_run:
                    self.meter.restart(t, figures.processed_records)
                else:
                    self.meter.add(t, figures.processed_records)
                self._history.append(HistoryPoint(t, figures.processed_records, figures.skipped_records,
                                                  self.meter.rate(), self._new_run))  # fmt: skip
                self._new_run = False
        self._render(figures, status)
        if force or now - self._last_draw >= _PLOT_EVERY_S:
            self._last_draw = now
            self._draw()

    def _render(self, f: JobFigures, status: str) -> None:
        total, done = f.total_records, f.processed_records
        with self.progress.hold_trait_notifications():
            self.progress.max = max(1, total)
            self.progress.value = min(done, max(1, total))
        parts = [f"<b>{html.escape(f.job)}</b> · <b>{html.escape(status)}</b>"]
        if total == 0 or f.batches_total == 0:
            parts.append(self._nothing_to_do(f))
            self.label.value = " · ".join(parts)
            self.cost.value = ""
            return
        parts.append(
            f"{count(done)} / {count(total)} records ({count(f.loaded_records)} loaded, "
            f"{count(f.skipped_records)} skipped, {count(f.unchanged_records)} unchanged)"
        )
        if phrase := records_to_chunks(f.total_records - f.skipped_records, f.total_chunks):
            parts.append(phrase)
        running = status == "running" or status.startswith(("pausing", "cancelling", "resuming"))
        if running:
            parts.append(html.escape(self._pace(f.remaining_records)))
        failed = f.batches_failed
        failed_html = counted(failed, "failed batch", "failed batches")
        parts.append(f"<span style='color:#b00020'>{failed_html}</span>" if failed else failed_html)
        self.label.value = " · ".join(parts)
        budget = f" of a {usd(f.max_cost_usd)} budget" if f.max_cost_usd is not None else " (no budget cap)"
        unconfirmed = (
            f" · up to {usd(f.unconfirmed_cost_usd)} unconfirmed (calls sent whose answer was not saved)"
            if f.unconfirmed_cost_usd
            else ""
        )
        batch_mode = (
            f" · {batch_mode_text(f.batch_mode_texts, f.batch_mode_tokens, f.batch_mode_cost_usd)}"
            if f.batch_mode_texts
            else ""
        )
        self.cost.value = f"spent <b>{usd(f.cost_usd)}</b>{budget} · {count(f.tokens)} tokens{unconfirmed}{batch_mode}"

    def _pace(self, remaining: int) -> str:
        """The rate and time left, as the status line and the plot both say it."""
        if self._waiting:
            return "no progress: waiting for the API (see below)"
        rate = self.meter.rate()
        if rate is None:
            return "measuring the rate…"
        eta = self.meter.eta_s(remaining)
        return f"{number(rate)} records/s" + (f" · about {duration(eta)} left" if eta else "")

    @staticmethod
    def _nothing_to_do(f: JobFigures) -> str:
        if f.total_records == 0:
            return "the source has no records"
        return (
            f"nothing to embed: {count(f.unchanged_records)} records unchanged since the last sync, "
            f"{count(f.skipped_records)} skipped"
        )

    def _draw(self) -> None:
        with self._lock:
            history = list(self._history)
            figures = self.figures
        if figures is not None:
            pace = self._pace(figures.remaining_records)
            fig = history_figure(history, figures, pace, waiting=self._waiting is not None)
            if fig is not None:
                self.plot.outputs = figure_output(fig)

    # -- fed by the runner's events ------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        """A listener of the run (called on its thread): the event is shown on the kernel's side."""
        self.ui.call(self._heard, event)

    def _heard(self, event: Event) -> None:
        if isinstance(event, JobStarted):
            if self.job != event.job_id:
                self.reset(event.job_id)
            self.new_run()
            self.notice.value = ""
            self.show(event.figures, "running", force=True)
        elif isinstance(event, Progress):
            self.show(event.figures, self.status if self.status.endswith("…") else "running")
        elif isinstance(event, JobFinished):
            if event.figures is not None:
                self.show(event.figures, event.status, force=True)
            else:
                self.set_status(event.status)
            if event.message and self.show_messages:
                self.notice.value = small_print(html.escape(humanize(event.message)))
        elif isinstance(event, RunError):  # refused, or its lease lost: not "resuming…" or "running" any more
            self.set_status("stopped")
            if self.show_messages:  # the Launcher says it itself, once
                self.notice.value = small_print(error_html(event.error))
        elif isinstance(event, Notice):
            self.notice.value = small_print(html.escape(humanize(event.text)))
            if _RETRYING.search(event.text) and self.figures is not None:
                self._waiting = event.text
                self._render(self.figures, self.status)
                self._draw()
        elif isinstance(event, BatchFinished) and event.outcome == "failed":
            self.notice.value = (
                f"<small style='color:#b00020'>batch {event.batch_no} failed: "
                f"{html.escape(humanize(event.error or ''))}</small>"
            )

    # -- a job run elsewhere ---------------------------------------------------------------------------

    def load(self, job: str) -> JobFigures | None:
        """Show a job's figures as stored (no rate, no plot): what a re-run notebook finds."""
        try:
            info = reading.status(job, db=self.db)
        except QsyncError as exc:
            self.label.value = html.escape(humanize(str(exc)))
            return None
        self.reset(job, info["status"])
        figures = JobFigures.from_row(info)
        self.show(figures, figures.status, force=True, live=False)
        return figures

    @classmethod
    def attach(cls, job: str | None = None, db: str | Path | None = None, interval_s: float = 1.0) -> JobMonitor:
        """Follow a job (the newest when none is named) by reading the ledger every `interval_s`, until it
        is no longer running."""
        monitor = cls(job, db)
        monitor.label.value = f"<i>reading {html.escape(job or 'the newest job')}…</i>"
        monitor.follow(job, interval_s)
        return monitor

    def follow(
        self, job: str | None, interval_s: float = 1.0, *, until_final: bool = False,
        on_status: Callable[[str], None] | None = None, known_status: str | None = None,
    ) -> None:  # fmt: skip
        """Read the job's figures every `interval_s` while it runs elsewhere; with `until_final`, also while it is
        paused, failed or stale (something else may resume or retry it: 02's Retry, `qsync resume`), until it is
        completed or cancelled. `on_status(status)` is called, on the kernel's side, each time the status changes
        (from `known_status`, when the caller already shows it: the first read then tells nothing new)."""
        self.stop(wait_s=0)
        stop = self._stop_polling = threading.Event()
        self._polled_state = None
        self._known_status = known_status
        self._poller = threading.Thread(target=self._poll, args=(job, interval_s, until_final, on_status, stop),
                                        daemon=True)  # fmt: skip
        _pollers.add(self)
        self._poller.start()

    def _poll(self, job: str | None, interval_s: float, until_final: bool,
              on_status: Callable[[str], None] | None, stop: threading.Event) -> None:  # fmt: skip
        first, seen, status = True, None, ""
        while not stop.is_set():
            stamp = _file_stamp(self.db)
            # A job nobody runs changes only when its file does (a retry elsewhere writes it): until then, no read,
            # so a form left on a paused job does not start the file's host process every few seconds.
            if first or stamp != seen or status == "running":
                seen = stamp
                try:
                    info = reading.status(job, db=self.db)
                except QsyncError as exc:
                    self.ui.call(self._unreadable, exc, stop)
                else:
                    self.ui.call(self._polled, info, first, on_status, stop)
                    first = False
                    status = info["status"]
                    if status in _FINAL if until_final else status not in ("running", "planned"):
                        return
            stop.wait(interval_s)

    def _unreadable(self, exc: QsyncError, stop: threading.Event) -> None:
        if not stop.is_set():
            self.label.value = html.escape(humanize(str(exc)))

    def _polled(self, info: dict[str, Any], first: bool, on_status: Callable[[str], None] | None,
                stop: threading.Event) -> None:  # fmt: skip
        if stop.is_set():
            return  # stopped while this read was on its way: what replaced the poll shows the job now
        if info["job"] != self.job:
            self.reset(info["job"])
        figures = JobFigures.from_row(info)
        state = (figures.status, figures.processed_records, figures.batches_failed, figures.cost_usd)
        if state == self._polled_state and figures.status != "running":
            return  # nothing changed: no redraw every second of a paused job
        before = self._known_status if self._polled_state is None else self._polled_state[0]
        changed = before is None or state[0] != before
        self._polled_state = state
        if first:
            self.new_run()
        self.show(figures, figures.status, force=True, live=figures.status == "running")
        if changed and on_status is not None:
            on_status(figures.status)

    def stop(self, wait_s: float = 5.0) -> None:
        self._stop_polling.set()
        if self._poller is not None and self._poller is not threading.current_thread():
            self._poller.join(wait_s)


def _file_stamp(db: str | Path | None) -> tuple[int, ...]:
    """When the checkpoint file and its write-ahead log last changed, and their sizes."""
    path = resolve_db(db)
    stamp: list[int] = []
    for file in (path, path.with_name(path.name + ".wal")):
        try:
            st = file.stat()
        except OSError:
            stamp += [0, 0]
        else:
            stamp += [st.st_mtime_ns, st.st_size]
    return tuple(stamp)


_pollers: weakref.WeakSet[JobMonitor] = weakref.WeakSet()


@atexit.register
def _stop_pollers() -> None:
    # A poller still inside DuckDB or matplotlib while the interpreter tears down can abort the process.
    for monitor in list(_pollers):
        monitor.stop()
