"""JupyterLab widgets over the runner's events and the DuckDB ledger (install the `notebook` extra).

    from qsync.notebook import Launcher, JobMonitor, BatchInspector, CostPanel
    Launcher(source="data/wordnet_sample.jsonl", collection="wordnet")     # Start / Pause / Resume / Stop
    JobMonitor.attach("wordnet:wordnet_sample")                             # follow a job run elsewhere

Jobs run in a background thread, so the kernel stays free. Widgets are updated from that thread only
through trait assignments (safe from any thread) and at most a few times a second; plots are rendered
to PNG and set as the Output widget's `outputs`, since `with out:` from a thread loses the output.
The core package never imports this module.
"""

from __future__ import annotations

import atexit
import base64
import html
import io
import itertools
import math
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd
from matplotlib.figure import Figure

from . import api, costs
from .config import resolve_db
from .errors import QsyncError
from .events import BatchFinished, Event, JobFinished, JobStarted, Notice, Progress
from .figures import JobFigures
from .runner import Runner, RunResult
from .spec import RunSettings

_MIN_REDRAW_S = 0.3


def _figure_output(fig: Any) -> tuple[dict[str, Any], ...]:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode()
    return ({"output_type": "display_data", "data": {"image/png": data, "text/plain": "<plot>"}, "metadata": {}},)


def _table(frame: pd.DataFrame, empty: str = "(none)") -> str:
    if frame.empty:
        return f"<i>{html.escape(empty)}</i>"
    return str(frame.to_html(index=False, border=0, classes="qsync-table", float_format=lambda x: f"{x:.6g}"))


