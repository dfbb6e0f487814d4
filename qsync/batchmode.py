"""Gemini Batch Mode for very large backfills: half the price, answered within hours instead of seconds.

Batch Mode fills the embedding cache before the ordinary run: texts that no cache entry covers are
submitted as Batch Mode jobs, each recorded in `remote_jobs` right after the submit returns; those jobs
are polled (after a restart too: the names are in the ledger) and their vectors, tokens and cost, at the
Batch Mode price, are stored when they succeed. The runner then upserts every batch from the cache,
making no synchronous embedding call for those texts.
"""

from __future__ import annotations

import logging
import uuid
from functools import partial
from typing import Any

from .budget import Budget
from .cache import cache_key
from .checkpoint import Checkpoint
from .control import Control
from .embedders.gemini import estimate_tokens
from .errors import PermanentError, TransientError
from .retry import Retrier

log = logging.getLogger("qsync")


class BatchModeStage:
    """The job stage that fills the cache with half-price vectors before the batches run."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        embedder: Any,  # GeminiEmbedder: submit_batch, poll_batch, count_tokens_many
        budget: Budget,
        retrier: Retrier,
        control: Control,
        texts_per_job: int = 5000,
        poll_s: float = 30.0,
    ) -> None:
        self.checkpoint = checkpoint
        self.store = checkpoint.store
        self.job_id = checkpoint.job_id
        self.embedder = embedder
        self.price = float(getattr(embedder, "batch_price_per_million_tokens", embedder.price_per_million_tokens))
        self.budget = budget
        self.retrier = retrier
        self.control = control
        self.texts_per_job = texts_per_job
        self.poll_s = poll_s

    def before_run(self) -> None:
        """Submit what is missing, then poll until every remote job has been ingested (or the run stops)."""
        self._submit_missing()
        while not self.control.stopping:
            pending = self._pending()
            if not pending:
                return
            for name in pending:
                self._poll(name)
            if self._pending() and not self.control.pause_for(self.poll_s):
                return

    def _pending(self) -> list[str]:
        rows = self.store.query_rows(
            "SELECT name FROM remote_jobs WHERE job_id = ? AND state = 'submitted' ORDER BY submitted_at",
            [self.job_id],
        )
        return [r[0] for r in rows]

    def _submit_missing(self) -> None:
        """Submit the texts of unfinished batches that neither the cache nor a submitted job covers."""
        origin_free = self.store.query_df(
            """
            WITH covered AS (
                SELECT DISTINCT unnest(content_hashes) AS content_hash FROM remote_jobs
                WHERE job_id = ? AND state = 'submitted'
            )
            SELECT m.content_hash, any_value(m.text) AS text
            FROM manifest m JOIN batches b ON b.job_id = m.job_id AND b.batch_no = m.batch_no
            WHERE m.job_id = ? AND b.status <> 'done'
              AND m.content_hash NOT IN (SELECT content_hash FROM covered)
              AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.cache_key = ? || m.content_hash)
            GROUP BY m.content_hash ORDER BY min(m.ordinal)
            """,
            [self.job_id, self.job_id, cache_key(self.embedder, "")],
        )
        hashes, texts = list(origin_free["content_hash"]), list(origin_free["text"])
        for start in range(0, len(hashes), self.texts_per_job):
            self.control.check()
            chunk_hashes = hashes[start : start + self.texts_per_job]
            chunk_texts = texts[start : start + self.texts_per_job]
            # The cap applies to the estimate at submit time: the real count arrives hours later.
            estimate = sum(estimate_tokens(t) for t in chunk_texts) * self.price / 1e6
            most_tokens = sum(len(t.encode("utf-8")) for t in chunk_texts)
            self.budget.reserve(estimate)
            intent = self.checkpoint.open_intent(
                "batch_mode", None, len(chunk_texts), most_tokens, most_tokens * self.price / 1e6, chunk_hashes
            )
            try:
                name = self.retrier.call(partial(self.embedder.submit_batch, chunk_texts,
                                                 f"qsync-{self.job_id}-{uuid.uuid4().hex[:8]}"))  # fmt: skip
            except BaseException as exc:
                self.budget.settle(estimate, 0.0)
                billed = isinstance(exc, TransientError) and exc.maybe_billed
                self.checkpoint.close_intent(intent, "unconfirmed" if billed else "void")
                raise
            self.budget.settle(estimate, estimate)
            self.checkpoint.record_remote_job(name, chunk_hashes, intent)
            log.info("qsync: submitted %s texts as Gemini batch job %s", len(chunk_hashes), name)

    def _poll(self, name: str) -> None:
        _, vectors, error = self.retrier.call(lambda: self.embedder.poll_batch(name))
        if error is not None:
            self.checkpoint.fail_remote_job(name, error)
            log.warning("qsync: Gemini batch job %s failed (%s); its texts are embedded synchronously", name, error)
            return
        if vectors is None:
            return  # still running
        row = self.store.query_rows(
            "SELECT content_hashes FROM remote_jobs WHERE job_id = ? AND name = ?", [self.job_id, name]
        )[0]
        hashes: list[str] = list(row[0])
        if len(vectors) != len(hashes):
            raise PermanentError(f"Gemini batch job {name} answered {len(vectors)} vectors for {len(hashes)} texts")
        texts = dict(
            self.store.query_rows(
                "SELECT content_hash, any_value(text) FROM manifest WHERE job_id = ? AND content_hash IN "
                "(SELECT unnest(?::VARCHAR[])) GROUP BY content_hash",
                [self.job_id, hashes],
            )
        )
        tokens = self.embedder.count_tokens_many([texts[h] for h in hashes])
        self.checkpoint.ingest_remote_job(name, self.embedder, hashes, vectors, tokens, self.price)
        log.info("qsync: ingested %s vectors from Gemini batch job %s", len(hashes), name)
