"""One batch, from claim to done: claim -> stages -> vectors -> upsert -> complete.

Order matters and is the whole point:
1. claim the batch (a new attempt) and load its records from the manifest;
2. run the batch stages (enrichment may change the texts to embed);
3. vectors (vectors.py): take what the cache holds; wait for texts another batch is embedding right now; embed
   the rest call by call, persisting each call's vectors and cost at once (never pay twice);
4. write the points to Qdrant;
5. `complete`: once the points are durable, mark the batch done (nothing lost). The scheduler's completer calls
   it for many batches at once: one Qdrant Edge flush and one transaction cover them all.
A SIGKILL at any point leaves the batch either done or unfinished with its paid vectors cached.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from qsync.engine.control import Control
from qsync.engine.outcome import Outcome, Upserted
from qsync.engine.retry import Retrier
from qsync.engine.stage import Stage
from qsync.engine.vectors import BatchVectors
from qsync.errors import (
    Interrupted,
    LeaseLost,
    LedgerError,
    NotClaimable,
    PauseJob,
    PermanentError,
    StopJob,
    TransientError,
)
from qsync.ledger.batches import BatchWork, Completion, load_payload
from qsync.ledger.run import LeasedJob
from qsync.sink.protocol import Sink

log = logging.getLogger("qsync")


class BatchPipeline:
    def __init__(
        self,
        job: LeasedJob,
        vectors: BatchVectors,
        sink: Sink,
        retrier: Retrier,
        control: Control,
        stages: Sequence[Stage] = (),
    ) -> None:
        self.job = job
        self.vectors = vectors
        self.sink = sink
        self.retrier = retrier
        self.control = control
        self.stages = list(stages)

    def process(self, batch_no: int) -> Outcome | Upserted:
        """Run one batch up to its points written to Qdrant (Upserted: `complete` marks it done), or to its end (an
        Outcome: failed, released, lost, halted)."""
        started = time.monotonic()
        try:
            work = self.job.claim(batch_no)
        except NotClaimable:  # done (or taken) since the run listed it: nothing to do
            return Outcome(batch_no, "released")
        except (LeaseLost, LedgerError) as exc:
            return Outcome(batch_no, "lost", fatal=exc)
        outcome = Outcome(batch_no)
        try:
            self.control.check()
            refused: dict[str, str] = {}
            for stage in self.stages:
                refused.update(stage.apply(work))
            vectors, rejected = self.vectors.for_batch(work, outcome, refused)
            self.control.check()  # paid vectors are cached: stopping here loses nothing
            keep = [i for i, h in enumerate(work.hashes) if h not in rejected]
            written = 0
            if keep:
                keys = work.point_keys
                ids = [keys[i] for i in keep]
                payloads = [load_payload(work.payloads[i]) for i in keep]
                written = self.retrier.call(lambda: self.sink.write(ids, vectors[keep], payloads))
            skips = {i: _chunk_reason(work, i, rejected[h]) for i, h in enumerate(work.hashes) if h in rejected}
            outcome.skipped = work.records_among(skips)
            outcome.records = work.records_among(range(len(work.hashes))) - outcome.skipped
            took = time.monotonic() - started
            done = Completion(work, outcome.cache_hits, outcome.saved_tokens, took, skips, outcome.claims)
            return Upserted(done, outcome, written)
        except Exception as exc:
            return self._ended(work, outcome, exc)

    def complete(self, group: Sequence[Upserted]) -> list[Outcome]:
        """Mark batches done once Qdrant holds their points durably: one flush (Qdrant Edge) and one transaction
        for the whole group. On an error no batch of the group is done."""
        try:
            # Not through the retrier: a Pause must not interrupt finishing work that is done. A failed flush
            # fails the group's batches; their vectors are cached, so trying them again costs no API call.
            self.sink.durable(max(u.written for u in group))
            self.job.complete([u.done for u in group])
        except Exception as exc:
            return [self._ended(u.done.work, u.outcome, exc) for u in group]
        for u in group:
            u.outcome.kind = "done"
        return [u.outcome for u in group]

    def _ended(self, work: BatchWork, outcome: Outcome, exc: Exception) -> Outcome:
        """What an error means for the batch: the run cannot go on (lost), the batch goes back to pending (a stop,
        a pause), or it failed and says why."""
        if isinstance(exc, (LeaseLost, LedgerError)):
            return Outcome(work.batch_no, "lost", fatal=exc)
        if isinstance(exc, Interrupted):
            return self._release(work, Outcome(work.batch_no, "released"), outcome.claims)
        if isinstance(exc, (PauseJob, StopJob)):
            # The job must stop: this batch is not at fault, so it goes back to pending untouched.
            return self._release(work, Outcome(work.batch_no, "halted", error=str(exc), halt=exc), outcome.claims)
        if isinstance(exc, (TransientError, PermanentError)):
            outcome.error = str(exc)
        else:  # a bug or an unconverted library error: fail this batch, keep the job going
            outcome.error = f"{type(exc).__name__}: {exc}"
            log.error("qsync batch %s failed unexpectedly", work.batch_no, exc_info=exc)
        outcome.kind = "failed"
        try:
            self.job.fail(work, outcome.error, outcome.claims)
        except (LeaseLost, LedgerError) as lost:
            return Outcome(work.batch_no, "lost", fatal=lost)
        return outcome

    def _release(self, work: BatchWork, outcome: Outcome, held: Sequence[str]) -> Outcome:
        try:
            self.job.release(work, held)
        except (LeaseLost, LedgerError) as exc:
            return Outcome(work.batch_no, "lost", fatal=exc)
        return outcome


def _chunk_reason(work: BatchWork, i: int, reason: str) -> str:
    """Why a text was refused, naming its chunk when its record was cut into several."""
    count = work.chunk_counts[i]
    return f"chunk {work.chunk_nos[i] + 1} of {count}: {reason}" if count > 1 else reason
