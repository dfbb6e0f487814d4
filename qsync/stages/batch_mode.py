"""Gemini Batch Mode for very large backfills: half the price, answered within hours instead of seconds.

Batch Mode fills the embedding cache before the ordinary run: texts that no cache entry covers are
submitted as Batch Mode jobs. Each job is named before it is sent (its display name is the id of its spend
intent, written ahead), and recorded in `remote_jobs` right after the submit returns; those jobs are polled
(after a restart too: the names are in the ledger) and their vectors, tokens and cost, at the Batch Mode
price, are stored when they succeed. A submit whose answer never reached the ledger (a crash the instant
Google accepted the job, a lost answer) is looked for by its display name (`batches.list`) before anything is
sent again: found, it is adopted and polled; found nowhere, its intent is closed and its texts are submitted
anew. The runner then upserts every batch from the cache, making no synchronous embedding call for those
texts. Polls start quickly and back off: a small job is ingested seconds after it is ready, a large one is not
asked about every few seconds for hours.
"""

from __future__ import annotations

import logging
import uuid
from functools import partial

from qsync.catalog.tokens import estimate_tokens
from qsync.embedders.protocol import SubmitsBatches
from qsync.engine.spend_cap import close_unanswered
from qsync.engine.stage import Stage, StageContext
from qsync.errors import ConfigError, PermanentError
from qsync.ledger.batch_mode import BatchModeRecords
from qsync.ledger.batches import BatchWork

log = logging.getLogger("qsync")


class BatchModeStage:
    """The job stage that fills the cache with half-price vectors before the batches run."""

    def __init__(self, context: StageContext, texts_per_job: int = 5000) -> None:
        embedder = context.embedder
        if not isinstance(embedder, SubmitsBatches):
            raise ConfigError(f"{embedder.model} has no Batch Mode: run the job without it")
        self.run = context.job
        self.job = BatchModeRecords(context.job)
        self.embedder = embedder
        self.identity = context.embedder
        self.price = embedder.batch_price_per_million_tokens
        self.budget = context.budget
        self.retrier = context.retrier
        self.control = context.control
        self.notify = context.notify
        self.texts_per_job = texts_per_job
        self.poll_s = context.settings.batch_mode_poll_s
        self.poll_max_s = max(self.poll_s, context.settings.batch_mode_poll_max_s)

    def before_batches(self) -> None:
        """Adopt jobs a lost answer left unrecorded, submit what is missing, then poll until every remote job has
        been ingested (or the run stops), waiting `poll_s` at first and twice as long each time, up to
        `poll_max_s`."""
        self.notify("Batch Mode: submitting uncached texts and polling for results")
        self._adopt_unrecorded()
        self._submit_missing()
        wait = self.poll_s
        while not self.control.stopping:
            pending = self.job.pending_remote_jobs()
            if not pending:
                return
            for name in pending:
                self._poll(name)
            if self.job.pending_remote_jobs() and not self.control.pause_for(wait):
                return
            wait = min(wait * 2, self.poll_max_s)

    def apply(self, work: BatchWork) -> dict[str, str]:
        """Nothing per batch: its vectors are in the cache by now (or are embedded as usual)."""
        return {}

    def _adopt_unrecorded(self) -> None:
        """Submissions whose remote job's name never reached the ledger: adopt the jobs Google has under their
        display names; close the intents of those it has not (never created, never billed), so their texts are
        submitted again."""
        unrecorded = self.job.unrecorded_submissions()
        if not unrecorded:
            return
        found = self.retrier.call(lambda: self.embedder.find_batches({intent for intent, _ in unrecorded}))
        for intent, hashes in unrecorded:
            name = found.get(intent)
            if name is None:
                self.run.close_intent(intent, "void")
                continue
            self.job.record_remote_job(name, hashes, intent)
            log.info("qsync: adopted Gemini batch job %s (%s), submitted before a crash", name, intent)

    def _submit_missing(self) -> None:
        """Submit the texts of unfinished batches that neither the cache nor a submitted job covers."""
        hashes, texts = self.job.texts_to_submit(self.identity)
        for start in range(0, len(hashes), self.texts_per_job):
            self.control.check()
            chunk_hashes = hashes[start : start + self.texts_per_job]
            chunk_texts = texts[start : start + self.texts_per_job]
            # The cap applies to the estimate at submit time: the real count arrives hours later.
            estimate = sum(estimate_tokens(t) for t in chunk_texts) * self.price / 1e6
            most_tokens = sum(len(t.encode("utf-8")) for t in chunk_texts)
            self.budget.reserve(estimate)
            # The job's name is written ahead with its intent: whatever happens to the submit's answer, a later
            # look-up by this name finds the job if Google created it.
            display_name = f"qsync-{self.run.job_id}-{uuid.uuid4().hex}"
            intent = self.run.open_intent("batch_mode", None, len(chunk_texts), most_tokens,
                                          most_tokens * self.price / 1e6, chunk_hashes, display_name)  # fmt: skip
            try:
                name = self.retrier.call(partial(self._submit_once, chunk_texts, display_name, [False]))
            except BaseException as exc:
                self.budget.settle(estimate, 0.0)
                close_unanswered(self.run, self.budget, intent, exc, most_tokens * self.price / 1e6)
                raise
            self.budget.settle(estimate, estimate)
            self.job.record_remote_job(name, chunk_hashes, intent)
            log.info("qsync: submitted %s texts as Gemini batch job %s", len(chunk_hashes), name)

    def _submit_once(self, texts: list[str], display_name: str, tried: list[bool]) -> str:
        """One attempt at a submit. After an attempt whose answer was lost, the job is looked for by its name first:
        a retry never creates a second job for the same texts."""
        if tried[0]:
            found = self.embedder.find_batches({display_name})
            if display_name in found:
                return found[display_name]
        tried[0] = True
        return self.embedder.submit_batch(texts, display_name)

    def _poll(self, name: str) -> None:
        _, vectors, error = self.retrier.call(lambda: self.embedder.poll_batch(name))
        if error is not None:
            self.job.fail_remote_job(name, error)
            log.warning("qsync: Gemini batch job %s failed (%s); its texts are embedded synchronously", name, error)
            return
        if vectors is None:
            return  # still running
        hashes, texts = self.job.remote_job_texts(name)
        if len(vectors) != len(hashes):
            raise PermanentError(f"Gemini batch job {name} answered {len(vectors)} vectors for {len(hashes)} texts")
        tokens = self.embedder.count_tokens_many([texts[h] for h in hashes])
        self.job.ingest_remote_job(name, self.identity, hashes, vectors, tokens, self.price)
        log.info("qsync: ingested %s vectors from Gemini batch job %s", len(hashes), name)


def batch_mode_stage(context: StageContext) -> Stage:
    """The factory of a run's Batch Mode stage."""
    return BatchModeStage(context)
