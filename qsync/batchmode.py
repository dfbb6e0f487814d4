"""Gemini Batch Mode for very large backfills: half the price, answered within hours instead of seconds.

Batch Mode fills the embedding cache before the ordinary run: texts that no cache entry covers are
submitted as Batch Mode jobs, each recorded in `remote_jobs` right after the submit returns; those jobs
are polled (after a restart too: the names are in the ledger) and their vectors, tokens and cost, at the
Batch Mode price, are stored when they succeed. The runner then upserts every batch from the cache,
making no synchronous embedding call for those texts.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

import numpy as np

from .budget import Budget
from .clock import Clock
from .embedders.gemini import estimate_tokens
from .errors import PermanentError
from .lease import Lease
from .ledger import batch_mode_origin, cache_key, insert_vectors
from .store import Store

log = logging.getLogger("qsync")


class BatchModePrefetcher:
    def __init__(
        self,
        store: Store,
        lease: Lease,
        embedder: Any,  # GeminiEmbedder: submit_batch, poll_batch, count_tokens_many
        clock: Clock,
        price_per_million_tokens: float,
        budget: Budget,
        texts_per_job: int = 5000,
        poll_s: float = 30.0,
    ) -> None:
        self.store = store
        self.lease = lease
        self.job_id = lease.job_id
        self.embedder = embedder
        self.clock = clock
        self.price = price_per_million_tokens
        self.budget = budget
        self.texts_per_job = texts_per_job
        self.poll_s = poll_s

    def run(self, stop: threading.Event) -> None:
        """Submit what is missing, then poll until every remote job has been ingested (or `stop`)."""
        self._submit_missing()
        while not stop.is_set():
            pending = self._pending()
            if not pending:
                return
            for name in pending:
                self._poll(name)
            if self._pending():
                stop.wait(self.poll_s)

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
            chunk_hashes = hashes[start : start + self.texts_per_job]
            chunk_texts = texts[start : start + self.texts_per_job]
            # The cap applies to the estimate at submit time: the real count arrives hours later.
            estimate = sum(estimate_tokens(t) for t in chunk_texts) * self.price / 1e6
            self.budget.reserve(estimate)
            name = self.embedder.submit_batch(chunk_texts, f"qsync-{self.job_id}-{uuid.uuid4().hex[:8]}")
            self.budget.settle(estimate, estimate)
            with self.store.transaction() as con:
                self.lease.verify(con)
                con.execute(
                    "INSERT INTO remote_jobs (job_id, name, state, content_hashes, texts, submitted_at) "
                    "VALUES (?, ?, 'submitted', ?, ?, ?)",
                    [self.job_id, name, chunk_hashes, len(chunk_hashes), self.clock.now()],
                )
            log.info("qsync: submitted %s texts as Gemini batch job %s", len(chunk_hashes), name)

    def _poll(self, name: str) -> None:
        _, vectors, error = self.embedder.poll_batch(name)
        if error is not None:
            with self.store.transaction() as con:
                self.lease.verify(con)
                con.execute(
                    "UPDATE remote_jobs SET state = 'failed', error = ?, finished_at = ? WHERE job_id = ? AND name = ?",
                    [error, self.clock.now(), self.job_id, name],
                )
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
        self._ingest(name, hashes, vectors, tokens)

    def _ingest(self, name: str, hashes: list[str], vectors: np.ndarray, tokens: list[int]) -> None:
        now = self.clock.now()
        total = int(sum(tokens))
        with self.store.transaction() as con:
            self.lease.verify(con)
            insert_vectors(con, self.embedder, hashes, vectors, tokens, now, batch_mode_origin(self.job_id))
            con.execute(
                "UPDATE remote_jobs SET state = 'ingested', tokens = ?, cost_usd = ?, finished_at = ? "
                "WHERE job_id = ? AND name = ?",
                [total, total * self.price / 1e6, now, self.job_id, name],
            )
        log.info("qsync: ingested %s vectors from Gemini batch job %s", len(hashes), name)
