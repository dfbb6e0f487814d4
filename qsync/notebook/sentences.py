"""What the launcher says about a job, in sentences: how far it got, what it loaded, and how a form differs from
the stored job."""

from __future__ import annotations

import html
import re

from qsync.engine.events import JobFinished
from qsync.formatting import chunked, count, counted, usd
from qsync.ledger.figures import JobFigures
from qsync.notebook.formatting import humanize


def describe_differences(differences: list[str]) -> list[str]:
    """'text column: stored 'a', given 'b'' as 'text column: the job has 'a', this form has 'b''."""
    out = []
    for diff in differences:
        match = re.match(r"^(.*?): stored (.*), given (.*)$", diff)
        out.append(f"{match[1]}: the job has {match[2]}, this form has {match[3]}" if match else diff)
    return out


_STATE = {"failed": "stopped with failed batches", "stale": "stale (its process ended without finishing it)"}


def done_so_far(f: JobFigures, status: str) -> str:
    return (
        f"<b>{html.escape(f.job)}</b> is {html.escape(_STATE.get(status, status))}: {count(f.processed_records)} of "
        f"{count(f.total_records)} records already done and {usd(f.cost_usd)} already paid."
    )


def as_stored(f: JobFigures, status: str) -> str:
    """A job this kernel does not run, as the ledger has it (a re-run notebook, or after another process ran it)."""
    job = html.escape(f.job)
    if status == "running":
        return f"<b>{job}</b> is running in another process; this form follows it. Pause or cancel it where it runs."
    if status == "completed":
        return completed(f)
    if status == "cancelled":
        return f"<b>{job}</b> was cancelled. <b>Start</b> begins a new job."
    return f"{done_so_far(f, status)} Press <b>Resume</b> (or Start) to continue."


def run_started(f: JobFigures) -> str:
    """What a run says as it starts: a resume says what it will not redo; a new job, what it will do."""
    job = html.escape(f.job)
    # Records skipped or unchanged at planning count as processed: a job that has done no batch and paid nothing
    # is new, not resumed ("5 of 3,005 already done" said of 5 bad rows misled).
    if f.batches_done or f.cost_usd or f.loaded_records:
        return (
            f"Resuming <b>{job}</b>: {count(f.processed_records)} of {count(f.total_records)} records were already "
            f"done and {usd(f.cost_usd)} already paid; continuing with the other {count(f.remaining_records)}."
        )
    planned = [counted(n, f"record {what}", f"records {what}") for n, what in (
        (f.skipped_records, "skipped while planning, reasons in 02"),
        (f.unchanged_records, "unchanged since the last sync")) if n]  # fmt: skip
    return (
        f"Running <b>{job}</b> in the background: {counted(f.remaining_records, 'record')} to embed in "
        f"{counted(f.batches_total, 'batch', 'batches')}"
        + (f" ({'; '.join(planned)})" if planned else "")
        + ". The notebook stays usable."
    )


def run_finished(event: JobFinished) -> str:
    """What the launcher says when this kernel's run ends."""
    job = html.escape(event.job_id)
    if event.status == "completed":
        return completed(event.figures) if event.figures else f"<b>{job}</b> completed."
    summary = summary_of(event.figures) if event.figures else ""
    if event.status == "paused":
        why = html.escape(humanize(event.message) or "paused")
        why = why if why.startswith("paused") else f"paused: {why}"
        return f"<b>{job}</b> {why}. {summary} Press <b>Resume</b> to continue."
    if event.status == "failed":
        return (
            f"<b>{job}</b> stopped: {html.escape(humanize(event.message))}. {summary} Press <b>Resume</b> to try the "
            "failed batches again, or look at them in 02_inspect_batches."
        )
    return (
        f"<b>{job}</b> was cancelled. {summary} <b>Start</b> begins a new job; vectors already paid for are reused by "
        "a job of the same model and dimensions."
    )


def completed(f: JobFigures) -> str:
    """A completed job, whether this kernel ran it or the ledger says so: what comes next, not its figures again (the
    monitor right below shows them; the same counts twice in two wordings read as two different things)."""
    skipped = (
        f" {counted(f.skipped_records, 'record')} skipped: reasons in 02_inspect_batches." if f.skipped_records else ""
    )
    return (
        f"<b>{html.escape(f.job)}</b> completed (its figures below).{skipped} <b>Start</b> again runs a re-sync: only "
        "new and changed records are embedded."
    )


def summary_of(f: JobFigures) -> str:
    skipped = f"{count(f.skipped_records)} skipped" + (" (reasons in 02)" if f.skipped_records else "")
    return (
        f"{count(f.processed_records)} of {count(f.total_records)} records — {count(f.loaded_records)} loaded, "
        f"{skipped}, {count(f.unchanged_records)} unchanged{chunked(f.total_records - f.skipped_records, f.total_chunks)}; "
        f"{usd(f.cost_usd)} spent."
    )
