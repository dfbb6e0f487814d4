"""A run of one job: take the lease, prepare the collection, run the stages and the batches, release.

The parts, each in its own module: the lease (ledger.lease) and its heartbeat (heartbeat), the writes
(ledger.run), one batch from claim to done (pipeline, vectors), the worker threads (scheduler, completer), the
one retry layer and interruptible waits (retry, control), pacing (ratelimit), the spend cap (spend_cap), and
the optional stages (stage; enrichment and Batch Mode are in qsync.stages). A Runner is built whole by the
application (qsync.app.jobs.make_runner), runs once, and owns the ledger and the sink it was given: both are
closed when `run` returns.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from qsync.clock import SYSTEM_CLOCK, Clock
from qsync.embedders.protocol import CountsTokens, Embedder, HasRateLimits, SubmitsBatches, default_limits
from qsync.engine.control import Control
from qsync.engine.counting import DeferredCounts, Uncounted
from qsync.engine.events import BatchFinished, JobFinished, JobStarted, Listener, Notice, RunError, emit
from qsync.engine.heartbeat import Heartbeat
from qsync.engine.inflight import InFlight
from qsync.engine.outcome import Outcome
from qsync.engine.pipeline import BatchPipeline
from qsync.engine.progress import ProgressReports
from qsync.engine.ratelimit import RateLimiter, shared_limiter
from qsync.engine.retry import Retrier, RetryPolicy
from qsync.engine.scheduler import Scheduler
from qsync.engine.slots import CallSlots, batches_under_way
from qsync.engine.spend_cap import SpendCap
from qsync.engine.stage import Stage, StageContext, StageFactory
from qsync.engine.vectors import BatchVectors
from qsync.errors import (
    DiskFull,
    Interrupted,
    JobNotRunnable,
    LeaseLost,
    LedgerCorrupted,
    LedgerError,
    PauseJob,
    QsyncError,
    StopJob,
    TransientError,
)
from qsync.ledger.figures import JobFigures, job_figures
from qsync.ledger.integrity import check as check_integrity
from qsync.ledger.lease import Lease, release_lease, renew_lease, take_lease
from qsync.ledger.ledger import Ledger
from qsync.ledger.run import LeasedJob
from qsync.ledger.states import JobState
from qsync.sink.protocol import Sink
from qsync.spec.defaults import default_concurrency
from qsync.spec.job import KEEP, BudgetOption, JobSpec
from qsync.spec.settings import RunSettings

log = logging.getLogger("qsync")
ALONGSIDE_WAIT_S = 5.0  # how long a finished run waits for work beside it (its estimate's calibration)


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

    def __str__(self) -> str:
        """A sentence for `print(result)` (the repr, with every field and the seconds unrounded, stays for
        debugging)."""
        said = f"{self.job_id}: {self.status}, {self.run_records:,} records this run in {self.elapsed_s:.1f} s"
        return f"{said} ({self.message})" if self.message else said


@dataclass
class _Tally:
    run_records: int = 0
    batches_done: int = 0
    failed: set[int] = field(default_factory=set)
    fatal: BaseException | None = None
    halt: BaseException | None = None


class Runner:
    def __init__(
        self,
        ledger: Ledger,
        job_id: str,
        spec: JobSpec,
        embedder: Embedder,
        sink: Sink,
        settings: RunSettings,
        embedder_signature: str,
        *,
        budget: BudgetOption = KEEP,  # a new cap to write with the lease (KEEP: the stored one)
        stages: Sequence[StageFactory] = (),
        listeners: Sequence[Listener] = (),
        only_batches: frozenset[int] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        control: Control | None = None,
        checked: bool = False,  # the caller read the whole checkpoint file moments ago (app.jobs.run): not again
        alongside: Sequence[threading.Thread] = (),  # work for this job beside the run (its estimate's calibration)
    ) -> None:
        self.ledger = ledger
        self.job_id = job_id
        self.spec = spec
        self.embedder = embedder
        self.sink = sink
        self.settings = settings
        self.embedder_signature = embedder_signature
        self.budget = budget
        self.stage_factories = list(stages)
        self.listeners = list(listeners)
        self.only_batches = only_batches
        self.clock = clock
        self.control = control or Control()
        self.checked = checked
        self.alongside = list(alongside)  # joined before the run is told finished (its figures are then final)
        self._scheduler: Scheduler | None = None
        texts_per_minute = settings.texts_per_minute or default_limits(embedder)[0]
        paid = bool(embedder.price_per_million_tokens)
        self.concurrency = settings.concurrency or default_concurrency(texts_per_minute, spec.batch_size, paid)
        self._finished: JobFinished | None = None  # told to the listeners once the run has let go of everything

    def request_stop(self) -> None:
        """Pause after the API calls in flight; waits (backoff, rate limit) end at once. Any thread."""
        self.control.request_stop()

    def request_cancel(self) -> None:
        """Stop like request_stop, and leave the job cancelled. Safe from any thread."""
        self.control.request_cancel()

    def run(self) -> RunResult:
        """Run the job until it completes, pauses or fails. Listeners hear JobFinished once the run has let go of
        everything (the lease, the checkpoint file, the Qdrant shard): a Resume heard then can start at once."""
        started = time.monotonic()
        self._finished = None
        error: BaseException | None = None
        try:
            if not self.checked:  # a damaged checkpoint file is told now, whichever table it is in
                check_integrity(self.ledger)
            lease, took_over = take_lease(
                self.ledger, self.job_id, self.clock, self.settings.stale_after_s, os.getpid(), self.budget
            )
            result = self._run(lease, took_over, started)
            # The job is final by now (its lease released); its estimate's calibration is waited for a little, so
            # that listeners told it finished read the calibrated figures. One slower than that (a count timing out)
            # is left to end by itself; the uncalibrated figures, labelled so, stand until then.
            for thread in self.alongside:
                thread.join(ALONGSIDE_WAIT_S)
            return result
        except BaseException as exc:
            error = exc
            raise
        finally:
            try:
                self.sink.close()
                self.ledger.close()
            finally:
                self._announce_finish(error)

    def _run(self, lease: Lease, took_over: bool, started: float) -> RunResult:
        job = LeasedJob(self.ledger, lease, self.clock, self.spec.target, self.embedder_signature)
        retrier = Retrier(
            RetryPolicy(self.settings.max_attempts, self.settings.retry_base_s, self.settings.retry_max_s),
            self.control,
            on_retry=self._notify_retry,
        )
        heartbeat = Heartbeat(
            lambda: renew_lease(self.ledger, lease, self.clock),
            self.settings.heartbeat_s,
            on_cancel=self.control.request_cancel,
            on_lost=self.control.request_stop,
        )
        tally = _Tally()
        with self.ledger.held(), heartbeat:
            try:
                retrier.call(self.sink.ensure_collection)  # waits, with backoff, for a Qdrant that is away
            except Interrupted:  # paused (or cancelled) while waiting for Qdrant: nothing was done yet
                state = JobState.CANCELLED if self.control.cancelled else JobState.PAUSED
                return self._finish(lease, state, f"{state.value} before the collection was ready", tally, started)
            except QsyncError as exc:
                return self._finish(lease, JobState.FAILED, f"Qdrant refused the collection: {exc}", tally, started)
            self._count_unconfirmed(job)
            self._heal_cache(job)
            figures = job_figures(self.ledger, self.clock, self.job_id)
            cap = SpendCap(figures.max_cost_usd, spent_usd=figures.cost_usd + figures.unconfirmed_cost_usd)
            emit(self.listeners, JobStarted(self.job_id, figures, took_over))
            counts = self._deferred_counts(job, cap)
            try:
                self._run_batches(job, retrier, cap, tally, started, counts)
            finally:  # the calls answered without usage are counted before the job's figures are final
                if counts is not None:
                    counts.close()
            if heartbeat.lost is not None:
                tally.fatal = tally.fatal or heartbeat.lost
            if tally.fatal is not None:
                self._give_up(lease, tally.fatal)
                if isinstance(tally.fatal, DiskFull):  # say which job to resume
                    raise DiskFull(str(tally.fatal).replace("`qsync resume JOB`", f"`qsync resume {self.job_id}`"))
                raise tally.fatal
            state, message = self._final_state(job, retrier, tally)
            self._count_unconfirmed(job)  # calls that timed out here: priced exactly, not at the bound
            return self._finish(lease, state, message, tally, started)

    def _announce_finish(self, error: BaseException | None) -> None:
        """JobFinished, or (an error before the job's end was decided) RunError: a listener waiting for the run to
        end (a notebook's buttons) always hears that it did."""
        if self._finished is not None:
            emit(self.listeners, self._finished)
        elif error is not None:
            resumable = not isinstance(error, JobNotRunnable | LedgerCorrupted)
            emit(self.listeners, RunError(self.job_id, str(error) or type(error).__name__, resumable))

    def _heal_cache(self, job: LeasedJob) -> None:
        healed = job.heal_cache()
        if healed:
            emit(self.listeners, Notice(self.job_id, _lost_notice(healed, self.ledger)))

    def _count_unconfirmed(self, job: LeasedJob) -> None:
        """Calls a crash cut off (embedding calls, Batch Mode submissions) were recorded at the most they could cost;
        count them exactly now (free countTokens calls) when the embedder can, so the figures and the cap are not
        inflated."""
        embedder = self.embedder
        if not isinstance(embedder, CountsTokens):
            return
        prices = {"embed": embedder.price_per_million_tokens}
        if isinstance(embedder, SubmitsBatches):
            prices["batch_mode"] = embedder.batch_price_per_million_tokens
        try:
            job.count_unconfirmed(embedder.count_tokens, prices)
        except QsyncError as exc:  # no key, API away: the upper bound stands, which errs on the safe side
            log.warning("qsync could not count unconfirmed calls exactly: %s", exc)

    def _deferred_counts(self, job: LeasedJob, cap: SpendCap) -> DeferredCounts | None:
        """Where answers without usage are counted, after the fact and many calls at a time (engine.counting), once
        the calls a crash left uncounted are; None for an embedder that bills nothing or cannot count."""
        embedder = self.embedder
        if not isinstance(embedder, CountsTokens) or not embedder.price_per_million_tokens:
            return None
        counts = DeferredCounts(job, embedder, cap.refund)
        cap.count_now = counts.flush
        for intent, batch_no, hashes, bound, planned in job.uncounted_calls():
            if all(h in planned for h in hashes):  # else (an enriched text): its bound stands
                texts, estimates = zip(*(planned[h] for h in hashes), strict=True)
                counts.add(Uncounted(intent, batch_no, hashes, list(texts), list(estimates), bound))
        counts.flush()
        return counts

    def _limiter(self) -> RateLimiter | None:
        """The pace of this run's calls: the settings' limits, else the embedder's; shared with every run of this
        process that uses the same quota (an API key and model)."""
        texts_default, tokens_default = default_limits(self.embedder)
        texts = self.settings.texts_per_minute or texts_default
        tokens = self.settings.tokens_per_minute or tokens_default
        if not (texts or tokens):
            return None
        if isinstance(self.embedder, HasRateLimits):
            return shared_limiter(self.embedder.rate_limit_key(), texts, tokens)
        return RateLimiter(texts, tokens)

    def _stages(self, job: LeasedJob, retrier: Retrier, cap: SpendCap) -> list[Stage]:
        context = StageContext(
            job, self.embedder, cap, retrier, self.control, self.settings,
            notify=lambda text: emit(self.listeners, Notice(self.job_id, text)),
        )  # fmt: skip
        return [factory(context) for factory in self.stage_factories]

    def _run_batches(
        self, job: LeasedJob, retrier: Retrier, cap: SpendCap, tally: _Tally, started: float,
        counts: DeferredCounts | None,
    ) -> None:  # fmt: skip
        stages = self._stages(job, retrier, cap)
        for stage in stages:
            try:
                stage.before_batches()
            except (PauseJob, StopJob) as exc:
                tally.halt = exc
                break
            except Interrupted:
                break
        limiter, slots = self._limiter(), CallSlots(self.concurrency)
        vectors = BatchVectors(job, self.embedder, retrier, self.control, cap, limiter, InFlight(), counts, slots)
        pipeline = BatchPipeline(job, vectors, self.sink, retrier, self.control, stages)
        runnable = [] if self.control.stopping or tally.halt is not None else job.runnable_batches()
        if self.only_batches is not None:
            runnable = [b for b in runnable if b in self.only_batches]

        progress = ProgressReports(self.ledger, self.clock, self.job_id, self.listeners, started)

        def on_outcome(outcome: Outcome) -> None:
            self._tally(outcome, tally)
            emit(self.listeners, BatchFinished(self.job_id, outcome.batch_no, outcome.kind, outcome.records,
                                               outcome.embedded, outcome.cache_hits, outcome.error, outcome.batch_mode))  # fmt: skip
            progress.due(tally.run_records)

        def on_interrupt() -> None:
            emit(
                self.listeners, Notice(self.job_id, "stopping after the calls in flight (Ctrl-C again to stop at once)")
            )

        self._scheduler = Scheduler(pipeline, batches_under_way(self.concurrency), self.control)
        self._scheduler.run(runnable, on_outcome, on_interrupt)
        progress.now(tally.run_records)

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

    def _notify_retry(self, exc: TransientError, wait: float) -> None:
        emit(self.listeners, Notice(self.job_id, f"{exc}; trying again in {wait:.0f}s"))

    def _final_state(self, job: LeasedJob, retrier: Retrier, tally: _Tally) -> tuple[JobState, str | None]:
        if job.lost_vectors:
            emit(self.listeners, Notice(self.job_id, _lost_notice(job.lost_vectors, self.ledger, final=True)))
        figures = job_figures(self.ledger, self.clock, self.job_id)
        remaining = figures.batches_total - figures.batches_done
        if self.control.cancelled:
            return JobState.CANCELLED, "cancelled"
        if isinstance(tally.halt, PauseJob):
            return JobState.PAUSED, str(tally.halt)
        if tally.halt is not None:
            return JobState.FAILED, str(tally.halt)
        if remaining == 0:
            if self.control.stopping and job.pending_deletions(1):
                return JobState.PAUSED, "paused before deleting the points of records that left the source"
            deletion_error = self._apply_deletions(job, retrier)
            if deletion_error is not None:
                return JobState.FAILED, deletion_error
            return JobState.COMPLETED, None
        if self.control.stopping:
            return JobState.PAUSED, f"paused with {remaining} batch{'es' if remaining != 1 else ''} to go"
        if self.only_batches is not None and not (set(job.runnable_batches()) & self.only_batches):
            return JobState.PAUSED, f"the chosen batches are done; {remaining} to go"
        failed = figures.batches_failed
        return JobState.FAILED, f"{failed} batch{'es' if failed != 1 else ''} failed (last error: {job.last_error()})"

    def _apply_deletions(self, job: LeasedJob, retrier: Retrier) -> str | None:
        """Delete the points of records that left the source (delete_missing) and of chunks a shortened record no
        longer has, 500 at a time."""
        while chunk := job.pending_deletions(500):
            try:
                retrier.call(lambda chunk=chunk: self.sink.delete([p for _, p in chunk]))  # type: ignore[misc]
            except (QsyncError, Interrupted) as exc:
                return f"could not delete points of records that left the source: {exc}"
            job.mark_deleted([p for _, p in chunk])
            emit(self.listeners, Notice(self.job_id, f"deleted {len(chunk)} points no longer in the source"))
        return None

    def _finish(self, lease: Lease, state: JobState, message: str | None, tally: _Tally, started: float) -> RunResult:
        release_lease(self.ledger, lease, self.clock, state, message)
        figures: JobFigures | None = None
        try:
            figures = job_figures(self.ledger, self.clock, self.job_id)
        except LedgerError as exc:
            log.warning("qsync could not read the final figures: %s", exc)
        self._finished = JobFinished(self.job_id, state.value, message, figures)
        return RunResult(self.job_id, state.value, message, tally.run_records, time.monotonic() - started)

    def _give_up(self, lease: Lease, error: BaseException) -> None:
        """After a fatal error, leave the job `failed` with the reason (`paused` when the disk is full: it resumes
        once there is room), unless we no longer own it."""
        if isinstance(error, LeaseLost):
            return  # not ours any more: write nothing
        state = JobState.PAUSED if isinstance(error, DiskFull) else JobState.FAILED
        message = str(error).replace("`qsync resume JOB`", f"`qsync resume {self.job_id}`") if isinstance(
            error, QsyncError
        ) else (
            f"stopped by an error: {type(error).__name__}: {error}"
        )  # fmt: skip
        try:
            release_lease(self.ledger, lease, self.clock, state, message)
        except QsyncError:
            log.warning("qsync could not record why %s stopped; it will show as stale", self.job_id)
        self._finished = JobFinished(self.job_id, state.value, message)


def _lost_notice(count: int, ledger: Ledger, final: bool = False) -> str:
    what = f"{count:,} cached vector{'s' if count != 1 else ''} {'were' if count != 1 else 'was'} missing from "
    return what + (
        f"{ledger.vectors.path} (truncated, deleted or replaced): "
        + ("embedded again, paid once more" if final else "they are embedded again (paid once more)")
    )
