"""Configure a backfill and Start / Pause / Resume / Cancel it without blocking the kernel.

The form reads the source's columns and offers them; it shows only the fields the chosen embedder uses;
and it finds its job in the DuckDB file, so a re-run notebook (Run All, a restarted kernel) shows the job
as it is — settings, figures, buttons — instead of a blank form that would start another job. Every
click answers at once, in the words of the buttons and fields.
"""

from __future__ import annotations

import html
import json
import re
import threading
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd

from .. import api, estimates
from ..columns import guess_columns, source_columns
from ..config import resolve_db
from ..embedders.gemini import DEFAULT_MODEL
from ..errors import QsyncError
from ..events import Event, JobFinished, JobStarted
from ..figures import JobFigures
from ..formatting import count, usd
from ..pricing import model_info
from ..session import JobHandle, active_run, start_job
from ..sources import as_source
from ..spec import JobSpec, RunSettings, base_name, default_job_name
from ..store import open_store
from .formatting import error_html, humanize
from .monitor import JobMonitor
from .search import SearchBox

_LABEL = {"description_width": "150px"}
_FIELD = {"width": "440px"}
_NO_MEDIA = ("(none)", "")
_UNFINISHED = ("planned", "paused", "failed", "stale")
_EMBEDDERS = [("hash — offline, free", "hash"), ("gemini — Gemini API (needs GEMINI_API_KEY)", "gemini")]


def parse_budget(text: str) -> float | None:
    """The Budget field: empty means no cap; else dollars more than 0 ("5", "$0.50")."""
    cleaned = text.strip().removeprefix("$").replace(",", "").strip()
    if not cleaned:
        return None
    try:
        value = float(cleaned)
    except ValueError:
        raise ValueError(f"Budget: {text!r} is not an amount of dollars; leave it empty for no cap") from None
    if value <= 0:
        raise ValueError("Budget: enter more than $0, or leave it empty for no cap")
    return value


def describe_differences(differences: list[str]) -> list[str]:
    """'text column: stored 'a', given 'b'' as 'text column: the job has 'a', this form has 'b''."""
    out = []
    for diff in differences:
        match = re.match(r"^(.*?): stored (.*), given (.*)$", diff)
        out.append(f"{match[1]}: the job has {match[2]}, this form has {match[3]}" if match else diff)
    return out


