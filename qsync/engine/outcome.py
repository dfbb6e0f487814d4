"""What becomes of one batch in a run: ended (an Outcome), or written to Qdrant and waiting to be marked done
(Upserted), which the completer turns into an Outcome."""

from __future__ import annotations

from dataclasses import dataclass, field

from qsync.ledger.batches import Completion


@dataclass
class Outcome:
    """What became of one batch in this run."""

    batch_no: int
    kind: str = "failed"  # done | failed | released | lost | halted
    records: int = 0  # loaded into Qdrant (done batches)
    skipped: int = 0  # refused by the embedder or the enrichment model (done batches)
    embedded: int = 0  # texts this batch paid for (synchronous calls)
    cache_hits: int = 0  # texts whose vector came from the cache or another batch's call
    batch_mode: int = 0  # texts whose vector this job's Batch Mode paid for (never cache hits)
    saved_tokens: int = 0
    claims: list[str] = field(default_factory=list)  # text claims of the texts it paid for (let go when it is done)
    error: str | None = None
    fatal: BaseException | None = None  # the run cannot go on (lease lost, ledger broken)
    halt: BaseException | None = None  # the job must stop (PauseJob: resumable; StopJob: failed)


@dataclass
class Upserted:
    """A batch whose points are written to Qdrant, maybe not yet durably: BatchPipeline.complete ends it."""

    done: Completion
    outcome: Outcome
    written: int  # the sink's number of the write, for Sink.durable
