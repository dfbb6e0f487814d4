"""Every error qsync raises descends from QsyncError.

Transient errors are retried (per call, by the run's one retry layer); permanent ones fail the batch or stop
the job. SDK, DuckDB and Qdrant exceptions are converted to these at the boundary of each external service,
so the runner never has to know which library raised what, and no raw library exception reaches the CLI or
a widget. Messages are what users read: they say what happened and what to run next, and never carry a
secret.
"""

from __future__ import annotations


class QsyncError(Exception):
    """Root of every qsync error. `maybe_billed`: see TransientError (`billed` sets it on any error)."""

    maybe_billed = False


# -- calls to outside services ----------------------------------------------------------------------------


class TransientError(QsyncError):
    """Worth retrying later: a timeout, a 5xx, a refused connection, a rate limit.

    `maybe_billed`: the request may have reached the API and been paid for although no answer came back
    (a read timeout, a dropped connection); its spend stays unconfirmed, never forgotten."""

    def __init__(self, message: str, retry_after_s: float | None = None, *, maybe_billed: bool = False) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.maybe_billed = maybe_billed


def billed(exc: QsyncError) -> QsyncError:
    """`exc`, raised about a call the API answered (so billed): its spend stays unconfirmed, never forgotten."""
    exc.maybe_billed = True
    return exc


class RateLimited(TransientError):
    """The API answered 429 for a per-minute limit."""


class PermanentError(QsyncError):
    """Retrying the same call will fail the same way."""


class InvalidInput(PermanentError):
    """The API refused a request because of what it contains; one text may be to blame."""


class PauseJob(QsyncError):
    """Stop the job now, resumable later: a per-day quota, or the budget, is used up."""


class StopJob(QsyncError):
    """Stop the job now and fail it: more calls would be wasted (an invalid API key, an unknown model)."""


class Interrupted(QsyncError):
    """A wait was cut short because the run is stopping (Pause, Stop, Ctrl-C, cancel)."""


# -- what the user asked for ------------------------------------------------------------------------------


class ConfigError(PermanentError):
    """Options, environment or an existing collection do not fit the job."""


class SpecMismatch(ConfigError):
    """The job of that name is unfinished and was started with a different spec."""

    def __init__(self, job_id: str, status: str, differences: list[str], *, reuse_note: str) -> None:
        self.job_id = job_id
        self.status = status
        self.differences = differences
        self.reuse_note = reuse_note
        listed = "\n".join(f"  - {d}" for d in differences)
        super().__init__(
            f"job {job_id!r} is unfinished ({status}) and was started with a different spec:\n{listed}\n"
            f"Either resume it as stored (`qsync resume {job_id}`), or cancel it (`qsync cancel {job_id}`) and run "
            f"again to start afresh; {reuse_note}"
        )


class JobExists(ConfigError):
    """A job of that name was planned already (perhaps a moment ago, by another process)."""


class SourceError(PermanentError):
    """The input cannot be read at all (missing file, missing column, unknown format)."""


class MissingColumn(SourceError):
    """A column the job names (or needs, and none could be guessed) is not in the source: a usage error,
    whose message lists the columns there are."""


class MediaProblem(PermanentError):
    """Why one record's image or document cannot be embedded: its skip reason (the job goes on)."""


# -- the ledger (the checkpoint file) ---------------------------------------------------------------------


class LedgerError(QsyncError):
    """The checkpoint file (DuckDB) or its vector file cannot be used."""


class LedgerLocked(LedgerError):
    """Another process held the checkpoint file for longer than we were willing to wait."""

    def __init__(self, path: str, holder_pid: int | None, waited_s: float) -> None:
        holder = f"process {holder_pid}" if holder_pid else "another process"
        super().__init__(
            f"{path} is held by {holder} and was not released within {waited_s:.0f}s "
            f"(DuckDB allows one process at a time; if that process is stuck, stop it and retry)"
        )
        self.holder_pid = holder_pid


class SchemaTooNew(LedgerError):
    """The file was written by a newer qsync."""


class LedgerCorrupted(LedgerError):
    """DuckDB found damaged blocks in the checkpoint file (its checksums do not match)."""


class DiskFull(LedgerError):
    """A file of the job (checkpoint, vectors or Qdrant shard) cannot grow: the disk is full or read-only."""


class JobNotFound(QsyncError):
    """No job of that name in the checkpoint file."""


class LeaseHeld(QsyncError):
    """A live runner owns the job."""


class LeaseLost(QsyncError):
    """Another runner took the job over; this one must stop writing at once."""


class JobNotRunnable(QsyncError):
    """The job is in a state that cannot run (cancelled, or already completed)."""


class NotClaimable(QsyncError):
    """A batch is not pending or failed any more (another attempt took it, or it is done)."""
