"""A run's batches' records, read from the manifest many batches at a time: one query instead of one a batch."""

from __future__ import annotations

import threading
from typing import TypeGuard

from qsync.ledger import batches as b
from qsync.ledger.batches import CLAIMABLE, MANIFEST_READ_AHEAD
from qsync.ledger.ledger import Ledger

Entry = tuple[b.Records, tuple[int, str]]  # a batch's records, and its (attempts, status) as read with them


class ManifestReadAhead:
    def __init__(self, ledger: Ledger, job_id: str) -> None:
        self.ledger = ledger
        self.job_id = job_id
        self._held: dict[int, Entry] = {}
        self._lock = threading.Lock()
        self._reading = threading.Lock()  # one read at a time (see take)

    @property
    def held(self) -> int:
        """Batches read ahead and not yet taken (at most MANIFEST_READ_AHEAD - 1)."""
        with self._lock:
            return len(self._held)

    def take(self, batch_no: int) -> tuple[b.Records, tuple[int, str] | None]:
        """The batch's records and state, read MANIFEST_READ_AHEAD batches at a time. One read at a time: the workers
        a run starts together ask for batches 0, 1, 2… at once, and each would otherwise miss and read its own range
        (24 reads of ~10 ms each, one after another on the checkpoint's host, before the first call of a run at
        concurrency 16), where one read serves them all. A state read ahead that is no longer claimable (the batch
        ran since, in this run) is read again: it may be claimable once more (failed)."""
        found = self._pop(batch_no)
        if _claimable(found):
            return found
        with self._reading:
            found = self._pop(batch_no)  # read by the worker this one waited for
            if _claimable(found):
                return found
            with self.ledger.reading() as con:
                by_batch = b.read_manifest(con, self.job_id, batch_no, batch_no + MANIFEST_READ_AHEAD - 1)
            records, state = by_batch.pop(batch_no, ([], None))
            with self._lock:
                # Replace, not add: batches of an earlier read that were never taken (done ones inside a retry's
                # range, say) would otherwise pile up; this keeps at most one read's worth in memory.
                self._held = by_batch
        return records, state

    def _pop(self, batch_no: int) -> Entry | None:
        with self._lock:
            return self._held.pop(batch_no, None)


def _claimable(found: Entry | None) -> TypeGuard[Entry]:
    return found is not None and found[1][1] in CLAIMABLE
