"""The writes of one run, guarded by its lease and group-committed (commit.py): every state change of its
batches (batches.py), the vectors and answers it pays for, its spend intents (spend.py) and Batch Mode jobs
(remote.py, through BatchModeRecords), the points it loads and the deletions it applies.

`record_embeddings` stores the vectors a batch paid for, and their tokens and cost, before the upsert that uses
them: a crash after it costs nothing on resume. `complete` runs only once Qdrant holds the batch's points
durably, and marks many batches done in one transaction (one Qdrant Edge flush covers them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, TypeVar

import duckdb

from qsync.clock import Clock
from qsync.embedders.protocol import Vectors
from qsync.ledger import batches as b
from qsync.ledger import claims, spend
from qsync.ledger.batches import BatchWork, Completion
from qsync.ledger.cache import (
    CacheIdentity,
    Lookup,
    batch_mode_origin,
    cache_key,
    embedder_signature,
    forget,
    forget_beyond,
    lookup_vectors,
    parts_of,
    set_tokens,
)
from qsync.ledger.commit import GroupCommit
from qsync.ledger.fresh import Appender, FreshVectors, record_fresh
from qsync.ledger.lease import Lease
from qsync.ledger.ledger import Ledger
from qsync.ledger.readahead import ManifestReadAhead

T = TypeVar("T")


class LeasedJob:
    """One run's view of its job: reads, and the writes only the lease holder may make."""

    def __init__(self, ledger: Ledger, lease: Lease, clock: Clock, target: str, embedder_signature: str) -> None:
        self.ledger = ledger
        self.lease = lease
        self.job_id = lease.job_id
        self.clock = clock
        self.target = target  # see spec.target.target
        self.embedder_signature = embedder_signature
        self.lost_vectors = 0  # cache entries this run found gone from the vector file (and forgot)
        self.commit = GroupCommit(ledger, lease, clock)  # every write of the run goes through it
        self._manifest = ManifestReadAhead(ledger, self.job_id)
        # A fresh backfill (and a re-sync's batches of new records) skips deleting earlier `points` rows of its
        # records, which scans the whole table and would make each batch slower than the last.
        with ledger.reading() as con:
            self._replacing = b.batches_replacing_points(con, self.job_id, target)

    # -- reading -------------------------------------------------------------------------------------------

    def runnable_batches(self) -> list[int]:
        rows = self.ledger.query_rows(
            "SELECT batch_no FROM batches WHERE job_id = ? AND status IN ('pending', 'failed') ORDER BY batch_no",
            [self.job_id],
        )
        return [int(r[0]) for r in rows]

    def cached_vectors(self, embedder: CacheIdentity, hashes: list[str]) -> Lookup:
        """What the cache holds of these hashes (`Lookup.found`: content hash -> (vector, tokens reusing it saves);
        `prefetched`: those this job's Batch Mode paid for). Entries whose bytes the vector file lost (truncated or
        replaced while the job ran) are forgotten: misses, embedded again. The batches asking at once are looked up
        together, in one query and one round trip, riding along with the writes of the same group (as a paid
        embedder's texts are claimed: claim_texts): every batch of a free embedder asks here first."""
        if not hashes:
            return Lookup()

        def look_up_all(con: Any, requests: list[list[str]]) -> list[Lookup]:
            asked = [h for hashes in requests for h in hashes]
            found = lookup_vectors(
                con, self.ledger.vectors, embedder, asked, free_origin=batch_mode_origin(self.job_id)
            )
            forget(con, found.lost)
            return parts_of(found, requests, embedder)

        found = self.commit.write_combined(("cached_vectors", embedder_signature(embedder)), look_up_all, hashes)
        self.lost_vectors += len(found.lost)
        return found

    def heal_cache(self) -> int:
        """Forget the cache entries whose bytes lie past the end of the vector file (it was truncated, or deleted and
        started again) before this run appends anything: they are misses now, paid for once more. How many. The
        size is read inside the transaction: another process appends only while it holds the checkpoint file."""
        healed = self.commit.write(lambda con: forget_beyond(con.begin_now(), self.ledger.vectors.end()))  # in order
        self.lost_vectors += healed
        return healed

    def cached_generations(self, keys: list[str]) -> dict[str, str]:
        """Answers already paid for (by any job), by generation key."""
        if not keys:
            return {}
        placeholders = ", ".join("?" * len(keys))
        rows = self.ledger.query_rows(
            f"SELECT cache_key, answer FROM generations WHERE cache_key IN ({placeholders})", list(keys)
        )
        return {str(k): str(a) for k, a in rows}

    def pending_deletions(self, limit: int) -> list[tuple[str, str]]:
        rows = self.ledger.query_rows(
            "SELECT record_id, point_id FROM deletions WHERE job_id = ? AND NOT done ORDER BY record_id, point_id LIMIT ?",
            [self.job_id, limit],
        )
        return [(str(r), str(p)) for r, p in rows]

    @property
    def prefetched(self) -> int:
        """Batches whose records were read ahead and not yet claimed (at most MANIFEST_READ_AHEAD - 1)."""
        return self._manifest.held

    def last_error(self) -> str:
        errors = self.ledger.query_rows(
            "SELECT last_error FROM batches WHERE job_id = ? AND status = 'failed' ORDER BY finished_at DESC LIMIT 1",
            [self.job_id],
        )
        return str(errors[0][0]) if errors else "unknown"

    # -- batches ---------------------------------------------------------------------------------------------

    def claim(self, batch_no: int) -> BatchWork:
        """Take the batch for a new attempt and load its records. The claim (running, attempt + 1) is written in
        the batch's first write (batches.py). Raises NotClaimable if the batch is not pending or failed."""
        records, state = self._manifest.take(batch_no)
        return b.work_of(batch_no, b.next_attempt(self.job_id, batch_no, state), records)

    def complete(self, batches: Sequence[Completion]) -> None:
        """Mark batches done, in one transaction: Qdrant holds their points durably (see Sink.durable)."""

        def apply(con: Any) -> None:
            now = self.clock.now()
            b.mark_done(con, self.job_id, self.lease.token, batches, now)
            # Their texts' vectors are saved (and taken from the cache by whoever looks): nobody waits for them.
            claims.release(con, [key for done in batches for key in done.claims], self.lease.token)
            skipped = sum(done.work.records_among(done.skips) for done in batches)
            if skipped:
                con.execute(
                    "UPDATE jobs SET skipped_records = skipped_records + ? WHERE job_id = ?", [skipped, self.job_id]
                )
            b.record_points(con, self.job_id, self.target, self.embedder_signature, batches, now, self._replacing)

        self._write_for([done.work for done in batches], apply)

    def fail(self, work: BatchWork, error: str, held: Sequence[str] = ()) -> None:
        """Mark the batch failed, letting go of `held`: the text claims of the texts it paid for (their vectors are
        saved; Outcome.claims)."""

        def apply(con: Any) -> None:
            now = self.clock.now()
            b.mark_failed(con, self.job_id, work, error, now)
            b.end_attempt(con, self.job_id, work, self.lease.token, now, "failed", error)
            claims.release(con, list(held), self.lease.token)

        self._write_for([work], apply)

    def release(self, work: BatchWork, held: Sequence[str] = ()) -> None:
        """Hand an unfinished batch back (clean stop): pending again, its paid vectors kept, `held` let go (as
        `fail`). A batch whose claim was never written is pending already."""
        if not work.claimed:
            self.release_texts(list(held))
            return

        def apply(con: Any) -> None:
            b.mark_pending(con, self.job_id, work)
            b.end_attempt(con, self.job_id, work, self.lease.token, self.clock.now(), "released", None)
            claims.release(con, list(held), self.lease.token)

        self.commit.write(apply)

    def mark_deleted(self, point_ids: list[str]) -> None:
        """The points are gone from Qdrant (it acknowledged): record it, and forget them in `points`."""

        def apply(con: Any) -> None:
            con.execute(
                "UPDATE deletions SET done = true WHERE job_id = ? AND point_id IN (SELECT unnest(?::VARCHAR[]))",
                [self.job_id, point_ids],
            )
            con.execute(
                "DELETE FROM points WHERE target = ? AND point_id IN (SELECT unnest(?::VARCHAR[]))",
                [self.target, point_ids],
            )

        self.commit.write(apply)

    # -- what was paid for -------------------------------------------------------------------------------------

    def record_embeddings(
        self,
        work: BatchWork,
        embedder: CacheIdentity,
        hashes: list[str],
        vectors: Vectors,
        tokens_per_text: list[int],
        tokens_estimated: bool,
        cost: float,
        intent: str | None = None,
        media_tokens: int = 0,
        media_tokens_estimated: bool = False,
        uncounted: bool = False,
    ) -> None:
        """Persist freshly paid-for vectors and their cost, settling the call's intent. Called before the upsert.
        `media_tokens`: the part of the tokens that were images or document pages; `media_tokens_estimated`: that
        part was split by qsync's estimates, not reported by the API. `uncounted`: no usage came; the intent's bound
        stands until `settle_counted`. Answers recorded at once are recorded together (fresh.record_fresh)."""
        tokens, cost = (0, 0.0) if uncounted else (int(sum(tokens_per_text)), cost)
        state = "uncounted" if uncounted else "settled"
        answer = FreshVectors(work, hashes, self.appender(vectors), tokens_per_text, tokens, cost, tokens_estimated,
                              media_tokens, media_tokens_estimated, intent, state)  # fmt: skip

        def record(con: Any, answers: list[FreshVectors], ignore_existing: bool) -> list[None]:
            now = self.clock.now()  # the batches not claimed yet are claimed first (their callers hold `claiming`)
            b.claim(con, self.job_id, [a.work for a in answers if not a.work.claimed], self.lease.pid,
                    self.lease.token, now)  # fmt: skip
            return record_fresh(con, self.job_id, embedder, answers, now, ignore_existing=ignore_existing)

        signature = embedder_signature(embedder)
        with self._claiming([work]):
            try:  # another job may have saved one of the keys meanwhile: then again, keeping its copy
                self.commit.write_combined(("fresh", signature, False), partial(record, ignore_existing=False), answer)
            except duckdb.ConstraintException:
                self.commit.write_combined(("fresh", signature, True), partial(record, ignore_existing=True), answer)

    def settle_counted(self, embedder: CacheIdentity, calls: Sequence[spend.Counted]) -> set[str]:
        """Calls recorded `uncounted`, now counted: each (intent, batch, hashes, tokens per text, cost) still
        uncounted is settled, its tokens and cost added to its batch, in one transaction, with its cache rows' tokens
        made exact. Returns the intents settled (one settled before is not again)."""
        keys = [cache_key(embedder, h) for _, _, hashes, _, _ in calls for h in hashes]
        settled = [(intent, batch_no, sum(tokens), cost) for intent, batch_no, _, tokens, cost in calls]

        def apply(con: Any) -> set[str]:
            set_tokens(con, keys, [n for _, _, _, tokens, _ in calls for n in tokens])
            return spend.settle_counted(con, self.job_id, settled, self.clock.now())

        return self.commit.write(apply)

    def uncounted_calls(self) -> list[tuple[str, int, list[str], float, dict[str, tuple[str, int]]]]:
        with self.ledger.reading() as con:  # calls a crash left uncounted, with their texts and estimates
            calls = spend.uncounted_calls(con, self.job_id)
            return [(i, b, h, c, spend.planned_texts(con, self.job_id, h)) for i, b, h, c in calls]

    def record_generation(
        self, work: BatchWork, key: str, model: str, answer: str, tokens_in: int, tokens_out: int, cost: float,
        intent: str | None = None,
    ) -> None:  # fmt: skip
        """Persist one enrichment answer and its cost the moment it arrives."""

        def apply(con: Any) -> None:
            con.execute(
                "INSERT INTO generations VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [key, model, answer, tokens_in, tokens_out, cost, self.clock.now()],
            )
            con.execute(
                "UPDATE batches SET enrich_tokens = enrich_tokens + ?, enrich_cost_usd = enrich_cost_usd + ? "
                "WHERE job_id = ? AND batch_no = ?",
                [tokens_in + tokens_out, cost, self.job_id, work.batch_no],
            )
            self._settle(con, intent)

        self._write_for([work], apply)

    # -- texts paid for right now, across processes -------------------------------------------------------------

    def claim_texts(self, embedder: CacheIdentity, hashes: list[str]) -> tuple[Lookup, set[str]]:
        """Claim these texts for this run's calls, in the transaction that looks for them in the cache and in other
        runs' claims (claims.claim_uncached): what the cache holds of them, and the hashes another live run is
        paying for right now (to wait for)."""

        def claim_all(con: Any, requests: list[list[str]]) -> list[tuple[Lookup, set[str]]]:
            return claims.claim_uncached_many(con, self.ledger.vectors, embedder, requests, self.job_id,
                                              self.lease.token, self.clock.now(), batch_mode_origin(self.job_id))  # fmt: skip

        # The batches asking at once (a run's start: all of them) are claimed together, in one round trip.
        kind = ("claim_texts", embedder_signature(embedder))
        found, elsewhere = self.commit.write_combined(kind, claim_all, hashes)
        self.lost_vectors += len(found.lost)
        return found, elsewhere

    def claimed_elsewhere(self, keys: list[str]) -> set[str]:
        """Of these cache keys, those another live run still has claimed."""
        with self.ledger.reading() as con:
            return claims.held_elsewhere(con, keys, self.lease.token, self.clock.now())

    def release_texts(self, keys: list[str]) -> None:
        if keys:
            self.commit.write(lambda con: claims.release(con, keys, self.lease.token))

    # -- write-ahead for money ------------------------------------------------------------------------------------

    def open_intent(
        self,
        kind: str,
        work: BatchWork | None,
        texts: int,
        tokens: int,
        cost: float,
        hashes: list[str] | None = None,
        intent: str | None = None,
    ) -> str:
        """Record a paid call before it is sent: `tokens` and `cost` are what it can cost at most; `work`: the batch
        it is for (None: Batch Mode); `intent`: its id when the caller names it (a Batch Mode job's display name).
        Returns the intent's id, to settle (`record_*`) or close (`close_intent`). The intents of batches that open
        theirs at once (a run's start) are written together, with the claims of the batches not claimed yet."""
        call = spend.Intent(None if work is None else work.batch_no, kind, texts, tokens, cost, hashes, intent)
        if work is None or work.claimed:
            return self._open(None, call)
        with work.claiming:  # writes of one batch may run at once (its enrichment calls): the first claims
            opened = self._open(None if work.claimed else work, call)
            work.claimed = True
            return opened

    def _open(self, claiming: BatchWork | None, call: spend.Intent) -> str:
        arg: tuple[BatchWork | None, spend.Intent] = (claiming, call)
        return self.commit.write_combined("open_intent", self._open_intents, arg)

    def _open_intents(self, con: Any, calls: list[tuple[BatchWork | None, spend.Intent]]) -> list[str]:
        """Open these intents, claiming first the batches given with them (their first write)."""
        now = self.clock.now()
        b.claim(con, self.job_id, [work for work, _ in calls if work is not None], self.lease.pid, self.lease.token,
                now)  # fmt: skip
        return spend.open_intents(con, self.job_id, [call for _, call in calls], self.lease.token, now)

    def close_intent(self, intent: str, state: str) -> None:
        """The call ended without an answer to save: 'void' (refused, so not billed) or 'unconfirmed' (it may have
        been billed: a timeout, a dropped connection)."""
        self.commit.write(lambda con: spend.close_intent(con, self.job_id, intent, state, self.clock.now()))

    def _settle(self, con: Any, intent: str | None, state: str = "settled") -> None:
        if intent is not None:
            spend.close_intent(con, self.job_id, intent, state, self.clock.now())

    def count_unconfirmed(self, count_tokens: Callable[[list[str]], int], prices: dict[str, float]) -> int:
        """Replace the upper bound of unconfirmed paid calls by their exact token count (spend.count_unconfirmed);
        how many intents were counted."""
        return spend.count_unconfirmed(self.ledger, self.commit.write, self.job_id, count_tokens, prices)

    # -- plumbing ---------------------------------------------------------------------------------------------------

    def appender(self, vectors: Vectors) -> Appender:
        """`offsets(con[, end_checked])`: these vectors appended to the vector file inside the lease-checked
        transaction that records them, once however often it is tried (fresh.Appender); lost entries it finds are
        counted in `lost_vectors`."""

        def count_lost(lost: int) -> None:
            self.lost_vectors += lost

        return Appender(self.ledger.vectors, vectors, count_lost)

    def write_vectors(self, apply: Callable[[Any, bool], None]) -> None:
        """Commit rows of new vectors that belong to no batch (Batch Mode's); if another job saved one of the keys
        meanwhile, again, keeping its. A batch's answers: `record_embeddings`."""
        try:
            self.commit.write(lambda con: apply(con, False))
        except duckdb.ConstraintException:
            self.commit.write(lambda con: apply(con, True))

    def _write_for(self, works: Sequence[BatchWork], apply: Callable[[Any], T]) -> T:
        """Write a change to these batches, claiming first (same transaction) those not claimed yet."""
        with self._claiming(works) as unclaimed:

            def claimed_then(con: Any) -> T:
                b.claim(con, self.job_id, unclaimed, self.lease.pid, self.lease.token, self.clock.now())
                return apply(con)

            return self.commit.write(claimed_then)

    @contextlib.contextmanager
    def _claiming(self, works: Sequence[BatchWork]) -> Iterator[list[BatchWork]]:
        """Hold these batches' claiming locks around their first write (writes of one batch may run at once: its
        enrichment calls; the first claims, the others wait): the batches not claimed yet, marked claimed once the
        write committed."""
        if all(work.claimed for work in works):
            yield []  # nothing to wait for: writes of claimed batches go straight on
            return
        with contextlib.ExitStack() as held:
            for work in sorted(works, key=lambda w: w.batch_no):
                held.enter_context(work.claiming)
            unclaimed = [work for work in works if not work.claimed]
            yield unclaimed
            for work in unclaimed:
                work.claimed = True
