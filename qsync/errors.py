"""Every error qsync raises descends from QsyncError.

Transient errors are retried (the batch goes back to the queue); permanent ones fail the batch or stop
the job. SDK and database exceptions are converted to these at the boundary of each external service,
so the runner never has to know which library raised what. Messages are what users read: they say what
happened and what to run next, and never carry an API key.
"""

from __future__ import annotations


class QsyncError(Exception):
    """Root of every qsync error."""


class TransientError(QsyncError):
    """Worth retrying later: a timeout, a 5xx, a refused connection, a rate limit.

    `maybe_billed`: the request may have reached the API and been paid for although no answer came back
    (a read timeout, a dropped connection); its spend stays unconfirmed, never forgotten."""

    def __init__(self, message: str, retry_after_s: float | None = None, *, maybe_billed: bool = False) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.maybe_billed = maybe_billed


class PermanentError(QsyncError):
    """Retrying the same call will fail the same way."""


class ConfigError(PermanentError):
    """Options, environment or an existing collection do not fit the job."""


class SourceError(PermanentError):
    """The input cannot be read at all (missing file, missing column, unknown format)."""


class MissingColumn(SourceError):
    """A column the job names (or needs, and none could be guessed) is not in the source: a usage error,
    whose message lists the columns there are."""


class StoreError(QsyncError):
    """The DuckDB checkpoint file cannot be used."""


class StoreLocked(StoreError):
    """Another process held the DuckDB file for longer than we were willing to wait."""

    def __init__(self, path: str, holder_pid: int | None, waited_s: float) -> None:
        holder = f"process {holder_pid}" if holder_pid else "another process"
        super().__init__(
            f"{path} is held by {holder} and was not released within {waited_s:.0f}s "
            f"(DuckDB allows one process at a time; if that process is stuck, stop it and retry)"
        )
        self.holder_pid = holder_pid


class SchemaTooNew(StoreError):
    """The file was written by a newer qsync."""


class JobNotFound(QsyncError):
    pass


class LeaseHeld(QsyncError):
    """A live runner owns the job."""


class LeaseLost(QsyncError):
    """Another runner took the job over; this one must stop writing at once."""


class JobNotRunnable(QsyncError):
    """The job is in a state that cannot run (cancelled, or already completed)."""


class RateLimited(TransientError):
    """The API answered 429 for a per-minute limit."""


class InvalidInput(PermanentError):
    """The API refused a request because of what it contains; one text may be to blame."""


class PauseJob(QsyncError):
    """Stop the job now, resumable later: a per-day quota, or the budget, is used up."""


class StopJob(QsyncError):
    """Stop the job now and fail it: more calls would be wasted (an invalid API key, an unknown model)."""
