"""One owner per job: a lease held in the jobs table, renewed by a heartbeat.

A lease is live while its heartbeat is fresh and, when the owner is on this host, its process exists
(so a job whose runner was SIGKILLed can be resumed at once instead of after `stale_after_s`). Taking
over a stale lease writes a new token; the old owner checks its token inside every transaction it
makes, so from that moment on it cannot write anything.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime

import duckdb

from .clock import Clock
from .errors import JobNotFound, JobNotRunnable, LeaseHeld, LeaseLost
from .store import Store, first_row, pid_alive

HOST = socket.gethostname()


@dataclass(frozen=True)
class Lease:
    job_id: str
    token: str
    pid: int
    host: str

    def verify(self, con: duckdb.DuckDBPyConnection) -> None:
        """Raise LeaseLost unless this lease still owns the job. Call inside the writing transaction."""
        row = first_row(
            con.execute("SELECT lease_token, owner_pid, owner_host FROM jobs WHERE job_id = ?", [self.job_id])
        )
        if row is None or row[0] != self.token:
            holder = f"process {row[1]} on {row[2]}" if row and row[0] else "nobody (it was released)"
            raise LeaseLost(f"job {self.job_id!r} is now owned by {holder}; this runner stopped without writing")


def lease_is_live(
    owner_pid: int | None,
    owner_host: str | None,
    heartbeat_at: datetime | None,
    now: datetime,
    stale_after_s: float,
) -> bool:
    if owner_pid is None or heartbeat_at is None:
        return False
    if owner_host == HOST and not pid_alive(owner_pid):
        return False
    return (now - heartbeat_at).total_seconds() < stale_after_s


def acquire(store: Store, job_id: str, clock: Clock, stale_after_s: float) -> tuple[Lease, bool]:
    """Take the job's lease; return it and whether a stale owner was displaced."""
    lease = Lease(job_id, uuid.uuid4().hex, os.getpid(), HOST)
    with store.transaction() as con:
        row = first_row(
            con.execute(
                "SELECT status, lease_token, owner_pid, owner_host, heartbeat_at FROM jobs WHERE job_id = ?",
                [job_id],
            )
        )
        if row is None:
            raise JobNotFound(f"no job named {job_id!r} in {store.path}")
        status, token, pid, host, heartbeat = row
        if status == "cancelled":
            raise JobNotRunnable(f"job {job_id!r} was cancelled; start a new job (cached embeddings are reused)")
        now = clock.now()
        if token is not None and lease_is_live(pid, host, heartbeat, now, stale_after_s):
            age = (now - heartbeat).total_seconds()
            raise LeaseHeld(
                f"job {job_id!r} is being run by process {pid} on {host} (heartbeat {age:.0f}s ago); "
                "watch it with `qsync status`, or stop that process first"
            )
        con.execute(
            """UPDATE jobs SET lease_token = ?, owner_pid = ?, owner_host = ?, heartbeat_at = ?,
                   status = 'running', message = NULL, started_at = coalesce(started_at, ?), updated_at = ?,
                   finished_at = NULL
               WHERE job_id = ?""",
            [lease.token, lease.pid, lease.host, now, now, now, job_id],
        )
        # Whatever the previous owner had in flight is unfinished work again. Its paid embeddings are in
        # the cache already, so redoing these batches costs no API call for them.
        con.execute(
            "UPDATE attempts SET outcome = 'abandoned', finished_at = ? WHERE job_id = ? AND outcome IS NULL",
            [now, job_id],
        )
        con.execute("UPDATE batches SET status = 'pending' WHERE job_id = ? AND status = 'running'", [job_id])
    return lease, token is not None


def renew(store: Store, lease: Lease, clock: Clock) -> bool:
    """Heartbeat. Raises LeaseLost if another runner took the job; False if cancellation was requested."""
    with store.transaction() as con:
        lease.verify(con)
        row = first_row(con.execute("SELECT cancel_requested FROM jobs WHERE job_id = ?", [lease.job_id]))
        con.execute("UPDATE jobs SET heartbeat_at = ? WHERE job_id = ?", [clock.now(), lease.job_id])
        return not (row and row[0])


def release(store: Store, lease: Lease, clock: Clock, status: str, message: str | None) -> None:
    """Give the job up, leaving it in `status` with a message that says what to do next."""
    with store.transaction() as con:
        lease.verify(con)
        now = clock.now()
        if status != "completed":
            con.execute(
                "UPDATE attempts SET outcome = 'released', finished_at = ? "
                "WHERE job_id = ? AND lease_token = ? AND outcome IS NULL",
                [now, lease.job_id, lease.token],
            )
            con.execute(
                "UPDATE batches SET status = 'pending' WHERE job_id = ? AND status = 'running'",
                [lease.job_id],
            )
        con.execute(
            """UPDATE jobs SET status = ?, message = ?, lease_token = NULL, owner_pid = NULL, owner_host = NULL,
                   updated_at = ?, finished_at = CASE WHEN ? IN ('completed', 'failed', 'cancelled') THEN ? END
               WHERE job_id = ?""",
            [status, message, now, status, now, lease.job_id],
        )
