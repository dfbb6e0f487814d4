"""Configure a backfill and Start / Pause / Resume / Cancel it without blocking the kernel.

The form (form.py) reads the source's columns and offers them and shows only the fields the chosen embedder
uses; the launcher finds its job in the DuckDB file, so a re-run notebook (Run All, a restarted kernel) shows the job
as it is — settings, figures, buttons — instead of a blank form that would start another job. Every
click answers at once, in the words of the buttons and fields.
"""

from __future__ import annotations

import html
import threading
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd

from qsync.app import jobs, reading
from qsync.app.session import JobHandle, active_run, start_job
from qsync.engine.events import Event, JobFinished, JobStarted
from qsync.engine.runner import RunResult
from qsync.errors import QsyncError, SpecMismatch
from qsync.formatting import count, usd
from qsync.notebook.form import LauncherForm, parse_budget
from qsync.notebook.formatting import error_html, humanize
from qsync.notebook.monitor import JobMonitor
from qsync.notebook.search import SearchBox
from qsync.notebook.sentences import describe_differences, done_so_far, summary_of
from qsync.notebook.ui import KernelSide
from qsync.spec.defaults import resolve_db
from qsync.spec.job import JobSpec, base_name

_UNFINISHED = ("planned", "paused", "failed", "stale")


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
        self.job: str | None = None
        self.handle: JobHandle | None = None
        self.result: RunResult | None = None
        self._mismatch_job: str | None = None
        self._planning: threading.Thread | None = None
        self.ui = KernelSide()  # planning and the run's events happen on other threads

        # -- the form ------------------------------------------------------------------------------
        # -- buttons and messages ----------------------------------------------------------------------
        self.start_button = widgets.Button(description="Start", button_style="primary", icon="play",
                                           tooltip="plan the job (or pick up the unfinished one) and run it")  # fmt: skip
        self.pause_button = widgets.Button(description="Pause", icon="pause", disabled=True,
                                           tooltip="stop after the API calls in flight; Resume continues")  # fmt: skip
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
        self.form = LauncherForm(source, collection, qdrant_path, self.message, defaults)
        self.monitor = JobMonitor(db=self.db, show_messages=False)
        self.search = SearchBox(db=self.db)
        self.search.widget.layout.display = "none"

        self.start_button.on_click(lambda _: self.start())
        self.pause_button.on_click(lambda _: self.pause())
        self.resume_button.on_click(lambda _: self.resume())
        self.cancel_button.on_click(lambda _: self.ask_cancel())
        self.confirm_yes.on_click(lambda _: self.cancel())
        self.confirm_no.on_click(lambda _: self._hide(self.confirm))
        self.as_stored_button.on_click(lambda _: self.resume_as_stored())
        self.afresh_button.on_click(lambda _: self.start_afresh())

        buttons = widgets.HBox([self.start_button, self.pause_button, self.resume_button, self.cancel_button])
        self.widget = widgets.VBox([self.form.widget, buttons, self.confirm, self.mismatch, self.message, self.monitor.widget,
                                    self.search.widget])  # fmt: skip
        self.widget.add_class("qsync-launcher")
        self.restore()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # -- the form --------------------------------------------------------------------------------------

    def _stored(self, job: str) -> tuple[JobSpec, float | None]:
        """A job's stored spec and budget."""
        record = reading.stored_job(job, db=self.db)
        return record.spec, record.max_cost_usd

    # -- finding the job after a re-run ------------------------------------------------------------------

    def restore(self) -> None:
        """Find this form's job in the DuckDB file and show it as it is: running (in this kernel or another
        process), unfinished (Resume), or done (a re-sync on Start, and a search box)."""
        name = self.form.expected_name()
        if name is None or not Path(self.db).exists():
            return
        try:
            frame = reading.jobs(db=self.db)
        except QsyncError:
            return
        mine = frame[[base_name(str(j)) == base_name(name) for j in frame["job"]]]
        if mine.empty:
            return
        row = mine.iloc[0]  # newest first
        job, status = str(row["job"]), str(row["status"])
        self.job = job
        self.form.fill_from(*self._stored(job))
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
            self.message.value = f"{done_so_far(figures, status)} Press <b>Resume</b> (or Start) to continue."
        elif figures is not None and status == "completed":
            self._buttons(running=False, resumable=False)
            self.message.value = (
                f"<b>{html.escape(job)}</b> completed: {summary_of(figures)} <b>Start</b> runs a re-sync "
                "(only new and changed records are embedded)."
            )
            self._offer_search(job)
        elif figures is not None:
            self._buttons(running=False, resumable=False)
            self.message.value = f"<b>{html.escape(job)}</b> was cancelled. <b>Start</b> begins a new job."

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
            budget = parse_budget(self.form.budget.value)
        except ValueError as exc:
            self.message.value = error_html(str(exc))
            return
        if not self.form.collection.value.strip():
            self.message.value = error_html("Collection: enter the name of the Qdrant collection to fill.")
            return
        name = self.form.expected_name() or "the job"
        self._buttons(running=True)
        self.pause_button.disabled = True  # nothing to pause while planning
        self.monitor.reset(name, "reading the source and planning…")
        self.message.value = f"Reading the source and planning <b>{html.escape(name)}</b>…"
        self._planning = threading.Thread(target=self._plan_and_run, args=(budget,), daemon=True)
        self._planning.start()

    def _plan_and_run(self, budget: float | None) -> None:
        """On the planning thread: plan (or pick up) the job; what follows happens on the kernel's side."""
        try:
            job = jobs.prepare(self.form.source_value(), db=self.db, max_cost_usd=budget, settings=self.form.settings(),
                               **self.form.spec_options())  # fmt: skip
        except SpecMismatch as exc:
            self.ui.call(self._show_mismatch, exc)
            return
        except (QsyncError, ValueError) as exc:
            self.ui.call(self._not_started, exc)
            return
        self.ui.call(self._launch, job, budget)

    def _not_started(self, exc: Exception) -> None:
        self.monitor.reset(self.form.expected_name() or "the job", "not started")
        self.message.value = error_html(f"Not started: {exc}")
        self._buttons(running=False)

    def _launch(self, job: str, budget: float | None) -> None:
        self.job = job
        if self.monitor.job != job:
            self.monitor.reset(job)
        try:
            self.handle = start_job(job, db=self.db, settings=self.form.settings(), max_cost_usd=budget,
                                    listeners=[self.monitor, self._on_event])  # fmt: skip
        except QsyncError as exc:
            self.message.value = error_html(f"Not started: {exc}")
            self._buttons(running=False, resumable=True)
            return
        self._buttons(running=True)
        # Pause is offered once the run has started: a stop while it opens the collection would fail it.
        self.pause_button.disabled = True

    def _on_event(self, event: Event) -> None:
        """A listener of the run (called on its thread)."""
        self.ui.call(self._heard, event)

    def _heard(self, event: Event) -> None:
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
        summary = summary_of(f) if f else ""
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

    def pause(self) -> None:
        """Stop after the API calls in flight (their answers are saved); Resume continues."""
        if self.handle is None or not self.handle.running:
            return
        self.pause_button.disabled = True
        self.handle.pause()
        # No count of batches: of those under way, the ones waiting for an answer go back to pending (what they
        # paid for is cached) and the ones already written to Qdrant are marked done.
        self.monitor.set_status("pausing after the API calls in flight…")
        self.message.value = "Pausing after the API calls in flight: their answers are saved; Resume continues."

    def resume(self) -> None:
        if self.job is None:
            return
        if self.handle is not None and self.handle.running:
            if self.handle.finished is None:
                return  # running: Resume is not offered
            self.handle.wait(10)  # the run has ended and is returning: a moment
        try:
            budget = parse_budget(self.form.budget.value)
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
            self.monitor.set_status("cancelling after the API calls in flight…")
            self.message.value = "Cancelling after the API calls in flight…"
            return
        try:
            jobs.cancel(self.job, db=self.db)
        except QsyncError as exc:
            self.message.value = error_html(str(exc))
            return
        self.monitor.load(self.job)
        self._buttons(running=False)
        self.message.value = f"<b>{html.escape(self.job)}</b> is cancelled. <b>Start</b> begins a new job."

    # -- a form that differs from the unfinished job -----------------------------------------------------

    def _show_mismatch(self, exc: SpecMismatch) -> None:
        self._mismatch_job = exc.job_id
        items = "".join(f"<li>{html.escape(d)}</li>" for d in describe_differences(exc.differences))
        self.monitor.reset(exc.job_id, exc.status)
        self.message.value = ""
        self.mismatch_text.value = (
            f"<b>{html.escape(exc.job_id)}</b> is unfinished ({html.escape(exc.status)}) and was started with "
            f"other settings than this form:<ul>{items}</ul><b>Resume as stored</b> continues it with its own "
            "settings; <b>Cancel it and start afresh</b> cancels it and starts a new job with this form. "
            f"{html.escape(humanize(exc.reuse_note[:1].upper() + exc.reuse_note[1:]))}"
        )
        self.mismatch.layout.display = ""
        self._buttons(running=False, resumable=True)
        self.job = exc.job_id

    def resume_as_stored(self) -> None:
        job = self._mismatch_job
        if job is None:
            return
        self._hide(self.mismatch)
        self.form.fill_from(*self._stored(job))
        self.job = job
        self.resume()

    def start_afresh(self) -> None:
        job = self._mismatch_job
        if job is None:
            return
        self._hide(self.mismatch)
        try:
            jobs.cancel(job, db=self.db)
        except QsyncError as exc:
            self.message.value = error_html(str(exc))
            return
        self._mismatch_job = None
        self.start()

    # -- after a run -----------------------------------------------------------------------------------

    def _offer_search(self, job: str) -> None:
        self.search.set_job(job)
        self.search.widget.layout.display = ""

    def wait(self, timeout: float | None = None) -> RunResult | None:
        """Block until the background job ends (headless runs must not end the kernel under it)."""
        if self._planning is not None:
            self._planning.join(timeout)
        self.ui.drain()  # in a kernel, the launch the planning thread queued waits for this thread: run it now
        if self.handle is not None:
            self.result = self.handle.wait(timeout)
        self.ui.drain()
        return self.result
