"""One owner per job: a lease held in the jobs table, renewed by a heartbeat.

A lease is live while its heartbeat is fresh and, when the owner is on this host, its process exists
(so a job whose runner was SIGKILLed can be resumed at once instead of after `stale_after_s`). Taking
over a stale lease writes a new token; the old owner checks its token inside every transaction it
makes, so from that moment on it cannot write anything. The writes themselves are in checkpoint.py.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType

import duckdb

from .errors import LeaseLost, StoreError
from .store import first_row, pid_alive

HOST = socket.gethostname()
log = logging.getLogger("qsync")


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
            self._lost(row)

    def verify_and_touch(self, con: duckdb.DuckDBPyConnection, now: datetime) -> None:
        """verify, and move the job's updated_at, in one statement (a run's every write starts with it)."""
        row = first_row(
            con.execute(
                "UPDATE jobs SET updated_at = ? WHERE job_id = ? AND lease_token = ? RETURNING job_id",
                [now, self.job_id, self.token],
            )
        )
        if row is None:
            self._lost(first_row(con.execute("SELECT lease_token, owner_pid, owner_host FROM jobs WHERE job_id = ?",
                                             [self.job_id])))  # fmt: skip

    def _lost(self, row: tuple[object, ...] | None) -> None:
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


class Heartbeat:
    """While the `with` block runs, renew the lease every `interval_s` on a thread of its own.

    `renew` returns False when a cancel was requested (then `on_cancel` is called) and raises LeaseLost
    when another runner took the job (kept in `lost`, and `on_lost` is called)."""

    def __init__(
        self,
        renew: Callable[[], bool],
        interval_s: float,
        on_cancel: Callable[[], None],
        on_lost: Callable[[], None],
    ) -> None:
        self._renew = renew
        self.interval_s = interval_s
        self._on_cancel = on_cancel
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="qsync-heartbeat", daemon=True)
        self.lost: LeaseLost | None = None

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if not self._renew():
                    self._on_cancel()
            except LeaseLost as exc:
                self.lost = exc
                self._on_lost()
                return
            except StoreError as exc:  # the file is busy or the disk is full: the next beat may succeed
                log.warning("qsync heartbeat failed: %s", exc)
