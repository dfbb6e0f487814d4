"""Fresh vectors, recorded for many batches at once: the vectors a group commit's batches were answered with go into
the cache in one insert, their tokens and cost onto their batches in one update, their calls' intents closed in one
more (commit.py's `write_combined`; alone, the same three statements for one batch).

A batch's vectors are on disk (the vector file, fsynced by the group commit) and in the cache before the upsert that
uses them: a crash after this costs nothing on resume. Each answer's `Appender` puts its own vectors in the file
(its rules for a transaction tried again hold in a group too); the first of a group checks the file's end for
entries it lost, and the others need not: nothing was recorded past that end since, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qsync.embedders.protocol import Vectors
from qsync.ledger.batches import BatchWork
from qsync.ledger.cache import CacheIdentity, append_vectors, forget_beyond, forget_within, insert_vectors
from qsync.ledger.spend import close_intents
from qsync.ledger.vectorfile import VectorFile


class Appender:
    """`appender(con, end_checked=False)`: the offsets of `vectors` in the vector file, inside the lease-checked
    transaction that records them: appended on the first call, the same on later calls (a transaction tried again
    must not append them twice).

    Every call first forgets the cache rows that point past where the file ends now (read inside the transaction,
    where it holds still): a file truncated or deleted meanwhile would otherwise have them point at these vectors'
    bytes; `end_checked`: an earlier append of this transaction did. The end is read again on a retry, not kept from
    the first try: writes committed between the two point past the old end, and they are not lost vectors. On a
    retry, the bytes of the first try are kept only if the file still holds them (it may have been cut, and others'
    vectors appended there since), else appended again; and the rows the first try forgot, which its rollback
    restored, are forgotten again where they point into those bytes (they would serve these vectors for other
    texts)."""

    def __init__(self, vector_file: VectorFile, vectors: Vectors, count_lost: Callable[[int], None]) -> None:
        self.vector_file = vector_file
        self.vectors = vectors
        self.count_lost = count_lost  # told once, however often the transaction is tried
        self.offsets: list[int] = []
        self.counted = False

    def __call__(self, con: Any, end_checked: bool = False) -> list[int]:
        con.begin_now()  # from here the host serves this transaction alone, its lease checked (commit.py)
        lost = 0 if end_checked else forget_beyond(con, self.vector_file.end())
        if lost and not self.counted:
            self.count_lost(lost)
            self.counted = True
        if self.offsets and not self._still_there():
            self.offsets.clear()
        if self.offsets:
            forget_within(con, self.offsets[0], self.offsets[-1] + 4 * self.vectors.shape[1])
        elif len(self.vectors):
            self.offsets.extend(append_vectors(self.vector_file, self.vectors))
        return self.offsets

    def _still_there(self) -> bool:
        found = self.vector_file.read(self.offsets, [int(self.vectors.shape[1])] * len(self.offsets))
        held = [vector for vector in found if vector is not None]
        return len(held) == len(found) and bool(np.array_equal(np.stack(held), self.vectors))


@dataclass(frozen=True)
class FreshVectors:
    """One answer to record: its batch, its texts' hashes, their vectors' offsets (appended by `offsets(con,
    end_checked)`), their tokens, what the batch counts of it, and the state its call's intent closes in."""

    work: BatchWork
    hashes: list[str]
    offsets: Callable[[Any, bool], list[int]]
    tokens_per_text: list[int]
    tokens: int  # counted onto the batch (0 for an answer without usage: counted later)
    cost: float
    tokens_estimated: bool
    media_tokens: int
    media_tokens_estimated: bool
    intent: str | None
    intent_state: str  # "settled", or "uncounted": its bound stands until it is counted


def record_fresh(
    con: Any, job_id: str, embedder: CacheIdentity, answers: Sequence[FreshVectors], now: Any, *, ignore_existing: bool
) -> list[None]:
    """Record these answers in the caller's transaction (`ignore_existing`: keep the copy of a key another job saved
    meanwhile, cache.insert_vectors). Two answers of one batch add up on it."""
    offsets = [o for i, answer in enumerate(answers) for o in answer.offsets(con, i > 0)]
    insert_vectors(
        con, embedder, [h for a in answers for h in a.hashes], offsets, [t for a in answers for t in a.tokens_per_text],
        now, None, ignore_existing=ignore_existing,
    )  # fmt: skip
    sums: dict[int, list[Any]] = {}
    for a in answers:
        batch = sums.setdefault(a.work.batch_no, [0, 0, 0.0, False, 0, False])
        batch[0] += len(a.hashes)
        batch[1] += a.tokens
        batch[2] += a.cost
        batch[3] = batch[3] or a.tokens_estimated
        batch[4] += a.media_tokens
        batch[5] = batch[5] or (a.media_tokens_estimated and a.media_tokens > 0)
    columns = list(zip(*[[batch_no, *figures] for batch_no, figures in sums.items()], strict=True))
    con.execute(
        """UPDATE batches SET embedded_texts = embedded_texts + n.add_texts, tokens = batches.tokens + n.add_tokens,
               cost_usd = cost_usd + n.add_cost, tokens_estimated = tokens_estimated OR n.estimated,
               media_tokens = coalesce(media_tokens, 0) + n.add_media,
               media_tokens_estimated = coalesce(media_tokens_estimated, false) OR n.media_estimated
           FROM (SELECT unnest(?::INTEGER[]) AS batch_no, unnest(?::BIGINT[]) AS add_texts,
                    unnest(?::BIGINT[]) AS add_tokens, unnest(?::DOUBLE[]) AS add_cost, unnest(?::BOOLEAN[]) AS estimated,
                    unnest(?::BIGINT[]) AS add_media, unnest(?::BOOLEAN[]) AS media_estimated) n
           WHERE batches.job_id = ? AND batches.batch_no = n.batch_no""",
        [*map(list, columns), job_id],
    )
    close_intents(con, job_id, [(a.intent, a.intent_state) for a in answers if a.intent is not None], now)
    return [None] * len(answers)
