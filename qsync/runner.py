"""A run of one job: take the lease, prepare the collection, run the stages and the batches, release.

The parts, each in its own module: the lease and its heartbeat (lease.py), the writes (checkpoint.py),
one batch from claim to done (pipeline.py), the worker threads (scheduler.py), the one retry layer and
interruptible waits (retry.py, control.py), and the Gemini-only stages (enrich.py, batchmode.py). The
runner is built whole by `make_runner` (api.py) and never configured after construction.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import checkpoint as cp
from .budget import Budget
from .checkpoint import Checkpoint, JobState
from .clock import SYSTEM_CLOCK, Clock
from .control import Control, Interrupted
from .embedders.base import Embedder, default_limits
from .enrich import Enricher, EnrichStage
from .errors import LeaseLost, PauseJob, QsyncError, StopJob, StoreError, TransientError
from .events import BatchFinished, JobFinished, JobStarted, Listener, Notice, Progress, emit
from .figures import JobFigures, job_figures
from .inflight import InFlight
from .lease import Heartbeat, Lease
from .pipeline import BatchPipeline, BatchStage, Outcome
from .ratelimit import RateLimiter
from .retry import Retrier, RetryPolicy
from .scheduler import Scheduler
from .sink import QdrantSink
from .spec import JobSpec, RunSettings
from .store import Store

log = logging.getLogger("qsync")
_PROGRESS_EVERY_S = 0.5  # figures are read from the checkpoint at most this often while running


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
class _Tally:
    run_records: int = 0
    batches_done: int = 0
    failed: set[int] = field(default_factory=set)
    fatal: BaseException | None = None
    halt: BaseException | None = None
    last_progress: float = 0.0


class Runner:
    def __init__(
        self,
        store: Store,
        job_id: str,
        spec: JobSpec,
        embedder: Embedder,
        sink: QdrantSink,
        settings: RunSettings,
        max_cost_usd: float | None,
        embedder_signature: str,
        *,
        enricher: Enricher | None = None,  # when the job enriches
        listeners: Sequence[Listener] = (),
        only_batches: frozenset[int] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        control: Control | None = None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.spec = spec
        self.embedder = embedder
        self.sink = sink
        self.settings = settings
        self.max_cost_usd = max_cost_usd
        self.embedder_signature = embedder_signature
        self.enricher = enricher
        self.listeners = list(listeners)
        self.only_batches = only_batches
        self.clock = clock
        self.control = control or Control()
        self._scheduler: Scheduler | None = None

    @property
    def batches_in_flight(self) -> int:
        """Batches this run is working on now (the checkpoint shows a batch running from its first write)."""
        scheduler = self._scheduler
        return scheduler.in_flight if scheduler is not None else 0

    def request_stop(self) -> None:
        """Pause after the API calls in flight; waits (backoff, rate limit) end at once. Any thread."""
        self.control.request_stop()

    def request_cancel(self) -> None:
        """Stop like request_stop, and leave the job cancelled. Safe from any thread."""
        self.control.request_cancel()

    def run(self) -> RunResult:
        started = time.monotonic()
        lease, took_over = cp.acquire_lease(
            self.store, self.job_id, self.clock, self.settings.stale_after_s, os.getpid()
        )
        checkpoint = Checkpoint(self.store, lease, self.clock, self.spec.target, self.embedder_signature)
        retrier = Retrier(
            RetryPolicy(self.settings.max_attempts, self.settings.retry_base_s, self.settings.retry_max_s),
            self.control,
            on_retry=self._notify_retry,
        )
        heartbeat = Heartbeat(
            lambda: cp.renew_lease(self.store, lease, self.clock),
            self.settings.heartbeat_s,
            on_cancel=self.control.request_cancel,
            on_lost=self.control.request_stop,
        )
        tally = _Tally()
        try:
            with self.store.held(), heartbeat:
                try:
                    retrier.call(self.sink.ensure_collection)  # waits, with backoff, for a Qdrant that is away
                except Interrupted:  # paused (or cancelled) while waiting for Qdrant: nothing was done yet
                    state = JobState.CANCELLED if self.control.cancelled else JobState.PAUSED
                    return self._finish(lease, state, f"{state.value} before the collection was ready", tally, started)
                except QsyncError as exc:
                    return self._finish(lease, JobState.FAILED, f"Qdrant refused the collection: {exc}", tally, started)
                self._count_unconfirmed(checkpoint)
                figures = job_figures(self.store, self.clock, self.job_id)
                budget = Budget(self.max_cost_usd, spent_usd=figures.cost_usd + figures.unconfirmed_cost_usd)
                emit(self.listeners, JobStarted(self.job_id, figures, took_over))
                self._run_batches(checkpoint, retrier, budget, tally, started)
                if heartbeat.lost is not None:
                    tally.fatal = tally.fatal or heartbeat.lost
                if tally.fatal is not None:
                    self._give_up(lease, tally.fatal)
                    raise tally.fatal
                state, message = self._final_state(checkpoint, retrier, tally)
                self._count_unconfirmed(checkpoint)  # calls that timed out here: priced exactly, not at the bound
                return self._finish(lease, state, message, tally, started)
        finally:
            self.sink.close()

    def _count_unconfirmed(self, checkpoint: Checkpoint) -> None:
        """Calls a crash cut off were recorded at the most they could cost; count them exactly now (a free
        countTokens call per intent) when the embedder can, so the figures and the budget are not inflated."""
        count = getattr(self.embedder, "count_tokens", None)
        if count is None:
            return
        try:
            checkpoint.count_unconfirmed(count, self.embedder.price_per_million_tokens)
        except QsyncError as exc:  # no key, API away: the upper bound stands, which errs on the safe side
            log.warning("qsync could not count unconfirmed calls exactly: %s", exc)

    def _run_batches(
        self, checkpoint: Checkpoint, retrier: Retrier, budget: Budget, tally: _Tally, started: float
    ) -> None:
        stages: list[BatchStage] = []
        if self.enricher is not None:
            stages.append(EnrichStage(self.enricher, checkpoint, budget, retrier))
        if self.spec.batch_mode:
            from .batchmode import BatchModeStage

            emit(self.listeners, Notice(self.job_id, "Batch Mode: submitting uncached texts and polling for results"))
            try:
                BatchModeStage(
                    checkpoint, self.embedder, budget, retrier, self.control, poll_s=self.settings.batch_mode_poll_s
                ).before_run()
            except (PauseJob, StopJob) as exc:
                tally.halt = exc
            except Interrupted:
                pass
        texts_limit, tokens_limit = default_limits(self.embedder)
        texts_limit = self.settings.texts_per_minute or texts_limit
        tokens_limit = self.settings.tokens_per_minute or tokens_limit
        limiter = RateLimiter(texts_limit, tokens_limit) if texts_limit or tokens_limit else None
        pipeline = BatchPipeline(
            checkpoint, self.embedder, self.sink, retrier, self.control, budget, limiter, InFlight(), stages
        )
        runnable = [] if self.control.stopping or tally.halt is not None else checkpoint.runnable_batches()
        if self.only_batches is not None:
            runnable = [b for b in runnable if b in self.only_batches]

        def on_outcome(outcome: Outcome) -> None:
            self._tally(outcome, tally)
            emit(self.listeners, BatchFinished(self.job_id, outcome.batch_no, outcome.kind, outcome.records,
                                               outcome.embedded, outcome.cache_hits, outcome.error))  # fmt: skip
            now = time.monotonic()
            if now - tally.last_progress >= _PROGRESS_EVERY_S:
                tally.last_progress = now
                self._emit_progress(tally, started)

        def on_interrupt() -> None:
            emit(
                self.listeners, Notice(self.job_id, "stopping after the calls in flight (Ctrl-C again to stop at once)")
            )

        self._scheduler = Scheduler(pipeline, self.settings.concurrency, self.control)
        self._scheduler.run(runnable, on_outcome, on_interrupt)
        self._emit_progress(tally, started)

    def _tally(self, outcome: Outcome, tally: _Tally) -> None:
        if outcome.fatal is not None:
            tally.fatal = tally.fatal or outcome.fatal
        elif outcome.halt is not None:
            tally.halt = tally.halt or outcome.halt
        elif outcome.kind == "done":
            tally.run_records += outcome.records + outcome.skipped
            tally.batches_done += 1
            tally.failed.discard(outcome.batch_no)
        elif outcome.kind == "failed":
            tally.failed.add(outcome.batch_no)

    def _emit_progress(self, tally: _Tally, started: float) -> None:
        if not self.listeners:
            return  # nobody to tell: the figures query is not free
        try:
            figures = job_figures(self.store, self.clock, self.job_id)
        except StoreError as exc:  # a progress bar must never stop a paid backfill
            log.warning("qsync could not read progress: %s", exc)
            return
        emit(self.listeners, Progress(self.job_id, figures, tally.run_records, time.monotonic() - started))

    def _notify_retry(self, exc: TransientError, wait: float) -> None:
        emit(self.listeners, Notice(self.job_id, f"{exc}; trying again in {wait:.0f}s"))

    def _final_state(self, checkpoint: Checkpoint, retrier: Retrier, tally: _Tally) -> tuple[JobState, str | None]:
        figures = job_figures(self.store, self.clock, self.job_id)
        remaining = figures.batches_total - figures.batches_done
        if self.control.cancelled:
            return JobState.CANCELLED, "cancelled"
        if isinstance(tally.halt, PauseJob):
            return JobState.PAUSED, str(tally.halt)
        if tally.halt is not None:
            return JobState.FAILED, str(tally.halt)
        if remaining == 0:
            if self.control.stopping and checkpoint.pending_deletions(1):
                return JobState.PAUSED, "paused before deleting the points of records that left the source"
            deletion_error = self._apply_deletions(checkpoint, retrier)
            if deletion_error is not None:
                return JobState.FAILED, deletion_error
            return JobState.COMPLETED, None
        if self.control.stopping:
            return JobState.PAUSED, f"paused with {remaining} batch{'es' if remaining != 1 else ''} to go"
        if self.only_batches is not None and not (set(checkpoint.runnable_batches()) & self.only_batches):
            return JobState.PAUSED, f"the chosen batches are done; {remaining} to go"
        failed = figures.batches_failed
        return JobState.FAILED, (
            f"{failed} batch{'es' if failed != 1 else ''} failed (last error: {checkpoint.last_error()})"
        )

    def _apply_deletions(self, checkpoint: Checkpoint, retrier: Retrier) -> str | None:
        """Delete the points of records that left the source (delete_missing), 500 at a time."""
        while chunk := checkpoint.pending_deletions(500):
            try:
                retrier.call(lambda chunk=chunk: self.sink.delete([p for _, p in chunk]))  # type: ignore[misc]
            except (QsyncError, Interrupted) as exc:
                return f"could not delete points of records that left the source: {exc}"
            checkpoint.mark_deleted([r for r, _ in chunk])
            emit(self.listeners, Notice(self.job_id, f"deleted {len(chunk)} points of records that left the source"))
        return None

    def _finish(self, lease: Lease, state: JobState, message: str | None, tally: _Tally, started: float) -> RunResult:
        cp.release_lease(self.store, lease, self.clock, state, message)
        figures: JobFigures | None = None
        try:
            figures = job_figures(self.store, self.clock, self.job_id)
        except StoreError as exc:
            log.warning("qsync could not read the final figures: %s", exc)
        emit(self.listeners, JobFinished(self.job_id, state.value, message, figures))
        return RunResult(self.job_id, state.value, message, tally.run_records, time.monotonic() - started)

    def _give_up(self, lease: Lease, error: BaseException) -> None:
        """After a fatal error, leave the job `failed` with the reason, unless we no longer own it."""
        if isinstance(error, LeaseLost):
            return  # not ours any more: write nothing
        message = f"stopped by an error: {type(error).__name__}: {error}"
        try:
            cp.release_lease(self.store, lease, self.clock, JobState.FAILED, message)
        except QsyncError:
            log.warning("qsync could not record the failure of %s; it will show as stale", self.job_id)
        emit(self.listeners, JobFinished(self.job_id, "failed", message))
