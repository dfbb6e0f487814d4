"""The ledger of a run's Gemini Batch Mode jobs: recorded the moment one is submitted (its spend intent renamed
after it), polled after a restart, ingested (vectors into the cache, at the Batch Mode price) when it succeeds."""

from __future__ import annotations

from typing import Any

from qsync.embedders.protocol import Vectors
from qsync.ledger import remote, spend
from qsync.ledger.cache import CacheIdentity, batch_mode_origin, insert_vectors, key_prefixes
from qsync.ledger.run import LeasedJob


class BatchModeRecords:
    """A run's Batch Mode jobs, through its lease-checked writes."""

    def __init__(self, job: LeasedJob) -> None:
        self.job = job

    def pending_remote_jobs(self) -> list[str]:
        with self.job.ledger.reading() as con:
            return remote.pending(con, self.job.job_id)

    def texts_to_submit(self, identity: CacheIdentity) -> tuple[list[str], list[str]]:
        """(content hashes, texts) of unfinished batches not cached (at `identity`'s size, or cut from its full
        size) and not yet submitted."""
        with self.job.ledger.reading() as con:
            frame = remote.texts_to_submit(con, self.job.job_id, key_prefixes(identity))
        return list(frame["content_hash"]), list(frame["text"])

    def unrecorded_submissions(self) -> list[tuple[str, list[str]]]:
        """(display name, content hashes) of submissions whose remote job may exist unrecorded (spend.py)."""
        with self.job.ledger.reading() as con:
            return spend.unrecorded_submissions(con, self.job.job_id)

    def remote_job_texts(self, name: str) -> tuple[list[str], dict[str, str]]:
        """(content hashes submitted in order, hash -> text) of a Batch Mode job."""
        with self.job.ledger.reading() as con:
            hashes = remote.hashes_of(con, self.job.job_id, name)
            return hashes, remote.texts_of(con, self.job.job_id, hashes)

    def record_remote_job(self, name: str, hashes: list[str], intent: str) -> None:
        """A Batch Mode job was created: recorded at once, so a restart polls it instead of paying again. Its
        intent takes the job's name and stays open (unconfirmed spend) until its vectors are ingested."""

        def apply(con: Any) -> None:
            remote.record(con, self.job.job_id, name, hashes, self.job.clock.now())
            spend.rename_intent(con, self.job.job_id, intent, name)

        self.job.commit.write(apply)

    def fail_remote_job(self, name: str, error: str) -> None:
        def apply(con: Any) -> None:
            remote.mark_failed(con, self.job.job_id, name, error, self.job.clock.now())
            spend.close_intent(con, self.job.job_id, name, "void", self.job.clock.now())

        self.job.commit.write(apply)

    def ingest_remote_job(
        self, name: str, embedder: CacheIdentity, hashes: list[str], vectors: Vectors, tokens: list[int], price: float
    ) -> None:
        """A Batch Mode job succeeded: its vectors into the cache, its tokens and cost (Batch Mode price)."""
        total = int(sum(tokens))
        origin = batch_mode_origin(self.job.job_id)
        offsets = self.job.appender(vectors)

        def apply(con: Any, ignore_existing: bool) -> None:
            now = self.job.clock.now()
            insert_vectors(
                con, embedder, hashes, offsets(con, False), tokens, now, origin, ignore_existing=ignore_existing
            )
            remote.mark_ingested(con, self.job.job_id, name, total, total * price / 1e6, now)
            spend.close_intent(con, self.job.job_id, name, "settled", self.job.clock.now())

        self.job.write_vectors(apply)
