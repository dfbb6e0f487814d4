"""Group commit: the writes of one run's workers, each lease-checked, committed together.

While one worker's transaction runs, the writes other workers ask for queue up and then commit together in the
next transaction: one lease check, one fsync of the vector file for all the vectors the group appended, one
commit. Each caller returns only once its own write is committed, so the order a batch's writes are made in holds
batch by batch. A write whose group fails is committed again on its own, so that only the failing caller sees its
error.

Writes of one kind may be made together (`write_combined`): the group's writes of that kind become one call over all
their arguments, a few statements for the whole group instead of a few for each (claiming the texts of sixteen
batches: three statements, not forty-eight). Each caller has at most one write in a group (it waits for it), and the
writes of a group commit together, so their order within the group is free: combining them changes no outcome.

The lease check comes first in every transaction, and the vectors a write appends are appended inside it: a
runner that lost its lease writes nothing, not even bytes to the vector file. The check waits for no answer
(`Lease.check_held`: the host fails the transaction), so a group of writes that need no answer is one round trip
to the host; a write that appends vectors first has the transaction begun and checked (`LeasedJob.appender`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

from qsync.clock import Clock
from qsync.disk import LEDGER_MARGIN, ensure_room
from qsync.ledger.lease import Lease
from qsync.ledger.ledger import Ledger

T = TypeVar("T")
A = TypeVar("A")


@dataclass
class _Write:
    """One caller's part of a group commit."""

    apply: Callable[[Any], Any]  # runs inside the shared transaction
    kind: Hashable = None  # writes of one kind (not None) in a group are made by one call of `many` (write_combined)
    many: Callable[[Any, list[Any]], list[Any]] | None = None
    arg: Any = None
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
        return self._enqueue(_Write(apply))  # type: ignore[no-any-return]

    def write_combined(self, kind: Hashable, many: Callable[[Any, list[A]], list[T]], arg: A) -> T:
        """`many(con, [arg, ...])` for this write and every other write of `kind` in its group, in one go (it returns
        one result per argument, in their order); this write's result once committed. Alone, `many(con, [arg])`."""
        return self._enqueue(_Write(lambda con: many(con, [arg])[0], kind, many, arg))  # type: ignore[no-any-return]

    def _enqueue(self, write: _Write) -> Any:
        with self._queue_lock:
            self._queued.append(write)
        with self._committer:
            if not write.committed:  # else the previous group took it along
                with self._queue_lock:
                    group, self._queued = self._queued, []
                self._commit(group)
        if write.error is not None:
            raise write.error
        return write.result

    def _commit(self, group: list[_Write]) -> None:
        try:
            # A commit (and the checkpoint it may start) on a full disk leaves DuckDB unusable: stop before.
            ensure_room(self.ledger.path, LEDGER_MARGIN, "the checkpoint file")
            with self.ledger.transaction() as con:
                self.lease.check_held(con)
                results = _apply(con, group)
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


def _apply(con: Any, group: list[_Write]) -> list[Any]:
    """Each write's result, in the group's order; writes of one kind made together where the first of them stands."""
    results: list[Any] = [None] * len(group)
    kinds: dict[Hashable, list[int]] = {}
    for index, write in enumerate(group):
        if write.kind is not None:
            kinds.setdefault(write.kind, []).append(index)
    done: set[Hashable] = set()
    for index, write in enumerate(group):
        if write.kind is None or len(kinds[write.kind]) == 1:
            results[index] = write.apply(con)
        elif write.kind not in done and write.many is not None:
            done.add(write.kind)
            indexes = kinds[write.kind]
            many = write.many(con, [group[i].arg for i in indexes])
            for i, result in zip(indexes, many, strict=True):
                results[i] = result
    return results
