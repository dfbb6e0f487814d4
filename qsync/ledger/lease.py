"""One owner per job: a lease held in the jobs table, renewed by a heartbeat.

A lease is live while its heartbeat is fresh (younger than the `stale_after_s` its holder stored with it) and,
when the owner is on this host, its process exists (so a job whose runner was SIGKILLed can be resumed at once).
Taking over a stale lease writes a new token; the old owner checks its token inside every transaction it makes,
so from that moment on it cannot write anything.

Nothing is written before the lease is held: a run refused because another runner owns the job changes nothing,
not even the budget it was given (it is written with the lease, in the same transaction).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from qsync.clock import Clock
from qsync.errors import JobNotFound, JobNotRunnable, LeaseHeld, LeaseLost
from qsync.ledger import claims
from qsync.ledger.ledger import Ledger
from qsync.ledger.process import HOST, lease_is_live
from qsync.ledger.states import JobState
from qsync.spec.job import KEEP, BudgetOption
from qsync.sql import SqlConnection, first_row

LEASE_LOST = "qsync: this run's lease on the job is lost"  # the error a write of a run that lost its job fails with


@dataclass(frozen=True)
class Lease:
    job_id: str
    token: str
    pid: int
    host: str

    def verify(self, con: SqlConnection) -> None:
        """Raise LeaseLost unless this lease still owns the job. Call inside the writing transaction."""
        row = first_row(
            con.execute("SELECT lease_token, owner_pid, owner_host FROM jobs WHERE job_id = ?", [self.job_id])
        )
        if row is None or row[0] != self.token:
            self._lost(row)

    def check_held(self, con: SqlConnection) -> None:
        """Make the transaction fail (with LEASE_LOST in its error) unless this lease still owns the job (a job row
        is never deleted): a run's every write starts with it. Nothing here waits for an answer, so a transaction of
        writes only stays one round trip to the host; GroupCommit turns the failure into LeaseLost (`lost_in`).
        A read, not a write: the host serves one transaction at a time, so nobody takes the lease between this check
        and the commit, and a read costs the host a fifth of an UPDATE of the job's row (0.3 against 1.8 ms, in
        every transaction of a run); the heartbeat moves the job's updated_at."""
        con.execute(
            "SELECT CASE WHEN lease_token = ? THEN true ELSE error(?) END FROM jobs WHERE job_id = ?",
            [self.token, LEASE_LOST, self.job_id],
        )

    def lost_in(self, exc: BaseException, ledger: Ledger) -> LeaseLost | None:
        """The LeaseLost a failed transaction meant (naming the new holder), if `check_held` failed it."""
        if LEASE_LOST not in str(exc):
            return None
        try:
            with ledger.reading() as con:
                self.verify(con)
        except LeaseLost as lost:
            return lost
        return LeaseLost(f"job {self.job_id!r} was taken by another runner; this runner stopped without writing")

    def _lost(self, row: tuple[object, ...] | None) -> None:
        holder = f"process {row[1]} on {row[2]}" if row and row[0] else "nobody (it was released)"
        raise LeaseLost(f"job {self.job_id!r} is now owned by {holder}; this runner stopped without writing")


