"""What the Python API reads of jobs: each function opens the checkpoint file (never creating one), reads
through the ledger's queries, and closes it. The CLI and the widgets read through these too, so a job shows
the same numbers everywhere."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pandas as pd

from qsync.clock import SYSTEM_CLOCK, Clock
from qsync.ledger import costs as ledger_costs
from qsync.ledger import queries
from qsync.ledger.figures import JobFigures, job_figures, read_figures
from qsync.ledger.jobs import JobRecord, job_record
from qsync.ledger.ledger import Ledger
from qsync.money import costs, recorded
from qsync.ops import search as search_ops
from qsync.ops import verify as verify_ops

PathLike = str | os.PathLike[str]


def _open(db: PathLike | None) -> Ledger:
    return Ledger(db, create=False)


def jobs(*, db: PathLike | None = None, clock: Clock = SYSTEM_CLOCK) -> pd.DataFrame:
    """Every job in the checkpoint file, newest first, with live progress and a truthful status."""
    with _open(db) as ledger:
        return read_figures(ledger, clock)


def status(job: str | None = None, *, db: PathLike | None = None, clock: Clock = SYSTEM_CLOCK) -> dict[str, Any]:
    """One job's status (the newest job when none is named) as a plain dict."""
    with _open(db) as ledger:
        frame = read_figures(ledger, clock, job, newest=job is None)
    record = {str(k): v for k, v in frame.iloc[0].to_dict().items()}
    owner = f"pid {record['owner_pid']} on {record['owner_host']}" if record["leased"] else None
    if owner and record["status"] == "stale":  # the lease names a run that is not working the job
        owner += " (stopped, or silent too long: the next run takes the job over)"
    hidden = ("owner_pid", "owner_host", "leased", "stale_after_s")
    result = {k: _plain(v) for k, v in record.items() if k not in hidden}
    result["owner"] = owner
    return result


def figures(job: str, *, db: PathLike | None = None, clock: Clock = SYSTEM_CLOCK) -> JobFigures:
    """One job's figures, typed (what the widgets show)."""
    with _open(db) as ledger:
        return job_figures(ledger, clock, job)


def stored_job(job: str, *, db: PathLike | None = None) -> JobRecord:
    """A job as stored: its spec, status and budget."""
    with _open(db) as ledger:
        return job_record(ledger, job)


def batches(job: str, *, status: str | None = None, db: PathLike | None = None) -> pd.DataFrame:
    """The job's batches with attempts, last error, records, tokens and cost. `media_tokens` is the image and
    PDF-page part of `tokens`; `media_tokens_estimated` says qsync split it by its own estimates (the SDK drops
    the API's per-modality counts) rather than the API reporting it."""
    with _open(db) as ledger:
        return queries.batches(ledger, job, status)


def skipped(job: str, *, db: PathLike | None = None) -> pd.DataFrame:
    """Records that were not loaded, each with the reason."""
    with _open(db) as ledger:
        return queries.skipped(ledger, job)


def batch_records(job: str, batch_no: int, *, db: PathLike | None = None) -> pd.DataFrame:
    """The records of one batch, as planned."""
    with _open(db) as ledger:
        return queries.batch_records(ledger, job, batch_no)


def chunks(job: str, *, db: PathLike | None = None) -> pd.DataFrame:
    """A row per text the job planned: whole records, and each chunk of a long one (ledger.queries.chunks)."""
    with _open(db) as ledger:
        return queries.chunks(ledger, job)


def cost(job: str, *, db: PathLike | None = None, clock: Clock = SYSTEM_CLOCK) -> pd.DataFrame:
    """One row: tokens and dollars spent (the same figures as `status`), and what the cache and resumes saved."""
    with _open(db) as ledger:
        return costs.cost_frame(ledger, job, clock)


def cost_over_time(job: str, *, db: PathLike | None = None) -> pd.DataFrame:
    """Cumulative records, tokens and dollars as batches finished."""
    with _open(db) as ledger:
        return ledger_costs.spend_over_time(ledger, job)


def tokens_by_modality(job: str, *, db: PathLike | None = None) -> pd.DataFrame:
    """The job's embedding tokens and dollars, text and media (images, PDF pages) apart, as each is priced."""
    with _open(db) as ledger:
        return costs.modality_frame(ledger, job)


def recorded_estimate(job: str, *, db: PathLike | None = None) -> dict[str, Any] | None:
    """The estimate stored when the job was planned, or None."""
    with _open(db) as ledger:
        return ledger_costs.recorded_estimate(ledger, job)


def estimate_vs_actual(job: str, *, db: PathLike | None = None) -> pd.DataFrame:
    """Tokens, dollars and minutes: the plan-time estimate, the actual, and the error in % of the actual."""
    with _open(db) as ledger:
        return recorded.estimate_vs_actual(ledger, job)


def search(job: str, text: str, limit: int = 10, *, chunks: bool = False, db: PathLike | None = None) -> pd.DataFrame:
    """The `limit` records of the job's collection nearest to `text`, best first; a record cut into chunks is scored
    by its best chunk, shown as its passage (`chunks=True`: a row per chunk) (qsync.ops.search)."""
    with _open(db) as ledger:
        return search_ops.search(ledger, job, text, limit, chunks=chunks)


def verify(job: str, *, db: PathLike | None = None, repair: bool = False) -> verify_ops.VerifyReport:
    """Compare the job's collection with the ledger; `repair` re-upserts what is missing from the cache."""
    with _open(db) as ledger:
        return verify_ops.verify(ledger, job, repair=repair)


def _plain(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NaT:
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


@dataclass(frozen=True)
class PlannedSize:
    """What a job planned to embed: records, distinct contents, tokens (estimated, media included), the media
    part, and each distinct content's text tokens."""

    records: int
    texts: int
    tokens: int
    media_tokens: int
    text_tokens: list[int]


def planned_size(job: str, *, db: PathLike | None = None) -> PlannedSize:
    with _open(db) as ledger:
        records, texts, tokens, media = queries.manifest_size(ledger, job)
        return PlannedSize(records, texts, tokens, media, queries.text_token_estimates(ledger, job))
