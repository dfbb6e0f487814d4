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

from qsync.app import jobs, reading
from qsync.app.session import JobHandle, active_run, start_job
from qsync.engine.events import Event, JobFinished, JobStarted, RunError
from qsync.engine.runner import RunResult
from qsync.errors import QsyncError, SpecMismatch
from qsync.input.frames import Frame
from qsync.ledger.figures import JobFigures
from qsync.notebook.controls import LauncherControls
from qsync.notebook.finding import UNFINISHED, job_to_show, source_text
from qsync.notebook.form import LauncherForm, parse_budget
from qsync.notebook.formatting import error_html, humanize
from qsync.notebook.monitor import JobMonitor
from qsync.notebook.search import SearchBox
from qsync.notebook.sentences import as_stored, describe_differences, run_finished, run_started
from qsync.notebook.ui import KernelSide
from qsync.spec.defaults import resolve_db
from qsync.spec.job import JobSpec, base_name
from qsync.spec.settings import RunSettings

_WATCH_S = 2.0  # how often a form showing a job it does not run reads the ledger


class Launcher(LauncherControls):
    """A backfill form with Start / Pause / Resume / Cancel; progress below; a search box once done."""

    def __init__(
        self,
        source: str | Frame = "",
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

        super().__init__()  # the buttons, the cancel confirmation and the mismatch panel
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
        self.widget = widgets.VBox([self.style, self.form.widget, buttons, self.confirm, self.mismatch, self.message, self.monitor.widget,
                                    self.search.widget])  # fmt: skip
        self.widget.add_class("qsync-launcher")
        self.restore()
        self.form.on_read = self._source_read

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # -- the form --------------------------------------------------------------------------------------

    def _stored(self, job: str) -> tuple[JobSpec, float | None]:
        """A job's stored spec and budget."""
        record = reading.stored_job(job, db=self.db)
        return record.spec, record.max_cost_usd

    # -- finding the job after a re-run ------------------------------------------------------------------

    def restore(self, *, newest_unfinished: bool = True) -> None:
        """Find the job to show in the DuckDB file and show it as it is: running (in this kernel or another
        process), unfinished (Resume), or done (a re-sync on Start, and a search box).

        Which job: the newest unfinished job of the file (`newest_unfinished`: what a restarted kernel must not
        hide behind the notebook's default source), else this form's job; after Read columns, the new source's."""
        name = self.form.expected_name()
        found = job_to_show(self.db, name, newest_unfinished=newest_unfinished and self.form.frame is None)
        if found is None:
            self._no_job(name, announce=not newest_unfinished)
            return
        job, status = found
        self.job = job
        spec, budget = self._stored(job)
        if name is None or base_name(job) != base_name(name):
            self._show_source_of(spec)
        self.form.fill_from(spec, budget)
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
        if figures is not None:
            self._show_as_stored(figures, status)
            if status != "cancelled":  # 02's Retry or `qsync resume` may take it on: the form follows until it is done
                self._follow_stored(job)

    def _no_job(self, name: str | None, *, announce: bool) -> None:
        """The source in the form has no job yet; `announce`: say so (after Read columns of another source)."""
        if self.job is None and not announce:
            return  # a new form on an empty file: "No job yet."
        self.job = None
        self.monitor.stop(wait_s=0)
        self.monitor.reset(name or "this source", "no job yet")
        self._buttons(running=False)
        self.search.widget.layout.display = "none"
        self.message.value = (
            f"No job <b>{html.escape(name)}</b> in this DuckDB file yet: <b>Start</b> plans it." if name else ""
        )

    def _show_source_of(self, spec: JobSpec) -> None:
        """Put a stored job's source and collection in the form (a restarted kernel shows the job it was on)."""
        on_read, self.form.on_read = self.form.on_read, None  # reading the columns must not restore again
        try:
            self.form.source.value = source_text(spec) or self.form.source.value
            self.form.database.value = spec.source_db or ""  # stored without a password: libpq finds it
            self.form.collection.value = spec.collection
            self.form.job_name.value = spec.name if spec.name != self.form.expected_name() else ""
            self.form.read_columns()
        finally:
            self.form.on_read = on_read

    def _show_as_stored(self, figures: JobFigures, status: str) -> None:
        """Buttons and message for a job this kernel does not run, as the ledger has it now."""
        self._buttons(running=False, resumable=status in UNFINISHED)
        self.start_button.disabled = status == "running"  # run elsewhere: paused or cancelled where it runs
        if status == "completed":  # before the message: when it says completed, the search box is there
            self._offer_search(figures.job)
        self.message.value = as_stored(figures, status)

    def _follow_stored(self, job: str, status: str | None = None) -> None:
        """After this kernel's run stopped short: follow the job in the ledger, which 02 or a terminal may retry.
        `status`: what the message shows already (the run's own ending says more than the ledger's summary, so
        it stays until the status changes)."""
        if self.job == job:
            self.monitor.follow(job, _WATCH_S, until_final=True, on_status=self._status_seen, known_status=status)

    def _status_seen(self, status: str) -> None:
        """The followed job's status changed in the ledger (another process resumed, retried or paused it)."""
        if self.handle is not None and self.handle.running:
            return  # this kernel runs it now: its events tell
        if self.monitor.figures is not None and self.monitor.figures.job == self.job:
            self._show_as_stored(self.monitor.figures, status)

    def _source_read(self) -> None:
        """Read columns of another source: show that source's job, or that it has none yet."""
        if self.handle is not None and self.handle.running:
            return
        self.restore(newest_unfinished=False)

    def start(self) -> None:
        """Plan the job (or pick up the unfinished one of that name) and run it, in the background."""
        self._hide(self.confirm)
        self._hide(self.mismatch)
        self.search.widget.layout.display = "none"
        try:
            budget = parse_budget(self.form.budget.value)
            settings = self.form.settings()
        except (ValueError, QsyncError) as exc:
            self.message.value = error_html(str(exc))
            return
        if not self.form.collection.value.strip():
            self.message.value = error_html("Collection: enter the name of the Qdrant collection to fill.")
            return
        if not self.form.columns_read():  # a source typed, Read columns not pressed: the fields name other columns
            self.form.read_columns()
            if not self.form.columns_read() or not self.form.id_column.options:
                return  # the form said why (Source: …)
        self.monitor.stop(wait_s=0)  # this kernel runs it now: its events tell, not the ledger
        name = self.form.expected_name() or "the job"
        self._buttons(running=True)
        self.pause_button.disabled = True  # nothing to pause while planning
        self.monitor.reset(name, "reading the source and planning…")
        self.message.value = f"Reading the source and planning <b>{html.escape(name)}</b>…"
        self._planning = threading.Thread(target=self._plan_and_run, args=(budget, settings), daemon=True)
        self._planning.start()

    def _plan_and_run(self, budget: float | None, settings: RunSettings) -> None:
        """On the planning thread: plan (or pick up) the job; what follows happens on the kernel's side."""
        try:
            # Opened for the run that follows (as `qsync run` does): the collection checked is the one it writes to.
            job = jobs.open_for_run(self.form.source_value(), db=self.db, max_cost_usd=budget, settings=settings,
                                    **self.form.spec_options())  # fmt: skip
        except SpecMismatch as exc:
            self.ui.call(self._show_mismatch, exc)
            return
        except (QsyncError, ValueError) as exc:
            self.ui.call(self._not_started, exc)
            return
        self.ui.call(self._launch, job, budget, settings)

    def _not_started(self, exc: Exception) -> None:
        self.monitor.reset(self.form.expected_name() or "the job", "not started")
        self.message.value = error_html(f"Not started: {exc}")
        self._buttons(running=False)

    def _launch(self, job: str | jobs.OpenedJob, budget: float | None, settings: RunSettings) -> None:
        """Run the job in the background: one just opened (its sink goes to the runner), or by name (Resume)."""
        self.job = jobs.OpenedJob.of(job).job_id
        if self.monitor.job != self.job:
            self.monitor.reset(self.job)
        try:
            self.handle = start_job(job, db=self.db, settings=settings, max_cost_usd=budget,
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
            self.message.value = run_started(event.figures)
        elif isinstance(event, JobFinished):
            self._finished(event)
        elif isinstance(event, RunError):
            # Refused before it started (another process runs the job, it was cancelled) or its lease lost: the
            # buttons must not stay as for a run in progress. Resume tries again (and says why if it still cannot).
            self._buttons(running=False, resumable=event.resumable)
            self.message.value = error_html(f"Stopped: {event.error}")

    def _finished(self, event: JobFinished) -> None:
        stopped_short = event.status in ("paused", "failed")
        self._buttons(running=False, resumable=stopped_short)
        if event.status == "completed":  # before the message: when it says completed, the search box is there
            self._offer_search(event.job_id)
        self.message.value = run_finished(event)
        if stopped_short:
            self._follow_stored(event.job_id, event.status)

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
            settings = self.form.settings()
        except (ValueError, QsyncError) as exc:
            self.message.value = error_html(str(exc))
            return
        self.monitor.stop(wait_s=0)
        self._buttons(running=True)
        self.monitor.set_status("resuming…")
        self.monitor.new_run()
        self.message.value = f"Resuming <b>{html.escape(self.job)}</b>…"
        self._launch(self.job, budget, settings)

    def ask_cancel(self) -> None:
        if self.job is None:
            return
        self.confirm_text.value = (
            f"Cancel <b>{html.escape(self.job)}</b>? A cancelled job cannot be resumed (vectors already paid for "
            "stay reusable by a next job of the same model and dimensions). To stop for now and continue later, use <b>Pause</b> instead."
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
        self.monitor.stop(wait_s=0)
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