def take_lease(
    ledger: Ledger,
    job_id: str,
    clock: Clock,
    stale_after_s: float,
    pid: int,
    budget: BudgetOption = KEEP,
) -> tuple[Lease, bool]:
    """Take the job's lease (job -> running), writing a new budget with it if one is given; return the lease and
    whether a stale owner was displaced. LeaseHeld (nothing written) while a live runner owns the job."""
    lease = Lease(job_id, uuid.uuid4().hex, pid, HOST)
    with ledger.transaction() as con:
        row = first_row(
            con.execute(
                "SELECT status, lease_token, owner_pid, owner_host, heartbeat_at, coalesce(stale_after_s, ?) "
                "FROM jobs WHERE job_id = ?",
                [stale_after_s, job_id],
            )
        )
        if row is None:
            raise JobNotFound(f"no job named {job_id!r} in {ledger.path}")
        status, token, owner_pid, owner_host, heartbeat, owner_stale_after = row
        if status == JobState.CANCELLED:
            raise JobNotRunnable(f"job {job_id!r} was cancelled; start a new job (cached embeddings are reused)")
        now = clock.now()
        if token is not None and lease_is_live(owner_pid, owner_host, heartbeat, now, float(owner_stale_after)):
            age = (now - heartbeat).total_seconds()
            raise LeaseHeld(
                f"job {job_id!r} is being run by process {owner_pid} on {owner_host} (heartbeat {age:.0f}s ago); "
                "watch it with `qsync status`, or stop that process first"
            )
        con.execute(
            """UPDATE jobs SET lease_token = ?, owner_pid = ?, owner_host = ?, heartbeat_at = ?, stale_after_s = ?,
                   status = 'running', message = NULL, started_at = coalesce(started_at, ?), updated_at = ?,
                   finished_at = NULL
               WHERE job_id = ?""",
            [lease.token, lease.pid, lease.host, now, stale_after_s, now, now, job_id],
        )
        if budget is not KEEP:
            con.execute("UPDATE jobs SET max_cost_usd = ? WHERE job_id = ?", [budget, job_id])
        # Whatever the previous owner had in flight is unfinished work again. Its paid embeddings are in the
        # cache already, so redoing these batches costs no API call for them.
        con.execute(
            "UPDATE attempts SET outcome = 'abandoned', finished_at = ? WHERE job_id = ? AND outcome IS NULL",
            [now, job_id],
        )
        con.execute("UPDATE batches SET status = 'pending' WHERE job_id = ? AND status = 'running'", [job_id])
        claims.release_job(con, job_id)  # the texts the previous owner was paying for are free to claim
        # Calls the previous owner had on the wire may have been billed: their spend stays, unconfirmed.
        con.execute(
            "UPDATE spend_intents SET state = 'unconfirmed', closed_at = ? WHERE job_id = ? AND state = 'open'",
            [now, job_id],
        )
    return lease, token is not None


def renew_lease(ledger: Ledger, lease: Lease, clock: Clock) -> bool:
    """Heartbeat. Raises LeaseLost if another runner took the job; False if cancellation was requested. It does
    not keep an idle connection open: a runner frozen between calls lets go of the file."""
    with ledger.transaction(keeps_open=False) as con:
        lease.verify(con)
        row = first_row(con.execute("SELECT cancel_requested FROM jobs WHERE job_id = ?", [lease.job_id]))
        now = clock.now()
        con.execute("UPDATE jobs SET heartbeat_at = ?, updated_at = ? WHERE job_id = ?", [now, now, lease.job_id])
        return not (row and row[0])


def release_lease(ledger: Ledger, lease: Lease, clock: Clock, state: JobState, message: str | None) -> None:
    """Give the job up, leaving it in `state` with a message that says what happened."""
    with ledger.transaction() as con:
        lease.verify(con)
        now = clock.now()
        if state != JobState.COMPLETED:
            con.execute(
                "UPDATE attempts SET outcome = 'released', finished_at = ? "
                "WHERE job_id = ? AND lease_token = ? AND outcome IS NULL",
                [now, lease.job_id, lease.token],
            )
            con.execute("UPDATE batches SET status = 'pending' WHERE job_id = ? AND status = 'running'", [lease.job_id])
        claims.release_job(con, lease.job_id)  # whatever this run had not saved, nobody waits for any more
        con.execute(
            """UPDATE jobs SET status = ?, message = ?, lease_token = NULL, owner_pid = NULL, owner_host = NULL,
                   updated_at = ?, finished_at = CASE WHEN ? IN ('completed', 'failed', 'cancelled') THEN ? END
               WHERE job_id = ?""",
            [state.value, message, now, state.value, now, lease.job_id],
        )