class Launcher:
    """A backfill form with Start / Pause / Resume / Cancel; progress below; a search box once done."""

    def __init__(
        self,
        source: str | pd.DataFrame = "",
        collection: str = "",
        db: str | Path | None = None,
        qdrant_path: str | None = None,
        **defaults: Any,
    ) -> None:
        self.db = str(resolve_db(db))
        self.qdrant_path = qdrant_path
        self.frame = source if isinstance(source, pd.DataFrame) else None
        self.extra_options: dict[str, Any] = dict(defaults.get("embedder_options", {}))
        self.job: str | None = None
        self.handle: JobHandle | None = None
        self.result: Any = None
        self._mismatch_job: str | None = None
        self._planning: threading.Thread | None = None

        # -- the form ------------------------------------------------------------------------------
        shown_source = f"DataFrame: {len(source):,} rows" if self.frame is not None else str(source)
        self.source = widgets.Text(shown_source, description="Source", style=_LABEL, layout={"width": "600px"},
                                   placeholder="a .parquet, .csv or .jsonl file, or sql:SELECT …",
                                   disabled=self.frame is not None)  # fmt: skip
        self.read_button = widgets.Button(description="Read columns", icon="table", layout={"width": "130px"})
        self.read_button.add_class("qsync-read-columns")
        self.collection = widgets.Text(collection, description="Collection", style=_LABEL, layout=_FIELD)
        self.job_name = widgets.Text(defaults.get("job") or "", description="Job name", style=_LABEL, layout=_FIELD,
                                     placeholder="default: COLLECTION:SOURCE-NAME")  # fmt: skip
        self.id_column = widgets.Dropdown(description="Id column", style=_LABEL, layout=_FIELD)
        self.id_column.add_class("qsync-id-column")
        self.text_column = widgets.Dropdown(description="Text column", style=_LABEL, layout=_FIELD)
        self.text_column.add_class("qsync-text-column")
        self.payload_columns = widgets.SelectMultiple(description="Payload columns", rows=4, style=_LABEL,
                                                      layout=_FIELD)  # fmt: skip
        self.payload_columns.add_class("qsync-payload-columns")
        payload_help = widgets.HTML("<small>stored with each point; Ctrl/⌘-click to pick several</small>")
        embedder = defaults.get("embedder") or "hash"
        options = list(_EMBEDDERS) + ([(embedder, embedder)] if embedder not in ("hash", "gemini") else [])
        self.embedder = widgets.Dropdown(options=options, value=embedder, description="Embedder", style=_LABEL,
                                         layout=_FIELD)  # fmt: skip
        self.embedder.add_class("qsync-embedder")
        self.model = widgets.Text(defaults.get("model") or DEFAULT_MODEL, description="Model", style=_LABEL,
                                  layout=_FIELD)  # fmt: skip
        self.texts_per_minute = widgets.IntText(int(defaults.get("texts_per_minute") or 3000),
                                                description="Texts per minute", style=_LABEL, layout=_FIELD)  # fmt: skip
        self.tokens_per_minute = widgets.IntText(int(defaults.get("tokens_per_minute") or 1_000_000),
                                                 description="Tokens per minute", style=_LABEL, layout=_FIELD)  # fmt: skip
        # Media columns embed each record's image or PDF (its text as caption): gemini-embedding-2 only.
        self.image_column = widgets.Dropdown(options=[_NO_MEDIA], description="Image column", style=_LABEL,
                                             layout=_FIELD)  # fmt: skip
        self.image_column.add_class("qsync-image-column")
        self.document_column = widgets.Dropdown(options=[_NO_MEDIA], description="Document column", style=_LABEL,
                                                layout=_FIELD)  # fmt: skip
        self.document_column.add_class("qsync-document-column")
        self.media_fields = widgets.VBox([self.image_column, self.document_column])
        self.media_fields.add_class("qsync-media-fields")
        self.gemini_fields = widgets.VBox([self.model, self.media_fields, self.texts_per_minute,
                                           self.tokens_per_minute])  # fmt: skip
        self.gemini_fields.add_class("qsync-gemini-fields")
        self.dimensions = widgets.IntText(int(defaults.get("dimensions") or 768), description="Dimensions",
                                          style=_LABEL, layout=_FIELD)  # fmt: skip
        self.batch_size = widgets.IntText(int(defaults.get("batch_size") or 100), description="Batch size",
                                          style=_LABEL, layout=_FIELD)  # fmt: skip
        self.concurrency = widgets.IntText(int(defaults.get("concurrency") or 4), description="Batches at once",
                                           style=_LABEL, layout=_FIELD)  # fmt: skip
        budget = defaults.get("max_cost_usd")
        self.budget = widgets.Text("" if not budget else f"{float(budget):g}", description="Budget (USD)",
                                   placeholder="empty: no cap", style=_LABEL, layout=_FIELD)  # fmt: skip
        self.budget.add_class("qsync-budget")
        budget_help = widgets.HTML("<small>the job's whole spend across resumes; leave empty for no cap</small>")

        # -- buttons and messages ----------------------------------------------------------------------
        self.start_button = widgets.Button(description="Start", button_style="primary", icon="play",
                                           tooltip="plan the job (or pick up the unfinished one) and run it")  # fmt: skip
        self.pause_button = widgets.Button(description="Pause", icon="pause", disabled=True,
                                           tooltip="stop after the batches in flight; Resume continues")  # fmt: skip
        self.resume_button = widgets.Button(description="Resume", icon="step-forward", disabled=True,
                                            tooltip="continue the paused or failed job")  # fmt: skip
        self.cancel_button = widgets.Button(description="Cancel job…", button_style="danger", icon="times",
                                            disabled=True, tooltip="end the job for good (asks first)")  # fmt: skip
        for button, css in ((self.start_button, "qsync-start"), (self.pause_button, "qsync-pause"),
                            (self.resume_button, "qsync-resume"), (self.cancel_button, "qsync-cancel")):  # fmt: skip
            button.add_class(css)
        self.confirm_yes = widgets.Button(description="Yes, cancel the job", button_style="danger",
                                          layout={"width": "180px"})  # fmt: skip
        self.confirm_yes.add_class("qsync-confirm-cancel")
        self.confirm_no = widgets.Button(description="No, keep it", layout={"width": "120px"})
        self.confirm_text = widgets.HTML("")
        self.confirm = widgets.VBox([self.confirm_text, widgets.HBox([self.confirm_yes, self.confirm_no])],
                                    layout={"display": "none"})  # fmt: skip
        self.confirm.add_class("qsync-confirm")
        self.as_stored_button = widgets.Button(description="Resume as stored", icon="step-forward",
                                               layout={"width": "170px"})  # fmt: skip
        self.as_stored_button.add_class("qsync-resume-as-stored")
        self.afresh_button = widgets.Button(description="Cancel it and start afresh", button_style="warning",
                                            layout={"width": "220px"})  # fmt: skip
        self.afresh_button.add_class("qsync-start-afresh")
        self.mismatch_text = widgets.HTML("")
        self.mismatch = widgets.VBox([self.mismatch_text, widgets.HBox([self.as_stored_button, self.afresh_button])],
                                     layout={"display": "none"})  # fmt: skip
        self.mismatch.add_class("qsync-mismatch")
        self.message = widgets.HTML("")
        self.message.add_class("qsync-message")
        self.monitor = JobMonitor(db=self.db, show_messages=False)
        self.search = SearchBox(db=self.db)
        self.search.widget.layout.display = "none"

        self.read_button.on_click(lambda _: self.read_columns())
        self.embedder.observe(lambda _: self._show_embedder_fields(), names="value")
        self.model.observe(lambda _: self._show_embedder_fields(), names="value")
        self.start_button.on_click(lambda _: self.start())
        self.pause_button.on_click(lambda _: self.pause())
        self.resume_button.on_click(lambda _: self.resume())
        self.cancel_button.on_click(lambda _: self.ask_cancel())
        self.confirm_yes.on_click(lambda _: self.cancel())
        self.confirm_no.on_click(lambda _: self._hide(self.confirm))
        self.as_stored_button.on_click(lambda _: self.resume_as_stored())
        self.afresh_button.on_click(lambda _: self.start_afresh())

        form = widgets.VBox([
            widgets.HBox([self.source, self.read_button]), self.collection, self.job_name,
            self.id_column, self.text_column, widgets.HBox([self.payload_columns, payload_help]),
            self.embedder, self.gemini_fields, self.dimensions, self.batch_size, self.concurrency,
            widgets.HBox([self.budget, budget_help]),
        ])  # fmt: skip
        buttons = widgets.HBox([self.start_button, self.pause_button, self.resume_button, self.cancel_button])
        self.widget = widgets.VBox([form, buttons, self.confirm, self.mismatch, self.message, self.monitor.widget,
                                    self.search.widget])  # fmt: skip
        self.widget.add_class("qsync-launcher")
        self._show_embedder_fields()
        self.read_columns(defaults)
        self.restore()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # -- the form --------------------------------------------------------------------------------------

    def _source(self) -> str | pd.DataFrame:
        return self.frame if self.frame is not None else self.source.value.strip()

    def read_columns(self, defaults: dict[str, Any] | None = None) -> None:
        """Offer the source's columns in the id, text and payload fields (id and text guessed)."""
        defaults = defaults or {}
        source = self._source()
        if isinstance(source, str) and not source:
            return
        try:
            columns = source_columns(source)
        except QsyncError as exc:
            self.message.value = error_html(f"Source: {exc}")
            return
        guessed_id, guessed_text = guess_columns(columns)
        keep_id, keep_text = self.id_column.value, self.text_column.value
        picked = tuple(self.payload_columns.value) or tuple(defaults.get("payload_columns", ()))
        self.id_column.options = columns
        self.text_column.options = columns
        self.payload_columns.options = columns
        self.id_column.value = next(c for c in (defaults.get("id_column"), keep_id, guessed_id, columns[0])
                                    if c in columns)  # fmt: skip
        text_choices = (defaults.get("text_column"), keep_text, guessed_text, columns[-1])
        self.text_column.value = next(c for c in text_choices if c in columns)
        self.payload_columns.value = tuple(c for c in picked if c in columns)
        for field, key in ((self.image_column, "image_column"), (self.document_column, "document_column")):
            keep = defaults.get(key) or field.value
            field.options = [_NO_MEDIA, *[(c, c) for c in columns]]
            field.value = keep if keep in columns else ""
        if self.message.value.startswith("<span style='color:#b00020'>Source"):
            self.message.value = ""

    def _media_model(self) -> bool:
        return self.embedder.value == "gemini" and bool(model_info(self.model.value.strip()).get("multimodal"))

    def _show_embedder_fields(self) -> None:
        self.gemini_fields.layout.display = "" if self.embedder.value == "gemini" else "none"
        self.media_fields.layout.display = "" if self._media_model() else "none"

    def _spec_options(self) -> dict[str, Any]:
        gemini = self.embedder.value == "gemini"
        return {
            "collection": self.collection.value.strip(), "job": self.job_name.value.strip() or None,
            "id_column": self.id_column.value, "text_column": self.text_column.value,
            "payload_columns": list(self.payload_columns.value), "embedder": self.embedder.value,
            "model": self.model.value.strip() or None if gemini else None, "dimensions": self.dimensions.value,
            "embedder_options": self.extra_options, "batch_size": self.batch_size.value,
            "qdrant_path": self.qdrant_path,
            "image_column": self.image_column.value or None if self._media_model() else None,
            "document_column": self.document_column.value or None if self._media_model() else None,
        }  # fmt: skip

    def _settings(self) -> RunSettings:
        gemini = self.embedder.value == "gemini"
        return RunSettings.from_env(
            concurrency=self.concurrency.value,
            texts_per_minute=float(self.texts_per_minute.value) if gemini else None,
            tokens_per_minute=float(self.tokens_per_minute.value) if gemini else None,
        )

    def _expected_name(self) -> str | None:
        """The job name Start would use, without reading the source's rows."""
        given = str(self.job_name.value).strip()
        if given:
            return given
        source, collection = self._source(), self.collection.value.strip()
        if not collection or (isinstance(source, str) and not source):
            return None
        try:
            return default_job_name(as_source(source), collection)
        except QsyncError:
            return None

    def fill_from(self, spec: JobSpec, max_cost_usd: float | None) -> None:
        """Show a stored job's settings in the form (what Start would resume)."""
        columns = [*self.id_column.options]
        for name in (spec.columns.id_column, spec.columns.text_column or "", *spec.columns.payload_columns):
            if name and name not in columns:
                columns.append(name)
        self.id_column.options = self.text_column.options = self.payload_columns.options = columns
        self.id_column.value = spec.columns.id_column
        if spec.columns.text_column:
            self.text_column.value = spec.columns.text_column
        self.payload_columns.value = tuple(spec.columns.payload_columns)
        for field, media in ((self.image_column, spec.columns.image_column),
                             (self.document_column, spec.columns.document_column)):  # fmt: skip
            if media and media not in [v for _, v in field.options]:
                field.options = [*field.options, (media, media)]
            field.value = media or ""
        if spec.embedder.kind not in [v for _, v in self.embedder.options]:
            self.embedder.options = [*self.embedder.options, (spec.embedder.kind, spec.embedder.kind)]
        self.embedder.value = spec.embedder.kind
        if spec.embedder.kind == "gemini":
            self.model.value = spec.embedder.resolved_model
        self.dimensions.value = spec.embedder.dimensions
        self.batch_size.value = spec.batch_size
        self.budget.value = "" if max_cost_usd is None else f"{max_cost_usd:g}"
        self.extra_options = dict(spec.embedder.options)

    def _stored(self, job: str) -> tuple[JobSpec, float | None]:
        """A job's stored spec and budget."""
        rows = open_store(self.db, writable=False).query_rows(
            "SELECT config, collection, source, max_cost_usd FROM jobs WHERE job_id = ?", [job]
        )
        config, collection, source, budget = rows[0]
        spec = JobSpec.from_dict(json.loads(config), job_id=job, collection=collection, source=source)
        return spec, None if budget is None else float(budget)

    # -- finding the job after a re-run ------------------------------------------------------------------

    def restore(self) -> None:
        """Find this form's job in the DuckDB file and show it as it is: running (in this kernel or another
        process), unfinished (Resume), or done (a re-sync on Start, and a search box)."""
        name = self._expected_name()
        if name is None or not Path(self.db).exists():
            return
        try:
            frame = api.jobs(db=self.db)
        except QsyncError:
            return
        mine = frame[[base_name(str(j)) == base_name(name) for j in frame["job"]]]
        if mine.empty:
            return
        row = mine.iloc[0]  # newest first
        job, status = str(row["job"]), str(row["status"])
        self.job = job
        self.fill_from(*self._stored(job))
        handle = active_run(job, self.db)
        if handle is not None:  # started by this kernel before the notebook was re-run
            self.handle = handle
            self.monitor.reset(job, "running")
            if handle.figures is not None:
                self.monitor.show(handle.figures, "running", force=True)
            handle.add_listener(self.monitor)
            handle.add_listener(self._on_event)
            self._buttons(running=True)
            self.message.value = f"<b>{html.escape(job)}</b> is running in this kernel (started before this cell ran)."
            return
        figures = self.monitor.load(job)
        if status == "running":
            self.monitor.follow(job)
            self._buttons(running=False, resumable=False)
            self.start_button.disabled = True
            self.message.value = (
                f"<b>{html.escape(job)}</b> is running in another process; this form follows it. "
                "Pause or cancel it where it runs."
            )
        elif status in _UNFINISHED and figures is not None:
            self._buttons(running=False, resumable=True)
            self.message.value = f"{self._done_so_far(figures, status)} Press <b>Resume</b> (or Start) to continue."
        elif figures is not None and status == "completed":
            self._buttons(running=False, resumable=False)
            self.message.value = (
                f"<b>{html.escape(job)}</b> completed: {self._summary(figures)} <b>Start</b> runs a re-sync "
                "(only new and changed records are embedded)."
            )
            self._offer_search(job)
        elif figures is not None:
            self._buttons(running=False, resumable=False)
            self.message.value = f"<b>{html.escape(job)}</b> was cancelled. <b>Start</b> begins a new job."

    @staticmethod
    def _done_so_far(f: JobFigures, status: str) -> str:
        return (
            f"<b>{html.escape(f.job)}</b> is {html.escape(status)}: {count(f.processed_records)} of "
            f"{count(f.total_records)} records already done and {usd(f.cost_usd)} already paid."
        )

    @staticmethod
    def _summary(f: JobFigures) -> str:
        skipped = f"{count(f.skipped_records)} skipped" + (" (reasons in 02)" if f.skipped_records else "")
        return (
            f"{count(f.processed_records)} of {count(f.total_records)} records — {count(f.loaded_records)} loaded, "
            f"{skipped}, {count(f.unchanged_records)} unchanged; {usd(f.cost_usd)} spent."
        )

    # -- buttons -----------------------------------------------------------------------------------------

    def _buttons(self, *, running: bool, resumable: bool = False) -> None:
        with self.start_button.hold_trait_notifications():
            self.start_button.disabled = running
            self.pause_button.disabled = not running
            self.resume_button.disabled = running or not resumable
            self.cancel_button.disabled = not (running or resumable)

    @staticmethod
    def _hide(box: widgets.Widget) -> None:
        box.layout.display = "none"

    def start(self) -> None:
        """Plan the job (or pick up the unfinished one of that name) and run it, in the background."""
        self._hide(self.confirm)
        self._hide(self.mismatch)
        self.search.widget.layout.display = "none"
        try:
            budget = parse_budget(self.budget.value)
        except ValueError as exc:
            self.message.value = error_html(str(exc))
            return
        if not self.collection.value.strip():
            self.message.value = error_html("Collection: enter the name of the Qdrant collection to fill.")
            return
        name = self._expected_name() or "the job"
        self._buttons(running=True)
        self.pause_button.disabled = True  # nothing to pause while planning
        self.monitor.reset(name, "reading the source and planning…")
        self.message.value = f"Reading the source and planning <b>{html.escape(name)}</b>…"
        self._planning = threading.Thread(target=self._plan_and_run, args=(budget,), daemon=True)
        self._planning.start()

    def _plan_and_run(self, budget: float | None) -> None:
        try:
            job = estimates.prepare(self._source(), db=self.db, max_cost_usd=budget, settings=self._settings(),
                                    **self._spec_options())  # fmt: skip
        except api.SpecMismatch as exc:
            self._show_mismatch(exc)
            return
        except (QsyncError, ValueError) as exc:
            self.monitor.reset(self._expected_name() or "the job", "not started")
            self.message.value = error_html(f"Not started: {exc}")
            self._buttons(running=False)
            return
        self._launch(job, budget)

    def _launch(self, job: str, budget: float | None) -> None:
        self.job = job
        if self.monitor.job != job:
            self.monitor.reset(job)
        try:
            self.handle = start_job(job, db=self.db, settings=self._settings(), max_cost_usd=budget,
                                    listeners=[self.monitor, self._on_event])  # fmt: skip
        except QsyncError as exc:
            self.message.value = error_html(f"Not started: {exc}")
            self._buttons(running=False, resumable=True)
            return
        self._buttons(running=True)
        # Pause is offered once the run has started: a stop while it opens the collection would fail it.
        self.pause_button.disabled = True

    def _on_event(self, event: Event) -> None:
        if isinstance(event, JobStarted):
            self.pause_button.disabled = False
            f = event.figures
            if f.processed_records:
                self.message.value = (
                    f"Resuming <b>{html.escape(event.job_id)}</b>: {count(f.processed_records)} of "
                    f"{count(f.total_records)} records were already done and {usd(f.cost_usd)} already paid; "
                    f"continuing with the other {count(f.remaining_records)}."
                )
            else:
                self.message.value = (
                    f"Running <b>{html.escape(event.job_id)}</b> in the background: {count(f.total_records)} records "
                    f"in {count(f.batches_total)} batches. The notebook stays usable."
                )
        elif isinstance(event, JobFinished):
            self._finished(event)

    def _finished(self, event: JobFinished) -> None:
        f, job = event.figures, html.escape(event.job_id)
        summary = self._summary(f) if f else ""
        if event.status == "completed":
            self._buttons(running=False)
            self.message.value = f"<b>{job}</b> completed: {summary}"
            self._offer_search(event.job_id)
        elif event.status == "paused":
            self._buttons(running=False, resumable=True)
            why = html.escape(humanize(event.message) or "paused")
            why = why if why.startswith("paused") else f"paused: {why}"
            self.message.value = f"<b>{job}</b> {why}. {summary} Press <b>Resume</b> to continue."
        elif event.status == "failed":
            self._buttons(running=False, resumable=True)
            self.message.value = (
                f"<b>{job}</b> stopped: {html.escape(humanize(event.message))}. {summary} Press <b>Resume</b> to "
                "try the failed batches again, or look at them in 02_inspect_batches."
            )
        else:
            self._buttons(running=False)
            self.message.value = (
                f"<b>{job}</b> was cancelled. {summary} <b>Start</b> begins a new job; vectors already paid for are "
                "reused."
            )

    def _in_flight(self) -> int:
        return self.handle.batches_in_flight if self.handle else 0

    def pause(self) -> None:
        """Stop after the batches in flight (their answers are saved); Resume continues."""
        if self.handle is None or not self.handle.running:
            return
        self.pause_button.disabled = True
        self.handle.pause()
        self.message.value = "Pausing…"  # at once; the count below takes a query
        n = self._in_flight()
        text = f"pausing after the {n} batch{'es' if n != 1 else ''} in flight…" if n else "pausing…"
        self.monitor.set_status(text)
        self.message.value = f"{text[0].upper()}{text[1:]} Their answers are saved; Resume continues from there."

    def resume(self) -> None:
        if self.job is None or (self.handle is not None and self.handle.running):
            return
        try:
            budget = parse_budget(self.budget.value)
        except ValueError as exc:
            self.message.value = error_html(str(exc))
            return
        self._buttons(running=True)
        self.monitor.set_status("resuming…")
        self.monitor.new_run()
        self.message.value = f"Resuming <b>{html.escape(self.job)}</b>…"
        self._launch(self.job, budget)

    def ask_cancel(self) -> None:
        if self.job is None:
            return
        self.confirm_text.value = (
            f"Cancel <b>{html.escape(self.job)}</b>? A cancelled job cannot be resumed (vectors already paid for "
            "stay reusable by the next job). To stop for now and continue later, use <b>Pause</b> instead."
        )
        self.confirm.layout.display = ""

    def cancel(self) -> None:
        """Cancel the job for good (after Cancel job… was confirmed)."""
        self._hide(self.confirm)
        if self.job is None:
            return
        if self.handle is not None and self.handle.running:
            self.cancel_button.disabled = self.pause_button.disabled = True
            self.handle.cancel()
            n = self._in_flight()
            text = f"cancelling after the {n} batch{'es' if n != 1 else ''} in flight…" if n else "cancelling…"
            self.monitor.set_status(text)
            self.message.value = text[0].upper() + text[1:]
            return
        try:
            api.cancel(self.job, db=self.db)
        except QsyncError as exc:
            self.message.value = error_html(str(exc))
            return
        self.monitor.load(self.job)
        self._buttons(running=False)
        self.message.value = f"<b>{html.escape(self.job)}</b> is cancelled. <b>Start</b> begins a new job."

    # -- a form that differs from the unfinished job -----------------------------------------------------

    def _show_mismatch(self, exc: api.SpecMismatch) -> None:
        self._mismatch_job = exc.job_id
        items = "".join(f"<li>{html.escape(d)}</li>" for d in describe_differences(exc.differences))
        self.monitor.reset(exc.job_id, exc.status)
        self.message.value = ""
        self.mismatch_text.value = (
            f"<b>{html.escape(exc.job_id)}</b> is unfinished ({html.escape(exc.status)}) and was started with "
            f"other settings than this form:<ul>{items}</ul><b>Resume as stored</b> continues it with its own "
            "settings; <b>Cancel it and start afresh</b> cancels it and starts a new job with this form. "
            "Vectors already paid for are reused either way."
        )
        self.mismatch.layout.display = ""
        self._buttons(running=False, resumable=True)
        self.job = exc.job_id

    def resume_as_stored(self) -> None:
        job = self._mismatch_job
        if job is None:
            return
        self._hide(self.mismatch)
        self.fill_from(*self._stored(job))
        self.job = job
        self.resume()

    def start_afresh(self) -> None:
        job = self._mismatch_job
        if job is None:
            return
        self._hide(self.mismatch)
        try:
            api.cancel(job, db=self.db)
        except QsyncError as exc:
            self.message.value = error_html(str(exc))
            return
        self._mismatch_job = None
        self.start()

    # -- after a run -----------------------------------------------------------------------------------

    def _offer_search(self, job: str) -> None:
        self.search.set_job(job)
        self.search.widget.layout.display = ""

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the background job ends (headless runs must not end the kernel under it)."""
        if self._planning is not None:
            self._planning.join(timeout)
        if self.handle is not None:
            self.result = self.handle.wait(timeout)
        return self.result
