"""A batch's vectors: from the cache, from another batch's call of this run that is embedding the same text
(waited for, not paid twice), else from the embedder, one paid call at a time, each persisted the moment it is
answered (never pay twice).

Every paid call is reserved against the spend cap and recorded as an intent before it is sent (write-ahead for
money), paced by the rate limiter, and retried by the one retry layer. A call refused for its content is split
in halves until the refused record is alone, and it is skipped. Media records go in calls of their own, within
the request limits, their files read again (and checked unchanged) when the batch runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial

import numpy as np

from qsync.embedders.protocol import Embedder, EmbedResult, EmbedsMedia, Media, Vectors, request_chunks
from qsync.engine.control import Control
from qsync.engine.counting import DeferredCounts, Uncounted
from qsync.engine.inflight import InFlight
from qsync.engine.outcome import Outcome
from qsync.engine.ratelimit import RateLimiter
from qsync.engine.retry import Retrier
from qsync.engine.slots import CallSlots
from qsync.engine.spend_cap import SpendCap, close_unanswered
from qsync.errors import (
    InvalidInput,
    MediaProblem,
    PauseJob,
    PermanentError,
    RateLimited,
    StopJob,
    TransientError,
)
from qsync.input.media_plan import caption_of, file_size, load_planned
from qsync.ledger.batches import BatchWork
from qsync.ledger.cache import Lookup, cache_key
from qsync.ledger.run import LeasedJob

_MEDIA_OVERHEAD_BYTES = 512  # JSON around one record's media part and caption in batchEmbedContents
Texts = dict[str, tuple[str, int]]  # content hash -> (text, token estimate)
_ELSEWHERE_POLL_S = 0.2  # how often a text another process is paying for is looked for in the cache


class BatchVectors:
    def __init__(
        self,
        job: LeasedJob,
        embedder: Embedder,
        retrier: Retrier,
        control: Control,
        budget: SpendCap,
        limiter: RateLimiter | None,
        inflight: InFlight,
        counts: DeferredCounts | None = None,
        slots: CallSlots | None = None,
    ) -> None:
        self.job = job
        self.slots = slots  # the calls on the wire at once, shared by the run's batches (None: as many as batches)
        self.counts = counts  # answers without usage are priced here, after the fact (None: at their estimate)
        self.embedder = embedder
        self.retrier = retrier
        self.control = control
        self.budget = budget
        self.limiter = limiter
        self.inflight = inflight
        self._price = embedder.price_per_million_tokens / 1_000_000
        media_price = embedder.media_price_per_million_tokens if isinstance(embedder, EmbedsMedia) else 0.0
        self._media_price = media_price / 1_000_000 or self._price

    def for_batch(self, work: BatchWork, outcome: Outcome, refused: dict[str, str]) -> tuple[Vectors, dict[str, str]]:
        """Vectors for every record of the batch, and the texts refused (hash -> reason)."""
        by_hash: dict[str, Vectors] = {}
        rejected = dict(refused)
        texts = {h: (t, e) for h, t, e in zip(work.hashes, work.texts, work.token_estimates, strict=True)}
        wanted = [h for h in dict.fromkeys(work.hashes) if h not in rejected]
        tokens_of: dict[str, int] = {}  # what a text taken from the cache saves, for batches waiting on it here
        if not self._price:  # a free embedder claims nothing (nothing to save by waiting): the cache alone
            self._take(self.job.cached_vectors(self.embedder, wanted), by_hash, outcome, tokens_of)
        missing = [h for h in wanted if h not in by_hash]
        while missing:
            key_of = {cache_key(self.embedder, h): h for h in missing}
            owned_keys, other_keys = self.inflight.claim(key_of)
            # A paid embedder's texts are looked up in the cache and claimed in the ledger in one transaction:
            # another process's run paying for one of them right now is waited for, not paid again.
            elsewhere: set[str] = set()
            if self._price and owned_keys:
                cached, paid_elsewhere = self.job.claim_texts(self.embedder, [key_of[k] for k in owned_keys])
                self._take(cached, by_hash, outcome, tokens_of)
                elsewhere = {k for k in owned_keys if key_of[k] in paid_elsewhere}
            claimed = [k for k in owned_keys if k not in elsewhere and key_of[k] not in by_hash]
            owned = [key_of[k] for k in claimed]
            try:
                self._embed(owned, texts, work, outcome, by_hash, rejected)
            finally:  # whatever this batch did not deliver, the batches waiting for it must do themselves
                for key in owned_keys:
                    h = key_of[key]
                    self.inflight.resolve(key, by_hash.get(h), tokens_of.get(h, 0))
                if self._price:  # claims of texts not saved (refused, failed) are let go; the others when it is done
                    self.job.release_texts([k for k in claimed if key_of[k] not in by_hash])
                    outcome.claims += [k for k in claimed if key_of[k] in by_hash]
            found, failed = self.inflight.wait(other_keys, self.control)
            for key, (vector, tokens) in found.items():
                by_hash[key_of[key]] = vector
                outcome.cache_hits += 1
                outcome.saved_tokens += tokens
            retry = [key_of[k] for k in failed]
            retry += self._wait_elsewhere([key_of[k] for k in elsewhere], by_hash, outcome)
            # The owner may have saved them after all (resolved before we waited): look again.
            self._take(self.job.cached_vectors(self.embedder, retry), by_hash, outcome, tokens_of)
            missing = [h for h in retry if h not in by_hash and h not in rejected]
        zero = np.zeros(self.embedder.dimensions, dtype=np.float32)
        return np.stack([by_hash.get(h, zero) for h in work.hashes]), rejected

    @staticmethod
    def _take(
        found: Lookup, by_hash: dict[str, Vectors], outcome: Outcome, tokens_of: dict[str, int] | None = None
    ) -> None:
        """Vectors from the cache: cache hits, except those this job's Batch Mode paid for (embedded by it)."""
        for h, (vector, tokens) in found.found.items():
            by_hash[h] = vector
            if tokens_of is not None:
                tokens_of[h] = tokens
            if h in found.prefetched:
                outcome.batch_mode += 1
            else:
                outcome.cache_hits += 1
                outcome.saved_tokens += tokens

    def _wait_elsewhere(self, hashes: list[str], by_hash: dict[str, Vectors], outcome: Outcome) -> list[str]:
        """Wait for texts another process's run is paying for: their vectors arrive in the cache (counted as cache
        hits), or that run lets go of them (its call failed, it stopped or died: returned, to embed ourselves)."""
        waiting = list(hashes)
        while waiting:
            self._take(self.job.cached_vectors(self.embedder, waiting), by_hash, outcome)
            waiting = [h for h in waiting if h not in by_hash]
            still = self.job.claimed_elsewhere([cache_key(self.embedder, h) for h in waiting])
            if not still:
                return waiting
            self.control.wait(_ELSEWHERE_POLL_S)
        return []

    def _embed(
        self,
        hashes: list[str],
        texts: Texts,
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
                # The slot is held until the answer is saved: a paid answer not yet in the cache is still a call in
                # flight (a kill would pay for it again), so at most `concurrency` of them exist at any moment.
                with self._slot():
                    result, intent = self._call(chunk, texts, work, send, media=chunk[0] in refs)
                    self._save(chunk, texts, work, refs, result, intent)
            except InvalidInput as exc:
                if len(chunk) == 1:
                    rejected[chunk[0]] = f"refused by the embedder: {exc}"
                else:
                    half = len(chunk) // 2
                    pending += [chunk[half:], chunk[:half]]
                continue
            outcome.embedded += len(chunk)
            for h, vector in zip(chunk, result.vectors, strict=True):
                by_hash[h] = vector

    @contextmanager
    def _slot(self) -> Iterator[None]:
        """One of the run's call slots (engine.slots) for a call and the saving of its answer. A call that must stop
        the job (the budget, a refused key, a quota for the day) winds the run down before its slot is let go: no
        batch waiting for a slot calls after it."""
        with self.slots.held(self.control) if self.slots is not None else nullcontext():
            try:
                yield
            except (PauseJob, StopJob):
                self.control.wind_down()
                raise

    def _save(
        self, chunk: list[str], texts: Texts, work: BatchWork, refs: dict[str, str], result: EmbedResult,
        intent: str | None,
    ) -> None:  # fmt: skip
        """Persist one answer: its vectors and cost (closing its intent), its reservation settled; an answer without
        usage is charged its bound until it is counted with others."""
        media_tokens = sum(v for k, v in (result.tokens_by_modality or {}).items() if k != "TEXT")
        text_tokens = sum(result.tokens_per_text) - media_tokens
        cost = text_tokens * self._price + media_tokens * self._media_price
        # No usage in the answer: counted later with many other calls, charged its bound meanwhile.
        later = self.counts is not None and intent is not None and result.tokens_estimated and chunk[0] not in refs
        charged = self._bound(chunk, texts, chunk[0] in refs)[1] if later else cost
        try:
            self.job.record_embeddings(
                work, self.embedder, chunk, result.vectors, result.tokens_per_text, result.tokens_estimated and
                not later, cost, intent, media_tokens, result.modality_estimated, uncounted=later,
            )  # fmt: skip
        finally:
            self.budget.settle(self._reserved(chunk, texts, chunk[0] in refs), charged)
        if later and self.counts is not None and intent is not None:
            sent = [texts[h][0] for h in chunk]
            self.counts.add(Uncounted(intent, work.batch_no, chunk, sent, result.tokens_per_text, charged))

    def _media_chunks(self, hashes: list[str], texts: Texts, refs: dict[str, str]) -> list[list[str]]:
        """Media records cut into calls within the request limits, by file size before any file is read:
        at most max_batch_texts records and max_request_bytes of base64; a file bigger than that goes
        alone (the API judges it, and refuses only that record)."""
        embedder = self.embedder
        limit = embedder.max_request_bytes if isinstance(embedder, EmbedsMedia) else 4 * 1024 * 1024
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
        self, chunk: list[str], texts: Texts, refs: dict[str, str], rejected: dict[str, str]
    ) -> tuple[list[str], Callable[[], EmbedResult]]:
        """The records of `chunk` whose file still reads as planned, and the call that embeds them; the
        others are skipped with their reason."""
        embedder = self.embedder
        if not isinstance(embedder, EmbedsMedia):  # the spec allows media columns with a multimodal model only
            raise PermanentError(f"{embedder.model} embeds text only; this job's records are media")
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
        return kept, partial(embedder.embed_media, items)

    def _reserved(self, chunk: list[str], texts: Texts, media: bool = False) -> float:
        return sum(texts[h][1] for h in chunk) * (self._media_price if media else self._price)

    def _bound(self, chunk: list[str], texts: Texts, media: bool) -> tuple[int, float]:
        """The most a call can cost, in tokens and dollars, whatever the API answers."""
        if media:  # media tokens have no byte bound: the bound is our estimate (~258 an image or page), doubled
            most_tokens = 2 * sum(texts[h][1] for h in chunk)
            return most_tokens, most_tokens * self._media_price
        # Each token is at least one byte of what is sent (with the model's instruction, for gemini-embedding-2): the
        # byte count bounds what an unanswered call may have cost.
        sent = getattr(self.embedder, "sent_text", None) or (lambda text: text)
        most_tokens = sum(len(sent(texts[h][0]).encode("utf-8")) for h in chunk)
        return most_tokens, most_tokens * self._price

    def _call(
        self,
        chunk: list[str],
        texts: Texts,
        work: BatchWork,
        send: Callable[[], EmbedResult],
        media: bool = False,
    ) -> tuple[EmbedResult, str | None]:
        """One paid call (in a call slot): reserved against the budget, recorded as an intent before it is sent
        (write-ahead for money), paced by the rate limiter, retried by the one retry layer. The caller settles the
        reservation, and the intent (with the real cost) when it persists the vectors."""
        estimate = sum(texts[h][1] for h in chunk)
        most_tokens, most_cost = self._bound(chunk, texts, media)
        reserved = self._reserved(chunk, texts, media)

        def once() -> tuple[EmbedResult, str | None]:
            if self.limiter is not None:
                self.control.wait(self.limiter.acquire(len(chunk), estimate))
            intent = None
            if self._price:  # a free embedder bills nothing: no intent to keep
                intent = self.job.open_intent("embed", work, len(chunk), most_tokens, most_cost, chunk)
            try:
                result = send()
            except BaseException as exc:  # unconfirmed if the API may have billed it, else void (a refusal)
                if intent is not None:
                    close_unanswered(self.job, self.budget, intent, exc, most_cost)
                raise
            if self.limiter is not None:
                self.limiter.succeeded()
                self.limiter.settle(estimate, sum(result.tokens_per_text))
            return result, intent

        def throttle(exc: TransientError) -> None:
            if self.limiter is not None and isinstance(exc, RateLimited):
                self.limiter.throttle(exc.retry_after_s)

        self.budget.reserve(reserved)
        try:
            return self.retrier.call(once, before_retry=throttle)
        except BaseException:
            self.budget.settle(reserved, 0.0)
            raise
