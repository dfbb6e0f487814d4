"""Exploratory cost analysis of a job: the estimate recorded when it was planned beside what it spent,
what the cache and resumes saved, a what-if table for the same records (model, dimensions, standard or
Batch Mode, Qdrant storage), tokens per batch and cost over time. Dollars everywhere through `usd`."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd
from matplotlib.figure import Figure

from qsync.app import reading
from qsync.app.versus import versus
from qsync.errors import QsyncError
from qsync.formatting import batch_mode_text, count, duration, usd, value_text
from qsync.money.what_if import what_if
from qsync.notebook.formatting import error_html, figure_output, frame_html, small_print, usd_axis
from qsync.notebook.picker import JobPicker


def versus_html(job: str, db: str | Path | None = None) -> str:
    """The estimate recorded when `job` was planned beside what it spent (tokens, dollars, minutes), with
    the error in %, as an HTML table; a sentence when no estimate was recorded."""
    shown = versus(job, db)
    if shown is None:
        return (
            f"<p><i>No estimate was recorded when {html.escape(job)} was planned: it was planned by a qsync older "
            "than the estimate (every job planned since records one, whichever way it was started).</i></p>"
        )
    return frame_html(shown.table, css="qsync-table qsync-versus") + small_print(html.escape(shown.footnote))


_ESTIMATE_LABELS = {"records": "records in the source", "valid_records": "records to load",
                    "skipped_records": "skipped while planning", "unique_texts": "distinct texts",
                    "cached_texts": "already in the cache (not paid)", "texts_to_embed": "texts to embed (paid)",
                    "tokens": "tokens", "media_tokens": "of which images and PDF pages", "tokens_basis": "tokens counted",
                    "model": "model", "cost_usd": "cost", "cost_usd_batch_mode": "cost in Batch Mode",
                    "expected_minutes": "time at the rate limits", "texts_per_minute": "texts per minute (limit)",
                    "tokens_per_minute": "tokens per minute (limit)"}  # fmt: skip


_WHAT_IF_COLUMNS = {"too_long": "too long", "cost_usd": "cost", "qdrant_storage": "Qdrant storage"}


def estimate_table(estimate: dict[str, Any]) -> widgets.HTML:
    """`qsync.estimate(...)` as a table a person reads: dollars as dollars, counts with separators, the time
    as a duration (never `cost_usd 0.0019363499999999999`); skip reasons counted in a second table."""
    rows = [(_ESTIMATE_LABELS.get(k, k.replace("_", " ")),
             duration(v * 60) if k == "expected_minutes" else value_text(k, v))
            for k, v in estimate.items() if k != "skip_reasons"]  # fmt: skip
    reasons = estimate.get("skip_reasons") or {}
    skips = pd.DataFrame(list(reasons.items()), columns=["skipped because", "records"])  # most common first
    table = widgets.HTML(
        frame_html(pd.DataFrame(rows, columns=["", "estimate"]), css="qsync-table qsync-estimate-table")
        + (frame_html(skips, css="qsync-table qsync-estimate-skips") if reasons else "")
    )
    table.add_class("qsync-source-estimate")
    return table


def estimate_beside_actual(job: str, db: str | Path | None = None) -> widgets.HTML:
    """`versus_html` as a widget, for a cell: the plan-time estimate of `job` beside what it spent."""
    table = widgets.HTML(versus_html(job, db))
    table.add_class("qsync-estimate")
    return table


class CostPanel:
    """`CostPanel(db=DB)`: a job picker, then the job's costs. `CostPanel(JOB, db=DB)` opens JOB."""

    def __init__(self, job: str | None = None, db: str | Path | None = None) -> None:
        self.db = db
        self.job: str | None = None
        self.versus = widgets.HTML()
        self.versus.add_class("qsync-estimate")
        self.summary = widgets.HTML()
        self.summary.add_class("qsync-cost-summary")
        self.what_if = widgets.HTML()
        self.what_if.add_class("qsync-what-if")
        self.plot = widgets.Output()
        self.plot.add_class("qsync-plot")
        self.refresh_button = widgets.Button(description="Refresh", icon="sync", layout={"width": "100px"})
        self.refresh_button.on_click(lambda _: self.refresh())
        self.body = widgets.VBox([
            widgets.HTML("<h4 style='margin:6px 0'>Estimate at plan time and actual</h4>"), self.versus,
            widgets.HTML("<h4 style='margin:6px 0'>Spent and saved</h4>"), self.summary, self.plot,
            widgets.HTML("<h4 style='margin:6px 0'>What if: the same records with another model or mode</h4>"),
            self.what_if, self.refresh_button,
        ])  # fmt: skip
        self.picker = JobPicker(db, job, on_change=self.open)
        self.widget = widgets.VBox([self.picker.widget, self.body])
        self.widget.add_class("qsync-costs")
        if self.job is None:
            self.open(self.picker.job)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def open(self, job: str | None) -> None:
        self.job = job
        self.body.layout.display = "" if job else "none"
        if job:
            self.refresh()

    def refresh(self) -> None:
        if self.job is None:
            return
        try:
            self._render(self.job)
        except QsyncError as exc:
            self.summary.value = error_html(str(exc))

    def _render(self, job: str) -> None:
        recorded = reading.recorded_estimate(job, db=self.db)
        self.versus.value = versus_html(job, self.db)
        spent = reading.cost(job, db=self.db).iloc[0]
        rows = [
            ("spent", usd(spent["cost_usd"])), ("tokens", count(spent["tokens"])),
            ("unconfirmed (sent, answer not saved: in flight, or cut off by a crash)",
             f"at most {usd(spent['unconfirmed_cost_usd'])}, {count(spent['unconfirmed_tokens'])} tokens"),
            ("texts embedded (paid)", count(spent["texts_embedded"])),
            *([("Batch Mode", batch_mode_text(spent["batch_mode_texts"], spent["batch_mode_tokens"],
                                              spent["batch_mode_cost_usd"]))] if spent["batch_mode_texts"] else []),
            ("cache hits (not paid)", f"{count(spent['cache_hits'])} texts, {usd(spent['cache_saved_usd'])} saved"),
            ("records resumes did not redo", f"{count(spent['resume_skipped_records'])}, "
                                             f"{usd(spent['resume_saved_usd'])} saved"),
            ("runs", count(spent["runs"])),
            ("budget", usd(spent["max_cost_usd"]) if pd.notna(spent["max_cost_usd"]) else "no cap"),
            ("price per 1M tokens", usd(spent["price_usd_per_million_tokens"])),
        ]  # fmt: skip
        self.summary.value = frame_html(pd.DataFrame(rows, columns=["", "value"]), css="qsync-table qsync-spent")
        self._what_if(job, recorded)
        self._draw(job)

    def _what_if(self, job: str, recorded: dict[str, Any] | None) -> None:
        plan = reading.planned_size(job, db=self.db)
        records, texts, byte_tokens, media_tokens = plan.records, plan.texts, plan.tokens, plan.media_tokens
        spec = reading.stored_job(job, db=self.db).spec
        info = reading.status(job, db=self.db)
        points = int(info["total_chunks"])  # a point per record, or per chunk of a long one
        # Gemini's own count when the job is Gemini's and was estimated; else ~4 bytes per token.
        if recorded and spec.embedder.kind == "gemini":
            tokens, basis = int(recorded["tokens"]), "counted by Gemini when the job was planned"
        else:
            basis = "at ~4 bytes a token; a model comparison counts with Gemini, so its figures differ by a few percent"
            tokens = byte_tokens
        if not records:
            self.what_if.value = "<p><i>This job embeds no records (all unchanged or skipped).</i></p>"
            return
        self.what_if.value = frame_html(
            what_if(
                tokens,
                texts,
                points,
                job_model=spec.embedder.resolved_model,
                text_tokens=plan.text_tokens,
                media_tokens=media_tokens,
                chunking=spec.chunking.enabled,
            ).rename(columns=_WHAT_IF_COLUMNS),
            css="qsync-table qsync-what-if-table",
        ) + small_print(
            f"{count(records)} records ({count(texts)} distinct texts, ~{count(tokens)} tokens {basis}; cache not "
            f"counted), {count(points)} points in Qdrant. Too long: texts over the model's limit, which it would skip "
            "(not priced); gemini-embedding-2's price includes the instruction it gets with each text. Time at the default rate limits; storage: float32 vectors "
            "x 1.5 for the index and payload (Qdrant's rule of thumb)."
        )

    def _draw(self, job: str) -> None:
        batches = reading.batches(job, db=self.db)
        over_time = reading.cost_over_time(job, db=self.db)
        if batches.empty or over_time.empty:
            self.plot.outputs = ({"output_type": "display_data", "metadata": {}, "data": {
                "text/html": "<p><i>No batch of this job has finished: nothing to plot.</i></p>",
                "text/plain": "No batch of this job has finished: nothing to plot."}},)  # fmt: skip
            return
        # A bare Figure (not pyplot) draws off-screen without touching the kernel's matplotlib backend.
        # Constrained layout: the dollar ticks of the right plot ran into the left plot's last tick.
        fig = Figure(figsize=(9, 2.6), layout="constrained")
        left, right = fig.subplots(1, 2)
        done = batches[batches["status"] == "done"]
        left.bar(done["batch_no"], done["tokens"], color="tab:blue", width=0.8)  # gaps: equal batches read as bars
        left.set(title="tokens per batch", xlabel="batch")
        seconds = (over_time["finished_at"] - over_time["finished_at"].iloc[0]).dt.total_seconds()
        scale, unit = (60.0, "minutes") if seconds.iloc[-1] > 180 else (1.0, "seconds")
        # The dollars are on the ticks and in the title: a y label beside "$0.000012" ticks crowds them.
        right.set(title="spent over the run ($)")
        spent = float(over_time["cumulative_cost_usd"].max())
        # No curve to draw (a flat line at $0 under dollar ticks, or one point) reads as an empty plot: a sentence.
        sentence = (
            "$0: nothing was paid for\n(a free embedder, or all from the cache)" if not spent > 0
            else f"{usd(spent)}, in one batch" if len(over_time) < 2 else None
        )  # fmt: skip
        if sentence is None:
            right.step(seconds / scale, over_time["cumulative_cost_usd"], where="post", color="tab:green")
            right.set(xlabel=f"{unit} since the first batch")
            usd_axis(right.yaxis)
            right.set_ylim(bottom=0)
        else:
            right.set(xticks=[], yticks=[])
            right.text(0.5, 0.5, sentence, transform=right.transAxes, ha="center", va="center", color="0.35")
        self.plot.outputs = figure_output(fig)
