"""The runner: pending batches, concurrently, each embed -> persist -> upsert (wait) -> mark done.

Order matters and is the whole point:
1. claim (ledger) and look every text up in the embedding cache;
2. embed only the misses, and persist those vectors with their cost at once (never pay twice);
3. upsert into Qdrant with wait=True;
4. mark the batch done, only now that Qdrant acknowledged it (nothing lost).
A SIGKILL at any point leaves each batch either done or unfinished with its paid vectors cached.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import math
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from . import lease as leases
from .budget import Budget
from .clock import SYSTEM_CLOCK, Clock
from .embedders.base import Embedder
from .enrich import Enricher, generation_key
from .errors import (
    InvalidInput,
    LeaseLost,
    PauseJob,
    PermanentError,
    QsyncError,
    StopJob,
    StoreError,
    TransientError,
)
from .events import BatchFinished, JobFinished, JobStarted, Listener, Notice, Progress, emit
from .ledger import BatchWork, Ledger, embedder_signature
from .retry import RetryPolicy
from .sink import QdrantSink
from .store import Store

log = logging.getLogger("qsync")


@dataclass
class RunSettings:
    concurrency: int = 4
    max_attempts: int = 5  # per batch, per run; `qsync resume` grants a failed batch new attempts
    heartbeat_s: float = 5.0
    stale_after_s: float = 60.0
    retry_base_s: float = 1.0
    retry_max_s: float = 60.0
    max_cost_usd: float | None = None  # pause the job before its embedding cost would pass this
    batch_mode: bool = False  # prefetch vectors with Gemini Batch Mode (half price, slow) before upserting
    batch_mode_poll_s: float = 30.0
    only_batches: set[int] | None = None  # run just these (e.g. retry selected batches from a notebook)


@dataclass(frozen=True)
class RunResult:
    job_id: str
    status: str  # completed | paused | failed | cancelled
    message: str | None
    run_records: int
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return self.status == "completed"


@dataclass
class _Outcome:
    batch_no: int
    outcome: str  # done | failed | released | lost
    records: int = 0
    embedded: int = 0
    cache_hits: int = 0
    tokens: int = 0
    cost: float = 0.0
    saved_tokens: int = 0
    error: str | None = None
    transient: bool = False
    retry_after_s: float | None = None
    skipped: int = 0
    fatal: BaseException | None = None  # the runner cannot go on (lease lost, store broken)
    halt: BaseException | None = None  # the job must stop (PauseJob: resumable; StopJob: failed)


@dataclass
class _Totals:
    total_records: int
    skipped_records: int
    batches_total: int
    done_records: int
    batches_done: int
    tokens: int
    cost_usd: float
    saved_tokens: int
    failed: set[int] = field(default_factory=set)


class Runner:
    def __init__(
        self,
        store: Store,
        job_id: str,
        embedder: Embedder,
        sink: QdrantSink,
        settings: RunSettings | None = None,
        listeners: list[Listener] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.embedder = embedder
        self.sink = sink
        self.settings = settings or RunSettings()
        self.listeners = list(listeners or [])
        self.clock = clock
        self._stop = threading.Event()  # finish in-flight work, then pause
        self._cancel = threading.Event()
        self._lost: BaseException | None = None
        self._halt: BaseException | None = None
        self.budget = Budget(self.settings.max_cost_usd)
        self.enricher: Enricher | None = None  # set by make_runner when the job enriches
        self.target = sink.target
        self.embedder_signature = embedder_signature(embedder)
        self._deletion_error: str | None = None
        self._retry = RetryPolicy(base_s=self.settings.retry_base_s, max_s=self.settings.retry_max_s, clock=clock)

    def request_stop(self) -> None:
        """Pause after the batches in flight (within one embed call). Safe from any thread."""
        self._stop.set()

    def request_cancel(self) -> None:
        """Stop like request_stop, and leave the job cancelled. Safe from any thread."""
        self._cancel.set()

    # -- main loop ---------------------------------------------------------------------------------

    def run(self) -> RunResult:
        started = self.clock.monotonic()
        lease, took_over = leases.acquire(self.store, self.job_id, self.clock, self.settings.stale_after_s)
        ledger = Ledger(self.store, lease, self.clock, self.target, self.embedder_signature)
        run_records = 0
        heartbeat_stop = threading.Event()
        heartbeat = threading.Thread(
            target=self._heartbeat, args=(lease, heartbeat_stop), name="qsync-heartbeat", daemon=True
        )
        heartbeat.start()
        try:
            try:
                self._retry.call(self.sink.ensure_collection, on_retry=self._notify_retry)  # waits for a Qdrant away
            except QsyncError as exc:
                refusal = f"Qdrant refused the collection: {exc}"
                leases.release(self.store, lease, self.clock, "failed", refusal)
                emit(self.listeners, JobFinished(self.job_id, "failed", refusal))
                return RunResult(self.job_id, "failed", refusal, 0, 0.0)
            totals = self._read_totals()
            self.budget.spent_usd = totals.cost_usd
            emit(
                self.listeners,
                JobStarted(
                    self.job_id,
                    totals.total_records,
                    totals.done_records,
                    totals.skipped_records,
                    totals.batches_total,
                    totals.batches_done,
                    took_over,
                ),
            )
            if self.settings.batch_mode:
                self._prefetch(lease)
            only = self.settings.only_batches
            runnable = [] if self._stopping() else ledger.runnable_batches()
            ready: list[tuple[float, int]] = [(0.0, b) for b in runnable if only is None or b in only]
            heapq.heapify(ready)
            attempts: dict[int, int] = {}
            work_q: queue.Queue[int | None] = queue.Queue()
            done_q: queue.Queue[_Outcome] = queue.Queue()
            workers = [
                threading.Thread(
                    target=self._worker, args=(ledger, work_q, done_q), name=f"qsync-worker-{i}", daemon=True
                )
                for i in range(max(1, self.settings.concurrency))
            ]
            for w in workers:
                w.start()
            in_flight = 0
            interrupted = 0
            while True:
                try:
                    now = self.clock.monotonic()
                    while ready and in_flight < len(workers) and ready[0][0] <= now and not self._stopping():
                        _, batch_no = heapq.heappop(ready)
                        attempts[batch_no] = attempts.get(batch_no, 0) + 1
                        work_q.put(batch_no)
                        in_flight += 1
                    if in_flight == 0 and (not ready or self._stopping()):
                        break
                    try:
                        outcome = done_q.get(timeout=0.05)
                    except queue.Empty:
                        continue
                    in_flight -= 1
                    if outcome.fatal is not None:
                        self._lost = self._lost or outcome.fatal
                        continue
                    if outcome.halt is not None:
                        self._halt = self._halt or outcome.halt
                        continue
                    totals.tokens += outcome.tokens
                    totals.cost_usd += outcome.cost
                    totals.saved_tokens += outcome.saved_tokens
                    if outcome.outcome == "done":
                        totals.done_records += outcome.records
                        totals.skipped_records += outcome.skipped
                        totals.batches_done += 1
                        totals.failed.discard(outcome.batch_no)
                        run_records += outcome.records
                    elif outcome.outcome == "failed":
                        totals.failed.add(outcome.batch_no)
                        if outcome.transient and attempts[outcome.batch_no] < self.settings.max_attempts:
                            delay = self._retry.delay(attempts[outcome.batch_no], outcome.retry_after_s)
                            heapq.heappush(ready, (self.clock.monotonic() + delay, outcome.batch_no))
                    emit(
                        self.listeners,
                        BatchFinished(
                            self.job_id,
                            outcome.batch_no,
                            outcome.outcome,
                            outcome.records,
                            outcome.embedded,
                            outcome.cache_hits,
                            outcome.error,
                        ),
                    )
                    emit(self.listeners, self._progress(totals, run_records, started))
                except KeyboardInterrupt:
                    interrupted += 1
                    self._stop.set()
                    if interrupted > 1:
                        break  # second Ctrl-C: stop now; leftovers go back to pending below
                    emit(
                        self.listeners,
                        Notice(self.job_id, "stopping after the batches in flight (Ctrl-C again to stop at once)"),
                    )
            for _ in workers:
                work_q.put(None)
            if not interrupted:
                for w in workers:
                    w.join(timeout=30)
            if self._lost is not None:
                self._give_up(lease, self._lost)
                raise self._lost
            if not interrupted and not self._stopping() and totals.batches_done == totals.batches_total:
                self._apply_deletions(ledger)
            status, message = self._final_status(totals)
            leases.release(self.store, lease, self.clock, status, message)
            emit(self.listeners, JobFinished(self.job_id, status, message))
            return RunResult(self.job_id, status, message, run_records, self.clock.monotonic() - started)
        finally:
            heartbeat_stop.set()
            heartbeat.join(timeout=30)
            self.sink.close()

    def _notify_retry(self, exc: TransientError, wait: float) -> None:
        emit(self.listeners, Notice(self.job_id, f"{exc}; trying again in {wait:.0f}s"))

    def _apply_deletions(self, ledger: Ledger) -> None:
        """Delete the points of records that left the source (--delete-missing), 500 at a time."""
        while chunk := ledger.pending_deletions(500):
            try:
                self._retry.call(partial(self.sink.delete, [p for _, p in chunk]))
            except QsyncError as exc:
                self._deletion_error = f"could not delete points of records that left the source: {exc}"
                return
            ledger.mark_deleted([r for r, _ in chunk])
            emit(self.listeners, Notice(self.job_id, f"deleted {len(chunk)} points of records that left the source"))

    def _prefetch(self, lease: leases.Lease) -> None:
        """Batch Mode: fill the cache with half-price vectors first; the run then upserts from it."""
        from .batchmode import BatchModePrefetcher

        emit(self.listeners, Notice(self.job_id, "Batch Mode: submitting uncached texts and polling for results"))
        prefetcher = BatchModePrefetcher(
            self.store, lease, self.embedder, self.clock,
            getattr(self.embedder, "batch_price_per_million_tokens", self.embedder.price_per_million_tokens),
            self.budget,
            poll_s=self.settings.batch_mode_poll_s,
        )  # fmt: skip
        try:
            prefetcher.run(self._stop)
        except (PauseJob, StopJob) as exc:
            self._halt = exc
        except KeyboardInterrupt:
            self._stop.set()

    def _give_up(self, lease: leases.Lease, error: BaseException) -> None:
        """After a fatal error, leave the job `failed` with the reason, unless we no longer own it."""
        if isinstance(error, LeaseLost):
            return  # not ours any more: write nothing
        message = f"stopped by an error: {type(error).__name__}: {error}; `qsync resume {self.job_id}` retries"
        try:
            leases.release(self.store, lease, self.clock, "failed", message)
        except QsyncError:
            log.warning("qsync could not record the failure of %s; it will show as stale", self.job_id)
        emit(self.listeners, JobFinished(self.job_id, "failed", message))

    def _stopping(self) -> bool:
        return self._stop.is_set() or self._cancel.is_set() or self._lost is not None or self._halt is not None

    def _final_status(self, totals: _Totals) -> tuple[str, str | None]:
        if self._cancel.is_set():
            return "cancelled", "cancelled by `qsync cancel`"
        remaining = totals.batches_total - totals.batches_done
        if remaining == 0 and self._deletion_error is not None:
            return "failed", f"{self._deletion_error}; `qsync resume {self.job_id}` retries"
        if remaining == 0:
            return "completed", None
        if isinstance(self._halt, PauseJob):
            return "paused", f"{self._halt} (`qsync resume {self.job_id}`)"
        if self._halt is not None:
            return "failed", f"{self._halt} (`qsync resume {self.job_id}`)"
        if self._stop.is_set():
            return "paused", f"stopped with {remaining} batches to go; `qsync resume {self.job_id}` continues"
        if self.settings.only_batches is not None and not (totals.failed & self.settings.only_batches):
            return "paused", f"the chosen batches are done; {remaining} to go: `qsync resume {self.job_id}` continues"
        errors = self.store.query_rows(
            "SELECT last_error FROM batches WHERE job_id = ? AND status = 'failed' ORDER BY finished_at DESC LIMIT 1",
            [self.job_id],
        )
        last = errors[0][0] if errors else "unknown"
        return "failed", (
            f"{len(totals.failed)} batch{'es' if len(totals.failed) != 1 else ''} failed (last error: {last}); "
            f"`qsync batches {self.job_id} --status failed` lists them, `qsync resume {self.job_id}` retries them"
        )

    def _progress(self, totals: _Totals, run_records: int, started: float) -> Progress:
        return Progress(
            self.job_id,
            totals.total_records,
            totals.done_records,
            totals.skipped_records,
            totals.batches_total,
            totals.batches_done,
            len(totals.failed),
            totals.tokens,
            totals.cost_usd,
            totals.saved_tokens,
            run_records,
            self.clock.monotonic() - started,
        )

    def _read_totals(self) -> _Totals:
        row = self.store.query_rows(
            """SELECT j.total_records, j.skipped_records + coalesce(j.unchanged_records, 0), j.batches_total,
                      coalesce(sum(b.records - b.skipped_records) FILTER (WHERE b.status = 'done'), 0),
                      count(*) FILTER (WHERE b.status = 'done'),
                      coalesce(sum(b.tokens), 0), coalesce(sum(b.cost_usd), 0), coalesce(sum(b.saved_tokens), 0),
                      list(b.batch_no) FILTER (WHERE b.status = 'failed')
               FROM jobs j LEFT JOIN batches b USING (job_id) WHERE j.job_id = ?
               GROUP BY ALL""",
            [self.job_id],
        )[0]
        return _Totals(
            int(row[0]),
            int(row[1]),
            int(row[2]),
            int(row[3]),
            int(row[4]),
            int(row[5]),
            float(row[6]),
            int(row[7]),
            set(row[8] or []),
        )

    # -- threads -----------------------------------------------------------------------------------

    def _heartbeat(self, lease: leases.Lease, stop: threading.Event) -> None:
        while not stop.wait(self.settings.heartbeat_s):
            try:
                if not leases.renew(self.store, lease, self.clock):
                    self._cancel.set()
            except LeaseLost as exc:
                self._lost = exc
                return
            except StoreError as exc:  # the file is busy or the disk is full: the next beat may succeed
                log.warning("qsync heartbeat failed: %s", exc)

    def _worker(self, ledger: Ledger, work_q: queue.Queue[int | None], done_q: queue.Queue[_Outcome]) -> None:
        while (batch_no := work_q.get()) is not None:
            try:
                done_q.put(self._process(ledger, batch_no))
            except BaseException as exc:  # never let a worker die silently: the scheduler waits on it
                done_q.put(_Outcome(batch_no, "lost", fatal=exc))

    def _process(self, ledger: Ledger, batch_no: int) -> _Outcome:
        t0 = time.monotonic()
        try:
            work = ledger.claim(batch_no, self.embedder)
        except (LeaseLost, StoreError) as exc:
            return _Outcome(batch_no, "lost", fatal=exc)
        outcome = _Outcome(batch_no, "failed", records=len(work.record_ids))
        try:
            if self._stopping():
                ledger.release(work)
                outcome.outcome = "released"
                return outcome
            refused = self._enrich(ledger, work, outcome) if self.enricher is not None else {}
            vectors, rejected = self._vectors(ledger, work, outcome, refused)
            if self._stopping():  # paid vectors are cached: releasing now loses nothing
                ledger.release(work)
                outcome.outcome = "released"
                return outcome
            keep = [i for i, h in enumerate(work.hashes) if h not in rejected]
            if keep:
                payloads = [_load_payload(work.payloads[i]) for i in keep]
                self.sink.upsert([work.record_ids[i] for i in keep], vectors[keep], payloads)
            skips = {i: rejected[h] for i, h in enumerate(work.hashes) if h in rejected}
            ledger.complete(work, outcome.cache_hits, outcome.saved_tokens, time.monotonic() - t0, skips)
            outcome.outcome = "done"
            outcome.records = len(keep)
            outcome.skipped = len(skips)
            return outcome
        except (LeaseLost, StoreError) as exc:
            return _Outcome(batch_no, "lost", fatal=exc)
        except (PauseJob, StopJob) as exc:
            # The job must stop: this batch is not at fault, so it goes back to pending untouched.
            try:
                ledger.release(work)
            except (LeaseLost, StoreError) as lost:
                return _Outcome(batch_no, "lost", fatal=lost)
            return _Outcome(batch_no, "halted", error=str(exc), halt=exc)
        except TransientError as exc:
            outcome.error, outcome.transient, outcome.retry_after_s = str(exc), True, exc.retry_after_s
        except PermanentError as exc:
            outcome.error = str(exc)
        except Exception as exc:  # a bug or an unconverted library error: fail this batch, keep the job going
            outcome.error = f"{type(exc).__name__}: {exc}"
            log.exception("qsync batch %s failed unexpectedly", batch_no)
        try:
            ledger.fail(work, outcome.error or "unknown error")
        except (LeaseLost, StoreError) as exc:
            return _Outcome(batch_no, "lost", fatal=exc)
        return outcome

    def _enrich(self, ledger: Ledger, work: BatchWork, outcome: _Outcome) -> dict[str, str]:
        """Ask the enrichment model about each record (cached answers are free); put the answers into the
        payloads and, if the job says so, into the texts to embed. Returns records it refused (hash -> why)."""
        assert self.enricher is not None
        spec = self.enricher.spec
        payloads = [_load_payload(p) for p in work.payloads]
        prompts = [spec.render(t, p) for t, p in zip(work.texts, payloads, strict=True)]
        keys = [generation_key(spec.model, p) for p in prompts]
        answers = ledger.cached_generations(sorted(set(keys)))
        missing = {k: p for k, p in zip(keys, prompts, strict=True) if k not in answers}
        refused: dict[str, str] = {}

        def generate(key: str, prompt: str) -> tuple[str, float]:
            assert self.enricher is not None
            estimate = math.ceil(len(prompt.encode("utf-8")) / 4) * self.enricher.price_in / 1e6
            self.budget.reserve(estimate)
            try:
                answer, tokens_in, tokens_out, cost = self.enricher.generate(prompt)
            except BaseException:
                self.budget.settle(estimate, 0.0)
                raise
            self.budget.settle(estimate, cost)
            ledger.record_generation(work, key, spec.model, answer, tokens_in, tokens_out, cost)
            return answer, cost

        if missing:
            with ThreadPoolExecutor(max_workers=min(8, len(missing)), thread_name_prefix="qsync-enrich") as pool:
                futures = {pool.submit(generate, k, p): k for k, p in missing.items()}
                for future in as_completed(futures):
                    try:
                        answers[futures[future]], cost = future.result()
                        outcome.cost += cost
                    except InvalidInput as exc:
                        refused[futures[future]] = f"refused by the enrichment model: {exc}"
        refused_hashes: dict[str, str] = {}
        for i, key in enumerate(keys):
            if key in refused:
                refused_hashes[work.hashes[i]] = refused[key]
                continue
            payloads[i][spec.field] = answers[key]
            work.payloads[i] = json.dumps(payloads[i])
            text = spec.text_to_embed(work.texts[i], answers[key])
            if text != work.texts[i]:
                work.texts[i] = text
                work.hashes[i] = hashlib.sha256(text.encode("utf-8")).hexdigest()
                work.token_estimates[i] = math.ceil(len(text.encode("utf-8")) / 4)
        return refused_hashes

    def _vectors(
        self, ledger: Ledger, work: BatchWork, outcome: _Outcome, refused: dict[str, str] | None = None
    ) -> tuple[np.ndarray, dict[str, str]]:
        """Vectors for every record of the batch, and the texts the API refused (hash -> reason).

        Cached vectors are free; the rest are embedded and persisted call by call, before anything else
        can fail. A request refused for its content is split in halves until the refused text is alone.
        """
        dims = self.embedder.dimensions
        if self.enricher is not None:  # the texts changed after claim looked the cache up
            work.cached = ledger.cached_vectors(self.embedder, work.hashes)
        by_hash = {h: v for h, (v, _) in work.cached.items()}
        missing: dict[str, tuple[str, int]] = {}
        rejected: dict[str, str] = dict(refused or {})
        for h, text, estimate in zip(work.hashes, work.texts, work.token_estimates, strict=True):
            if h not in by_hash and h not in rejected:
                missing.setdefault(h, (text, estimate))
        outcome.cache_hits = len(set(work.hashes)) - len(missing)
        outcome.saved_tokens = sum(t for _, t in work.cached.values())
        price = self.embedder.price_per_million_tokens / 1_000_000
        pending = [list(missing)] if missing else []
        while pending:
            hashes = pending.pop()
            reserved = sum(missing[h][1] for h in hashes) * price
            self.budget.reserve(reserved)
            try:
                result = self.embedder.embed([missing[h][0] for h in hashes])
            except InvalidInput as exc:
                self.budget.settle(reserved, 0.0)
                if len(hashes) == 1:
                    rejected[hashes[0]] = f"refused by the embedder: {exc}"
                else:
                    half = len(hashes) // 2
                    pending += [hashes[half:], hashes[:half]]
                continue
            except BaseException:
                self.budget.settle(reserved, 0.0)
                raise
            cost = ledger.record_embeddings(
                work, self.embedder, hashes, result.vectors, result.tokens_per_text, result.tokens_estimated
            )
            self.budget.settle(reserved, cost)
            outcome.embedded += len(hashes)
            outcome.tokens += sum(result.tokens_per_text)
            outcome.cost += cost
            for h, vec in zip(hashes, result.vectors, strict=True):
                by_hash[h] = vec
        zero = np.zeros(dims, dtype=np.float32)
        return np.stack([by_hash.get(h, zero) for h in work.hashes]), rejected


def _load_payload(text: str) -> dict[str, object]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {}
