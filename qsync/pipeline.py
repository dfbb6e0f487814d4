"""One batch, from claim to done: claim -> stages -> vectors -> upsert -> complete.

Order matters and is the whole point:
1. claim the batch (a new attempt) and load its records from the manifest;
2. run the batch stages (enrichment may change the texts to embed);
3. vectors: take what the cache holds; wait for texts another batch is embedding right now; embed the
   rest call by call, persisting each call's vectors and cost at once (never pay twice);
4. write the points to Qdrant;
5. `complete`: once the points are durable, mark the batch done (nothing lost). The scheduler's completer
   calls it for many batches at once: one Qdrant Edge flush and one transaction cover them all.
A SIGKILL at any point leaves the batch either done or unfinished with its paid vectors cached.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np

from .budget import Budget
from .cache import cache_key
from .checkpoint import BatchWork, Checkpoint, Completion, load_payload
from .control import Control, Interrupted
from .embedders.base import Embedder, EmbedResult, Vectors, request_chunks
from .errors import (
    InvalidInput,
    LeaseLost,
    PauseJob,
    PermanentError,
    RateLimited,
    StopJob,
    StoreError,
    TransientError,
)
from .inflight import InFlight
from .media import Media, MediaProblem
from .mediaplan import caption_of, file_size, load_planned
from .ratelimit import RateLimiter
from .retry import Retrier
from .sink import QdrantSink

log = logging.getLogger("qsync")
_MEDIA_OVERHEAD_BYTES = 512  # JSON around one record's media part and caption in batchEmbedContents


@dataclass
class Outcome:
    """What became of one batch in this run."""

    batch_no: int
    kind: str = "failed"  # done | failed | released | lost | halted
    records: int = 0  # loaded into Qdrant (done batches)
    skipped: int = 0  # refused by the embedder or the enrichment model (done batches)
    embedded: int = 0  # texts this batch paid for
    cache_hits: int = 0  # texts whose vector came from the cache or another batch's call
    saved_tokens: int = 0
    error: str | None = None
    fatal: BaseException | None = None  # the run cannot go on (lease lost, store broken)
    halt: BaseException | None = None  # the job must stop (PauseJob: resumable; StopJob: failed)


@dataclass
class Upserted:
    """A batch whose points are written to Qdrant, maybe not yet durably: BatchPipeline.complete ends it."""

    done: Completion
    outcome: Outcome
    written: int  # the sink's number of the write, for QdrantSink.durable


class BatchStage(Protocol):
    """A step between claim and embedding (enrichment). Returns records it refused: hash -> reason."""

    def apply(self, work: BatchWork) -> dict[str, str]: ...


class BatchPipeline:
    def __init__(
        self,
        checkpoint: Checkpoint,
        embedder: Embedder,
        sink: QdrantSink,
        retrier: Retrier,
        control: Control,
        budget: Budget,
        limiter: RateLimiter | None,
        inflight: InFlight,
        stages: Sequence[BatchStage] = (),
    ) -> None:
        self.checkpoint = checkpoint
        self.embedder = embedder
        self.sink = sink
        self.retrier = retrier
        self.control = control
        self.budget = budget
        self.limiter = limiter
        self.inflight = inflight
        self.stages = list(stages)
        self._price = embedder.price_per_million_tokens / 1_000_000
        self._media_price = getattr(embedder, "media_price_per_million_tokens", 0.0) / 1_000_000 or self._price

    def process(self, batch_no: int) -> Outcome | Upserted:
        """Run one batch up to its points written to Qdrant (Upserted: `complete` marks it done), or to
        its end (an Outcome: failed, released, lost, halted)."""
        started = time.monotonic()
        try:
            work = self.checkpoint.claim(batch_no)
        except (LeaseLost, StoreError) as exc:
            return Outcome(batch_no, "lost", fatal=exc)
        outcome = Outcome(batch_no)
        try:
            self.control.check()
            refused: dict[str, str] = {}
            for stage in self.stages:
                refused.update(stage.apply(work))
            vectors, rejected = self._vectors(work, outcome, refused)
            self.control.check()  # paid vectors are cached: stopping here loses nothing
            keep = [i for i, h in enumerate(work.hashes) if h not in rejected]
            written = 0
            if keep:
                ids = [work.record_ids[i] for i in keep]
                payloads = [load_payload(work.payloads[i]) for i in keep]
                written = self.retrier.call(lambda: self.sink.write(ids, vectors[keep], payloads))
            skips = {i: rejected[h] for i, h in enumerate(work.hashes) if h in rejected}
            outcome.records, outcome.skipped = len(keep), len(skips)
            done = Completion(work, outcome.cache_hits, outcome.saved_tokens, time.monotonic() - started, skips)
            return Upserted(done, outcome, written)
        except Exception as exc:
            return self._ended(work, outcome, exc)

    def complete(self, group: Sequence[Upserted]) -> list[Outcome]:
        """Mark batches done once Qdrant holds their points durably: one flush (Qdrant Edge) and one
        transaction for the whole group. On an error no batch of the group is done."""
        try:
            # Not through the retrier: a Pause must not interrupt finishing work that is done. A failed flush
            # fails the group's batches; their vectors are cached, so trying them again costs no API call.
            self.sink.durable(max(u.written for u in group))
            self.checkpoint.complete([u.done for u in group])
        except Exception as exc:
            return [self._ended(u.done.work, u.outcome, exc) for u in group]
        for u in group:
            u.outcome.kind = "done"
        return [u.outcome for u in group]

    def _ended(self, work: BatchWork, outcome: Outcome, exc: Exception) -> Outcome:
        """What an error means for the batch: the run cannot go on (lost), the batch goes back to pending
        (a stop, a pause), or it failed and says why."""
        if isinstance(exc, (LeaseLost, StoreError)):
            return Outcome(work.batch_no, "lost", fatal=exc)
        if isinstance(exc, Interrupted):
            return self._release(work, Outcome(work.batch_no, "released"))
        if isinstance(exc, (PauseJob, StopJob)):
            # The job must stop: this batch is not at fault, so it goes back to pending untouched.
            return self._release(work, Outcome(work.batch_no, "halted", error=str(exc), halt=exc))
        if isinstance(exc, (TransientError, PermanentError)):
            outcome.error = str(exc)
        else:  # a bug or an unconverted library error: fail this batch, keep the job going
            outcome.error = f"{type(exc).__name__}: {exc}"
            log.error("qsync batch %s failed unexpectedly", work.batch_no, exc_info=exc)
        outcome.kind = "failed"
        try:
            self.checkpoint.fail(work, outcome.error)
        except (LeaseLost, StoreError) as lost:
            return Outcome(work.batch_no, "lost", fatal=lost)
        return outcome

    def _release(self, work: BatchWork, outcome: Outcome) -> Outcome:
        try:
            self.checkpoint.release(work)
        except (LeaseLost, StoreError) as exc:
            return Outcome(work.batch_no, "lost", fatal=exc)
        return outcome

    # -- vectors -----------------------------------------------------------------------------------

    def _vectors(self, work: BatchWork, outcome: Outcome, refused: dict[str, str]) -> tuple[Vectors, dict[str, str]]:
        """Vectors for every record of the batch, and the texts refused (hash -> reason)."""
        by_hash: dict[str, Vectors] = {}
        rejected = dict(refused)
        texts = {h: (t, e) for h, t, e in zip(work.hashes, work.texts, work.token_estimates, strict=True)}
        wanted = [h for h in dict.fromkeys(work.hashes) if h not in rejected]
        for h, (vector, tokens) in self.checkpoint.cached_vectors(self.embedder, wanted).items():
            by_hash[h] = vector
            outcome.cache_hits += 1
            outcome.saved_tokens += tokens
        missing = [h for h in wanted if h not in by_hash]
        while missing:
            key_of = {cache_key(self.embedder, h): h for h in missing}
            owned_keys, other_keys = self.inflight.claim(key_of)
            owned = [key_of[k] for k in owned_keys]
            try:
                self._embed(owned, texts, work, outcome, by_hash, rejected)
            finally:  # whatever this batch did not deliver, the batches waiting for it must do themselves
                for h in owned:
                    self.inflight.resolve(cache_key(self.embedder, h), by_hash.get(h))
            found, failed = self.inflight.wait(other_keys, self.control)
            for key, (vector, tokens) in found.items():
                by_hash[key_of[key]] = vector
                outcome.cache_hits += 1
                outcome.saved_tokens += tokens
            retry = [key_of[k] for k in failed]
            # The owner may have saved them after all (resolved before we waited): look again.
            for h, (vector, tokens) in self.checkpoint.cached_vectors(self.embedder, retry).items():
                by_hash[h] = vector
                outcome.cache_hits += 1
                outcome.saved_tokens += tokens
            missing = [h for h in retry if h not in by_hash and h not in rejected]
        zero = np.zeros(self.embedder.dimensions, dtype=np.float32)
        return np.stack([by_hash.get(h, zero) for h in work.hashes]), rejected

    def _embed(
        self,
        hashes: list[str],
        texts: dict[str, tuple[str, int]],
        work: BatchWork,
        outcome: Outcome,
        by_hash: dict[str, Vectors],
        rejected: dict[str, str],
    ) -> None:
        """Embed `hashes`, one API call per request chunk, persisting each call before the next. A call
        refused for its content is split in halves until the refused record is alone, and it is skipped.
        Media records (a media reference in the manifest) go in calls of their own (`embed_media`)."""
        refs = {h: r for h, r in zip(work.hashes, work.media_refs, strict=True) if r}
        plain = [h for h in hashes if h not in refs]
        pending = [[plain[i] for i in chunk] for chunk in request_chunks(self.embedder, [texts[h][0] for h in plain])]
        pending += self._media_chunks([h for h in hashes if h in refs], texts, refs)
        pending.reverse()
        while pending:
            chunk = pending.pop()
            try:
                if chunk[0] in refs:
                    chunk, send = self._media_call(chunk, texts, refs, rejected)
                    if not chunk:
                        continue
                else:
                    batch = [texts[h][0] for h in chunk]
                    send = partial(self.embedder.embed, batch)
                result, intent = self._call(chunk, texts, work, send, media=chunk[0] in refs)
            except InvalidInput as exc:
                if len(chunk) == 1:
                    rejected[chunk[0]] = f"refused by the embedder: {exc}"
                else:
                    half = len(chunk) // 2
                    pending += [chunk[half:], chunk[:half]]
                continue
            media_tokens = sum(v for k, v in (result.tokens_by_modality or {}).items() if k != "TEXT")
            text_tokens = sum(result.tokens_per_text) - media_tokens
            cost = text_tokens * self._price + media_tokens * self._media_price
            try:
                self.checkpoint.record_embeddings(
                    work, self.embedder, chunk, result.vectors, result.tokens_per_text, result.tokens_estimated,
                    cost, intent, media_tokens, result.modality_estimated,
                )  # fmt: skip
            finally:
                self.budget.settle(self._reserved(chunk, texts, chunk[0] in refs), cost)
            outcome.embedded += len(chunk)
            for h, vector in zip(chunk, result.vectors, strict=True):
                by_hash[h] = vector

    def _media_chunks(
        self, hashes: list[str], texts: dict[str, tuple[str, int]], refs: dict[str, str]
    ) -> list[list[str]]:
        """Media records cut into calls within the request limits, by file size before any file is read:
        at most max_batch_texts records and max_request_bytes of base64; a file bigger than that goes
        alone (the API judges it, and refuses only that record)."""
        limit = int(getattr(self.embedder, "max_request_bytes", 4 * 1024 * 1024))
        chunks: list[list[str]] = []
        size = 0
        for h in hashes:
            cost = -(-file_size(refs[h]) // 3) * 4 + len(texts[h][0].encode("utf-8")) + _MEDIA_OVERHEAD_BYTES
            if not chunks or len(chunks[-1]) >= self.embedder.max_batch_texts or size + cost > limit:
                chunks.append([])
                size = 0
            chunks[-1].append(h)
            size += cost
        return chunks

    def _media_call(
        self, chunk: list[str], texts: dict[str, tuple[str, int]], refs: dict[str, str], rejected: dict[str, str]
    ) -> tuple[list[str], Callable[[], EmbedResult]]:
        """The records of `chunk` whose file still reads as planned, and the call that embeds them; the
        others are skipped with their reason."""
        embed_media: Callable[[list[tuple[Media, str | None]]], EmbedResult] | None
        embed_media = getattr(self.embedder, "embed_media", None)
        if embed_media is None:  # the spec allows media columns with gemini-embedding-2 only: a replaced embedder
            raise PermanentError(f"{self.embedder.model} embeds text only; this job's records are media")
        items: list[tuple[Media, str | None]] = []
        kept: list[str] = []
        for h in chunk:
            caption = caption_of(texts[h][0])
            try:
                items.append((load_planned(refs[h], h, caption), caption))
            except MediaProblem as exc:
                rejected[h] = str(exc)
                continue
            kept.append(h)
        return kept, partial(embed_media, items)

    def _reserved(self, chunk: list[str], texts: dict[str, tuple[str, int]], media: bool = False) -> float:
        return sum(texts[h][1] for h in chunk) * (self._media_price if media else self._price)

    def _call(
        self,
        chunk: list[str],
        texts: dict[str, tuple[str, int]],
        work: BatchWork,
        send: Callable[[], EmbedResult],
        media: bool = False,
    ) -> tuple[EmbedResult, str | None]:
        """One paid call: reserved against the budget, recorded as an intent before it is sent (write-ahead
        for money), paced by the rate limiter, retried by the one retry layer. The caller settles the
        reservation, and the intent (with the real cost) when it persists the vectors."""
        estimate = sum(texts[h][1] for h in chunk)
        if media:
            # Media tokens have no byte bound: the bound is our estimate (~258 an image or page), doubled.
            most_tokens = 2 * estimate
            most_cost = most_tokens * self._media_price
        else:
            # Each token is at least one byte: the byte count bounds what an unanswered call may have cost.
            most_tokens = sum(len(texts[h][0].encode("utf-8")) for h in chunk)
            most_cost = most_tokens * self._price
        reserved = self._reserved(chunk, texts, media)
        self.budget.reserve(reserved)

        def once() -> tuple[EmbedResult, str | None]:
            if self.limiter is not None:
                self.control.wait(self.limiter.acquire(len(chunk), estimate))
            intent = None
            if self._price:  # a free embedder bills nothing: no intent to keep
                intent = self.checkpoint.open_intent("embed", work, len(chunk), most_tokens, most_cost, chunk)
            try:
                result = send()
            except TransientError as exc:
                if intent is not None:
                    self.checkpoint.close_intent(intent, "unconfirmed" if exc.maybe_billed else "void")
                raise
            except BaseException:
                if intent is not None:  # the API answered with a refusal: nothing was billed
                    self.checkpoint.close_intent(intent, "void")
                raise
            if self.limiter is not None:
                self.limiter.succeeded()
                self.limiter.settle(estimate, sum(result.tokens_per_text))
            return result, intent

        def throttle(exc: TransientError) -> None:
            if self.limiter is not None and isinstance(exc, RateLimited):
                self.limiter.throttle(exc.retry_after_s)

        try:
            return self.retrier.call(once, before_retry=throttle)
        except BaseException:
            self.budget.settle(reserved, 0.0)
            raise