class JobMonitor:
    """Progress bar with records, rate and ETA; a plot of records over time and throughput; cost so far.

    Fed by runner events when the job runs in this kernel, or by polling the ledger (`attach`) when it
    runs elsewhere: another notebook, or `qsync run` in a terminal."""

    def __init__(self, job: str | None = None, db: str | Path | None = None) -> None:
        self.job = job
        self.db = db
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="records", layout={"width": "60%"})
        self.progress.add_class("qsync-progress")
        self.label = widgets.HTML("waiting to start")
        self.label.add_class("qsync-status")
        self.cost = widgets.HTML("")
        self.cost.add_class("qsync-cost")
        self.plot = widgets.Output(layout={"min_height": "180px"})
        self.plot.add_class("qsync-plot")
        self.widget = widgets.VBox([widgets.HBox([self.progress, self.label]), self.cost, self.plot])
        self._history: list[tuple[float, int]] = []
        self._last_draw = 0.0
        self._last_show = 0.0
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._poller: threading.Thread | None = None
        self._stop_polling = threading.Event()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # -- fed by events ------------------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        if isinstance(event, JobStarted):
            self.job = event.job_id
            self._started = time.monotonic()
            with self._lock:
                self._history = [(0.0, event.figures.processed_records)]
            self._show(event.figures, "running", force=True)
        elif isinstance(event, Progress):
            self._show(event.figures, "running")
        elif isinstance(event, JobFinished):
            if event.figures is not None:
                self._show(event.figures, event.status, force=True)
            if event.message:
                self.label.value += f"<br><small>{html.escape(event.message)}</small>"
        elif isinstance(event, Notice):
            self.label.value = html.escape(event.text)
        elif isinstance(event, BatchFinished) and event.outcome == "failed":
            self.cost.value = (
                f"<span style='color:#b00'>batch {event.batch_no} failed: {html.escape(event.error or '')}</span>"
            )

    def _show(self, figures: JobFigures, status: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_show < _MIN_REDRAW_S:
            return  # a few updates a second at most: widget traffic must not slow the job
        self._last_show = now
        elapsed = now - self._started
        done, total = figures.processed_records, figures.total_records
        with self._lock:
            self._history.append((elapsed, done))
            base_t, base_done = self._history[0]
        rate = (done - base_done) / (elapsed - base_t) if elapsed > base_t else 0.0
        eta = (total - done) / rate if rate > 0 else float("nan")
        with self.progress.hold_trait_notifications():
            self.progress.max = max(1, total)
            self.progress.value = min(done, max(1, total))
        eta_text = f", ETA {eta:,.0f}s" if status == "running" and not math.isnan(eta) else ""
        self.label.value = (
            f"{self.job}: <b>{status}</b> — {done:,}/{total:,} records processed ({figures.loaded_records:,} "
            f"loaded, {figures.skipped_records:,} skipped, {figures.unchanged_records:,} unchanged), "
            f"{rate:,.1f} rec/s{eta_text}, {figures.batches_failed} failed batches"
        )
        self.cost.value = f"cost so far: <b>${figures.cost_usd:.6f}</b> ({figures.tokens:,} tokens)"
        if force or now - self._last_draw >= _MIN_REDRAW_S * 3:
            self._last_draw = now
            self._draw()

    def _draw(self) -> None:
        with self._lock:
            history = list(self._history)
        if len(history) < 2:
            return
        times = [t for t, _ in history]
        done = [d for _, d in history]
        rates = [0.0] + [(d1 - d0) / max(1e-6, t1 - t0) for (t0, d0), (t1, d1) in itertools.pairwise(history)]
        # A bare Figure (not pyplot) draws off-screen without touching the kernel's matplotlib backend.
        fig = Figure(figsize=(8, 2.4))
        left, right = fig.subplots(1, 2)
        left.plot(times, done)
        left.set(title="records done", xlabel="seconds")
        right.plot(times, rates, color="tab:orange")
        right.set(title="throughput (rec/s)", xlabel="seconds")
        self.plot.outputs = _figure_output(fig)

    # -- following a job run elsewhere -------------------------------------------------------------

    @classmethod
    def attach(cls, job: str | None = None, db: str | Path | None = None, interval_s: float = 1.0) -> JobMonitor:
        """Follow a job by reading the ledger every `interval_s`, until it is no longer running."""
        monitor = cls(job, db)
        monitor._poller = threading.Thread(target=monitor._poll, args=(interval_s,), daemon=True)
        _pollers.add(monitor)
        monitor._poller.start()
        return monitor

    def _poll(self, interval_s: float) -> None:
        while not self._stop_polling.is_set():
            try:
                info = api.status(self.job, db=self.db)
            except QsyncError as exc:
                self.label.value = html.escape(str(exc))
            else:
                self.job = info["job"]
                figures = JobFigures.from_row(info)
                self._show(figures, figures.status, force=figures.status != "running")
                if figures.status not in ("running", "planned"):
                    return
            self._stop_polling.wait(interval_s)

    def stop(self, wait_s: float = 5.0) -> None:
        self._stop_polling.set()
        if self._poller is not None and self._poller is not threading.current_thread():
            self._poller.join(wait_s)


_pollers: weakref.WeakSet[JobMonitor] = weakref.WeakSet()


@atexit.register
def _stop_pollers() -> None:
    # A poller still inside DuckDB or matplotlib while the interpreter tears down can abort the process.
    for monitor in list(_pollers):
        monitor.stop()


class Launcher:
    """Configure a backfill and Start / Pause / Resume / Stop it without blocking the kernel."""

    def __init__(
        self,
        source: str = "",
        collection: str = "",
        db: str | Path | None = None,
        qdrant_path: str | None = None,
        **defaults: Any,
    ) -> None:
        self.db = str(resolve_db(db))
        self.qdrant_path = qdrant_path
        style = {"description_width": "140px"}
        self.source = widgets.Text(source, description="source", style=style, layout={"width": "70%"})
        self.id_column = widgets.Text(defaults.get("id_column", "id"), description="id column", style=style)
        self.text_column = widgets.Text(defaults.get("text_column", "text"), description="text column", style=style)
        self.payload_columns = widgets.Text(",".join(defaults.get("payload_columns", [])),
                                            description="payload columns", style=style)  # fmt: skip
        self.collection = widgets.Text(collection, description="collection", style=style)
        embedder = defaults.get("embedder", "hash")  # also "package.module:factory" for your own
        self.embedder = widgets.Dropdown(options=list(dict.fromkeys(["hash", "gemini", embedder])), value=embedder,
                                         description="embedder", style=style)  # fmt: skip
        self.model = widgets.Text(defaults.get("model", "gemini-embedding-001"), description="model", style=style)
        self.dimensions = widgets.IntText(defaults.get("dimensions", 768), description="dimensions", style=style)
        self.batch_size = widgets.IntText(defaults.get("batch_size", 100), description="batch size", style=style)
        self.concurrency = widgets.IntText(defaults.get("concurrency", 4), description="concurrency", style=style)
        self.texts_per_minute = widgets.FloatText(defaults.get("texts_per_minute", 3000), description="texts/min",
                                                  style=style)  # fmt: skip
        self.tokens_per_minute = widgets.FloatText(defaults.get("tokens_per_minute", 1_000_000),
                                                   description="tokens/min", style=style)  # fmt: skip
        self.budget = widgets.FloatText(defaults.get("max_cost_usd", 0.0), description="budget USD (0: none)",
                                        style=style)  # fmt: skip
        self.extra_options: dict[str, Any] = dict(defaults.get("embedder_options", {}))
        self.job_name = defaults.get("job")
        self.start_button = widgets.Button(description="Start", button_style="primary", icon="play")
        self.pause_button = widgets.Button(description="Pause", icon="pause", disabled=True)
        self.resume_button = widgets.Button(description="Resume", icon="step-forward", disabled=True)
        self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        for button, css in ((self.start_button, "qsync-start"), (self.pause_button, "qsync-pause"),
                            (self.resume_button, "qsync-resume"), (self.stop_button, "qsync-stop")):  # fmt: skip
            button.add_class(css)
        self.start_button.on_click(lambda _: self.start())
        self.pause_button.on_click(lambda _: self.pause())
        self.resume_button.on_click(lambda _: self.resume())
        self.stop_button.on_click(lambda _: self.stop())
        self.monitor = JobMonitor(db=self.db)
        self.message = widgets.HTML("")
        self.message.add_class("qsync-message")
        form = widgets.VBox([self.source, self.id_column, self.text_column, self.payload_columns, self.collection,
                             self.embedder, self.model, self.dimensions, self.batch_size, self.concurrency,
                             self.texts_per_minute, self.tokens_per_minute, self.budget])  # fmt: skip
        buttons = widgets.HBox([self.start_button, self.pause_button, self.resume_button, self.stop_button])
        self.widget = widgets.VBox([form, buttons, self.message, self.monitor.widget])
        self.job: str | None = None
        self.result: RunResult | None = None
        self._runner: Runner | None = None
        self._thread: threading.Thread | None = None

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def _settings(self) -> RunSettings:
        gemini = self.embedder.value == "gemini"
        return RunSettings.from_env(
            concurrency=self.concurrency.value,
            texts_per_minute=self.texts_per_minute.value if gemini else None,
            tokens_per_minute=self.tokens_per_minute.value if gemini else None,
        )

    def start(self) -> None:
        """Plan the job (or pick up the unfinished one of that name) and run it in the background."""
        try:
            self.job = api.prepare(
                self.source.value, collection=self.collection.value, db=self.db, job=self.job_name,
                id_column=self.id_column.value, text_column=self.text_column.value,
                payload_columns=[c.strip() for c in self.payload_columns.value.split(",") if c.strip()],
                embedder=self.embedder.value, dimensions=self.dimensions.value,
                model=self.model.value if self.embedder.value == "gemini" else None,
                embedder_options=self.extra_options, batch_size=self.batch_size.value,
                qdrant_path=self.qdrant_path, max_cost_usd=self.budget.value or None,
            )  # fmt: skip
        except QsyncError as exc:
            self.message.value = f"<span style='color:#b00'>{html.escape(str(exc))}</span>"
            return
        self._launch()

    def _launch(self) -> None:
        assert self.job is not None
        self._runner = api.make_runner(self.job, db=self.db, settings=self._settings(),
                                       listeners=[self.monitor, self._on_event],
                                       max_cost_usd=self.budget.value or None)  # fmt: skip
        self.result = None
        self._thread = threading.Thread(target=self._run, name="qsync-notebook-job", daemon=True)
        self.start_button.disabled = self.resume_button.disabled = True
        self.pause_button.disabled = self.stop_button.disabled = False
        self.message.value = f"running <code>{html.escape(self.job)}</code> in the background"
        self._thread.start()

    def _run(self) -> None:
        assert self._runner is not None
        try:
            self.result = self._runner.run()
        except QsyncError as exc:
            self.message.value = f"<span style='color:#b00'>{html.escape(str(exc))}</span>"
        finally:
            self.pause_button.disabled = self.stop_button.disabled = True
            self.start_button.disabled = False
            status = self.result.status if self.result else "failed"
            self.resume_button.disabled = status not in ("paused", "failed")

    def _on_event(self, event: Event) -> None:
        if isinstance(event, JobFinished):
            self.message.value = f"<code>{html.escape(event.job_id)}</code>: <b>{event.status}</b>" + (
                f" — {html.escape(event.message)}" if event.message else ""
            )

    def pause(self) -> None:
        """Finish the batches in flight (within one batch), then leave the job paused."""
        if self._runner is not None:
            self._runner.request_stop()

    def resume(self) -> None:
        if self.job is not None and (self._thread is None or not self._thread.is_alive()):
            self._launch()

    def stop(self) -> None:
        """Stop within one batch and cancel the job (it cannot be resumed; cached vectors stay reusable)."""
        if self._runner is not None and self._thread is not None and self._thread.is_alive():
            self._runner.request_cancel()
        elif self.job is not None:
            api.cancel(self.job, db=self.db)

    def wait(self, timeout: float | None = None) -> RunResult | None:
        """Block until the background job ends (for headless runs, which must not end the kernel early)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.result


class BatchInspector:
    """Batches by status with attempts, last error, records, tokens and cost; a batch's records; retry."""

    def __init__(self, job: str, db: str | Path | None = None) -> None:
        self.job = job
        self.db = db
        self.status = widgets.Dropdown(options=["all", "failed", "running", "pending", "done"], value="all",
                                       description="status")  # fmt: skip
        self.status.add_class("qsync-filter")
        self.table = widgets.HTML()
        self.table.add_class("qsync-batches")
        self.selected = widgets.SelectMultiple(description="batches", rows=6)
        self.records = widgets.HTML()
        self.records.add_class("qsync-records")
        self.skips = widgets.HTML()
        self.retry_button = widgets.Button(description="Retry selected", icon="redo")
        self.retry_button.add_class("qsync-retry")
        self.message = widgets.HTML()
        self.status.observe(lambda _: self.refresh(), names="value")
        self.selected.observe(lambda _: self._show_records(), names="value")
        self.retry_button.on_click(lambda _: self.retry())
        self.widget = widgets.VBox([
            widgets.HBox([self.status, widgets.Button(description="Refresh", icon="sync")]),
            self.table, widgets.HBox([self.selected, self.retry_button]), self.message, self.records,
            widgets.HTML("<b>skipped records</b>"), self.skips,
        ])  # fmt: skip
        self.widget.children[0].children[1].on_click(lambda _: self.refresh())
        self.result: RunResult | None = None
        self.refresh()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def frame(self) -> pd.DataFrame:
        status = None if self.status.value == "all" else self.status.value
        return api.batches(self.job, status=status, db=self.db)

    def refresh(self) -> None:
        frame = self.frame()
        columns = ["batch_no", "status", "records", "attempts", "last_error", "embedded_texts", "cache_hits",
                   "tokens", "cost_usd", "duration_s"]  # fmt: skip
        self.table.value = _table(frame[columns], "no batches with that status")
        self.selected.options = [int(b) for b in frame["batch_no"]]
        self.skips.value = _table(api.skipped(self.job, db=self.db), "no record skipped")

    def _show_records(self) -> None:
        if not self.selected.value:
            self.records.value = ""
            return
        batch = int(self.selected.value[0])
        frame = api.batch_records(self.job, batch, db=self.db)
        self.records.value = f"<b>records of batch {batch}</b>" + _table(frame[["ordinal", "record_id", "text"]])

    def retry(self, wait: bool = False) -> None:
        """Run the selected batches again (failed ones, or any not done) in the background."""
        chosen = {int(b) for b in self.selected.value}
        if not chosen:
            self.message.value = "select batches first"
            return
        runner = api.make_runner(self.job, db=self.db, only_batches=sorted(chosen))
        self.message.value = f"retrying batches {sorted(chosen)}"

        def go() -> None:
            try:
                self.result = runner.run()
                self.message.value = f"retry finished: job is <b>{self.result.status}</b>"
            except QsyncError as exc:
                self.message.value = f"<span style='color:#b00'>{html.escape(str(exc))}</span>"
            self.refresh()

        thread = threading.Thread(target=go, daemon=True)
        thread.start()
        if wait:
            thread.join()


class CostPanel:
    """The estimate before a run, the actual cost of a job, savings, tokens per batch, cost over time."""

    def __init__(self, job: str | None = None, db: str | Path | None = None, source: str | None = None,
                 **estimate_options: Any) -> None:  # fmt: skip
        self.job = job
        self.db = db
        self.estimate = widgets.HTML()
        self.estimate.add_class("qsync-estimate")
        self.summary = widgets.HTML()
        self.summary.add_class("qsync-cost-summary")
        self.plot = widgets.Output()
        self.plot.add_class("qsync-plot")
        self.widget = widgets.VBox([self.estimate, self.summary, self.plot])
        if source is not None:
            estimate = costs.estimate(source, db=db, **estimate_options)
            shown = {k: v for k, v in estimate.items() if k != "skip_reasons"}
            self.estimate.value = "<b>estimate before running</b>" + _table(pd.DataFrame([shown]))
        if job is not None:
            self.refresh()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def refresh(self) -> None:
        assert self.job is not None
        summary = costs.cost(self.job, db=self.db)
        self.summary.value = "<b>actual cost and savings</b>" + _table(
            summary.T.reset_index().set_axis(["", "value"], axis=1)
        )
        batches = api.batches(self.job, db=self.db)
        over_time = costs.cost_over_time(self.job, db=self.db)
        # A bare Figure (not pyplot) draws off-screen without touching the kernel's matplotlib backend.
        fig = Figure(figsize=(8, 2.4))
        left, right = fig.subplots(1, 2)
        left.bar(batches["batch_no"], batches["tokens"], color="tab:blue")
        left.set(title="tokens per batch", xlabel="batch")
        if not over_time.empty:
            right.plot(over_time["finished_at"], over_time["cumulative_cost_usd"], color="tab:green")
            right.tick_params(axis="x", labelrotation=30)
        right.set(title="cost over time (USD)")
        self.plot.outputs = _figure_output(fig)
