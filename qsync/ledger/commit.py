"""Group commit: the writes of one run's workers, each lease-checked, committed together.

While one worker's transaction runs, the writes other workers ask for queue up and then commit together in the
next transaction: one lease check, one fsync of the vector file for all the vectors the group appended, one
commit. Each caller returns only once its own write is committed, so the order a batch's writes are made in holds
batch by batch. A write whose group fails is committed again on its own, so that only the failing caller sees its
error.

The lease check comes first in every transaction, and the vectors a write appends are appended inside it: a
runner that lost its lease writes nothing, not even bytes to the vector file. The check waits for no answer
(`Lease.check_held`: the host fails the transaction), so a group of writes that need no answer is one round trip
to the host; a write that appends vectors first has the transaction begun and checked (`LeasedJob.appender`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from qsync.clock import Clock
from qsync.disk import LEDGER_MARGIN, ensure_room
from qsync.ledger.lease import Lease
from qsync.ledger.ledger import Ledger

T = TypeVar("T")


@dataclass
class _Write:
    """One caller's part of a group commit."""

    apply: Callable[[Any], Any]  # runs inside the shared transaction
    committed: bool = False  # read and set only under the committer lock
    result: Any = None
    error: BaseException | None = None


class GroupCommit:
    def __init__(self, ledger: Ledger, lease: Lease, clock: Clock) -> None:
        self.ledger = ledger
        self.lease = lease
        self.clock = clock
        self._queued: list[_Write] = []
        self._queue_lock = threading.Lock()
        self._committer = threading.Lock()  # held by the thread committing the current group

    @property
    def queued(self) -> int:
        """Writes waiting for the transaction in progress to end (they will commit together)."""
        with self._queue_lock:
            return len(self._queued)

    def write(self, apply: Callable[[Any], T]) -> T:
        """Run `apply(con)` in a lease-checked transaction; return its result once committed."""
        write = _Write(apply)
        with self._queue_lock:
            self._queued.append(write)
        with self._committer:
            if not write.committed:  # else the previous group took it along
                with self._queue_lock:
                    group, self._queued = self._queued, []
                self._commit(group)
        if write.error is not None:
            raise write.error
        return write.result  # type: ignore[no-any-return]

    def _commit(self, group: list[_Write]) -> None:
        try:
            # A commit (and the checkpoint it may start) on a full disk leaves DuckDB unusable: stop before.
            ensure_room(self.ledger.path, LEDGER_MARGIN, "the checkpoint file")
            with self.ledger.transaction() as con:
                self.lease.check_held(con)
                results = [write.apply(con) for write in group]
                self.ledger.vectors.sync()  # the rows about to commit point at bytes that are on disk
        except BaseException as exc:
            lost = self.lease.lost_in(exc, self.ledger)
            if lost is not None:  # every write of the group fails alike: no point in trying each alone
                for write in group:
                    write.error, write.committed = lost, True
                return
            if len(group) > 1:  # one write failed and took the others down: commit each on its own
                for write in group:
                    self._commit([write])
                return
            group[0].error = exc
            group[0].committed = True
            return
        for write, result in zip(group, results, strict=True):
            write.result = result
            write.committed = True
