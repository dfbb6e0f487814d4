"""The one path from options to a run, for the CLI, the Python API and the notebooks alike.

    prepare(source, collection=...)  -> the job to run: the unfinished one of that name, or a new one planned
                                        (its estimate recorded), per the job identity rules (`open_job`)
    open_for_run(source, ...)        -> the same job, opened for a runner that follows: the file checked, and the
                                        collection checked before a new job was planned left open for the run
    make_runner(job)                 -> the job's Runner, built from its stored spec, with its stages
    run(source, ...)                 =  open_for_run + make_runner + Runner.run

Nothing is written for an existing job before its runner holds the lease: a budget given for it is written by
the runner together with the lease, so a run refused because another runner owns the job changes nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

from typing_extensions import Unpack

from qsync.app.mismatch import mismatch
from qsync.app.options import SourceLike, SpecOptions, build_spec
from qsync.clock import SYSTEM_CLOCK, Clock
from qsync.embedders.factory import build_embedder
from qsync.embedders.protocol import Embedder
from qsync.engine.events import Listener, Notice, emit
from qsync.engine.runner import Runner, RunResult
from qsync.engine.stage import StageFactory
from qsync.errors import JobExists, TransientError
from qsync.input.changed import ChangedSince
from qsync.input.plan import plan_job
from qsync.input.sources import Source
from qsync.ledger import jobs as ledger_jobs
from qsync.ledger.cache import embedder_signature
from qsync.ledger.integrity import check as check_integrity
from qsync.ledger.ledger import Ledger
from qsync.ledger.plans import PlanSummary
from qsync.money.recorded import record_estimate, record_estimate_soon
from qsync.sink.factory import open_sink
from qsync.sink.protocol import Sink, open_soon
from qsync.spec.job import KEEP, BudgetOption, JobSpec, content_differences, differences
from qsync.spec.settings import RunSettings

PathLike = str | os.PathLike[str]


def prepare(
    source: SourceLike,
    *,
    db: PathLike | None = None,
    max_cost_usd: BudgetOption = KEEP,
    settings: RunSettings | None = None,
    clock: Clock = SYSTEM_CLOCK,
    **options: Unpack[SpecOptions],
) -> str:
    """The job `run` would run, by name (see `open_job`). A new job is planned, with `max_cost_usd` as its budget,
    and its estimate is recorded."""
    spec, src = build_spec(source, db=db, **options)
    with Ledger(db) as ledger:
        return open_job(ledger, spec, src, max_cost_usd=max_cost_usd, settings=settings, clock=clock)


def open_job(
    ledger: Ledger,
    spec: JobSpec,
    source: Source,
    *,
    max_cost_usd: BudgetOption = KEEP,
    settings: RunSettings | None = None,
    clock: Clock = SYSTEM_CLOCK,
    embedder: Embedder | None = None,
    sink: Sink | None = None,
) -> str:
    """Job identity, in one place. The newest job of the spec's name (NAME, NAME#2, …):

    - unfinished (planned, running, stale, paused, failed) and the same spec: it is resumed;
    - unfinished and a different spec: refused before anything runs (SpecMismatch names each difference);
    - completed or cancelled: a new job NAME#n+1 is planned, a re-sync: only new and changed records are
      embedded and written (unless the spec asks for a full rewrite);
    - none: a new job NAME is planned.

    Two processes starting the same job at once both find no job and plan: the second finds the first's when it
    commits, and takes the rules again, so it is refused as any second runner is (the job is being run).

    `embedder` and `sink`: the job's own, built by a caller that runs the job next (`open_for_run`), so that the collection
    checked before planning stays open for the run (a Qdrant Edge shard is loaded once); the sink is left open."""
    return _open_or_plan(ledger, spec, source, max_cost_usd, settings, clock, embedder, sink)[0]


def _open_or_plan(
    ledger: Ledger,
    spec: JobSpec,
    source: Source,
    max_cost_usd: BudgetOption,
    settings: RunSettings | None,
    clock: Clock,
    embedder: Embedder | None,
    sink: Sink | None,
    estimate_soon: bool = False,
    listeners: Sequence[Listener] = (),
) -> tuple[str, bool, threading.Thread | None]:
    """`open_job`, whether it planned the job (False: an unfinished job is resumed, as stored), and the thread
    calibrating its estimate (`estimate_soon`: for a run that starts at once, money.recorded.record_estimate_soon).
    `listeners` hear when planning starts: at millions of rows it takes seconds before the run's first event."""
    for attempt in (1, 2):  # a job of that name planned meanwhile by another process: the rules again, once
        newest = ledger_jobs.newest_job(ledger, spec.name)
        if newest is not None and not newest.state.final:
            diffs = differences(newest.spec, spec)
            if diffs:
                raise mismatch(newest, spec, diffs)
            return newest.job_id, False, None
        job_id = spec.name if newest is None else ledger_jobs.next_resync_name(ledger, spec.name)
        embedder = embedder or build_embedder(spec.embedder)
        emit(listeners, Notice(job_id, f"reading {source.description} and planning job {job_id!r}…", planning=True))
        try:
            plan(ledger, job_id, spec, source, embedder, None if max_cost_usd is KEEP else max_cost_usd, clock, sink)
        except JobExists:
            if attempt == 2:
                raise
            continue
        if estimate_soon:
            return job_id, True, record_estimate_soon(ledger, job_id, embedder, settings=settings, clock=clock)
        record_estimate(ledger, job_id, embedder, settings=settings, clock=clock)
        return job_id, True, None
    raise AssertionError("unreachable")


def plan(
    ledger: Ledger,
    job_id: str,
    spec: JobSpec,
    source: Source,
    embedder: Embedder,
    max_cost_usd: float | None,
    clock: Clock = SYSTEM_CLOCK,
    sink: Sink | None = None,
) -> PlanSummary:
    """Plan a job of exactly this name: snapshot the source into its manifest. Nothing is embedded yet. The collection
    is checked through `sink` (left open) if given, else one opened for the check and closed: a server's first, a
    Qdrant Edge shard's before the plan commits (a refusal leaves nothing), loading meanwhile (seconds at 2M)."""
    ledger.open()  # the checkpoint file first: an unwritable --db is the clearer error
    checked = sink or _job_sink(spec, embedder, ledger)
    try:
        ahead = open_soon(checked)
        if not ahead:  # a server's answer may take QDRANT_TIMEOUT_S: not while the planning transaction waits
            _check_collection(checked)
        signature = embedder_signature(embedder, spec.enrich.fingerprint() if spec.enrich else "")
        config = {**spec.to_dict(), "target": spec.target, "embedder_signature": signature}
        changed = _changed_rows(ledger, spec)
        return plan_job(
            ledger, job_id, source, spec.columns, embedder, config, spec.collection, spec.batch_size, clock,
            target=spec.target, embedder_signature=signature, incremental=spec.incremental,
            delete_missing=spec.delete_missing, max_cost_usd=max_cost_usd, chunking=spec.chunking,
            whole_records="enrichment" if spec.enrich else None, changed=changed,
            before_commit=(lambda: _check_collection(checked)) if ahead else None,
        )  # fmt: skip
    finally:
        if sink is None:
            checked.close()


def _changed_rows(ledger: Ledger, spec: JobSpec) -> ChangedSince | None:
    """With --changed-since: where this job starts reading. From the mark of the newest completed job of its name that
    made records into the same points (same source, columns, model, collection…); every row when there is none, when
    that job made them otherwise (another model: every record must be embedded again), or with --full."""
    if not spec.changed_since:
        return None
    since = None
    found = ledger_jobs.last_mark(ledger, spec.name, spec.changed_since) if spec.incremental else None
    if found is not None and not content_differences(found[0].spec, spec):
        since = found[1]
    return ChangedSince(spec.changed_since, since, ids=spec.delete_missing)


def create_job(
    source: SourceLike,
    *,
    db: PathLike | None = None,
    max_cost_usd: float | None = None,
    clock: Clock = SYSTEM_CLOCK,
    **options: Unpack[SpecOptions],
) -> PlanSummary:
    """Plan a new job named `job` (default COLLECTION:SOURCE-STEM), refused if a job of that name exists; its
    estimate is recorded. Nothing is embedded yet."""
    spec, src = build_spec(source, db=db, **options)
    embedder = build_embedder(spec.embedder)
    with Ledger(db) as ledger:
        summary = plan(ledger, spec.name, spec, src, embedder, max_cost_usd, clock)
        record_estimate(ledger, spec.name, embedder, clock=clock)
        return summary


def _job_sink(spec: JobSpec, embedder: Embedder, ledger: Ledger) -> Sink:
    """The job's collection (not opened until used); a relative Qdrant folder is beside the checkpoint file."""
    return open_sink(spec.sink, spec.collection, embedder.dimensions, spec.collection_options, base=ledger.path.parent)


def _check_collection(sink: Sink) -> None:
    """Refuse a job whose vectors the collection cannot hold (another size or distance, or a vector name a server
    cannot add) before its plan commits, rather than leave a job that can only fail. A Qdrant that is away or busy is
    not an error here: the run waits for it, and checks again."""
    try:
        sink.ensure_collection()
    except TransientError:
        pass


@dataclass(frozen=True)
class OpenedJob:
    """A job opened by `open_for_run` for the runner that follows (`make_runner`, `run_job`, `session.start_job`
    take it where they take a job's name): its whole checkpoint file was read just before, and a job planned just now
    comes with the embedder and the open sink that checked its collection, so that its run does not load a Qdrant
    Edge shard again (seconds at millions of points). Whoever does not hand it to a runner closes it."""

    job_id: str
    embedder: Embedder | None = None
    sink: Sink | None = None
    checked: bool = True  # the whole file was read by `open_for_run`: the runner does not read it again
    estimating: threading.Thread | None = None  # calibrating the new job's estimate while it runs (joined by it)

    @classmethod
    def of(cls, job: str | OpenedJob) -> OpenedJob:
        """`job` as an OpenedJob: one given by name brings nothing (its runner builds all, and checks the file)."""
        return job if isinstance(job, OpenedJob) else cls(job, checked=False)

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()


def open_for_run(
    source: SourceLike,
    *,
    db: PathLike | None = None,
    max_cost_usd: BudgetOption = KEEP,
    settings: RunSettings | None = None,
    clock: Clock = SYSTEM_CLOCK,
    listeners: Sequence[Listener] = (),
    **options: Unpack[SpecOptions],
) -> OpenedJob:
    """`prepare` for a run that follows at once, in this process: what `run` does before it runs, for every front
    end (the CLI, `qsync.run`/`qsync.start` in a notebook, the launcher). One embedder and one sink serve both: the
    collection checked before a new job is planned is the one the run writes to, opened once. An unfinished job
    resumed is run as stored: its runner builds both from the stored spec. `listeners` hear a Notice when planning
    starts (the run's own events follow)."""
    spec, src = build_spec(source, db=db, **options)
    embedder = build_embedder(spec.embedder)
    with Ledger(db) as ledger:
        # Read all of the file once, before anything is planned into it (the runner does not again: seconds at 2M).
        check_integrity(ledger)
        sink = _job_sink(spec, embedder, ledger)
        try:
            job_id, planned, estimating = _open_or_plan(ledger, spec, src, max_cost_usd, settings, clock, embedder, sink,
                                                        estimate_soon=True, listeners=listeners)  # fmt: skip
        except BaseException:
            sink.close()
            raise
    if not planned:
        sink.close()  # never opened: nothing was checked
        return OpenedJob(job_id)
    return OpenedJob(job_id, embedder, sink, estimating=estimating)


def make_runner(
    job: str | OpenedJob,
    *,
    db: PathLike | None = None,
    settings: RunSettings | None = None,
    concurrency: int | None = None,
    listeners: Sequence[Listener] = (),
    max_cost_usd: BudgetOption = KEEP,
    embedder: Embedder | None = None,
    sink: Sink | None = None,
    only_batches: Sequence[int] | None = None,
    clock: Clock = SYSTEM_CLOCK,
    checked: bool = False,
) -> Runner:
    """A Runner for the job as stored, not started (notebooks run it in a thread and call request_stop()).

    `settings` default to RunSettings.from_env(); `concurrency` overrides theirs. A budget given here (None
    clears it) is written with the lease when the run starts; `embedder` and `sink` replace the ones the spec
    would build (tests put fakes of the outside services there). An `OpenedJob` brings its own (and its checked
    file); its sink is closed here if no runner is made."""
    opened = OpenedJob.of(job)
    job_id, embedder, sink = opened.job_id, embedder or opened.embedder, sink or opened.sink
    checked = checked or opened.checked
    ledger: Ledger | None = None
    try:
        ledger = Ledger(db, create=False)
        record = ledger_jobs.job_record(ledger, job_id)
        spec = record.spec
        settings = settings or RunSettings.from_env()
        if concurrency is not None:
            settings = replace(settings, concurrency=concurrency)
        built = embedder or build_embedder(spec.embedder)
        sink = sink or _job_sink(spec, built, ledger)
        signature = record.embedder_signature or embedder_signature(
            built, spec.enrich.fingerprint() if spec.enrich else ""
        )
        return Runner(
            ledger, job_id, spec, built, sink, settings, signature, budget=max_cost_usd, stages=stages_of(spec),
            listeners=listeners, only_batches=frozenset(only_batches) if only_batches is not None else None,
            clock=clock, checked=checked, alongside=[t for t in (opened.estimating,) if t is not None],
        )  # fmt: skip
    except BaseException:
        if ledger is not None:
            ledger.close()
        opened.close()
        raise


def stages_of(spec: JobSpec) -> list[StageFactory]:
    """The optional stages a job's spec asks for: enrichment, then Batch Mode."""
    stages: list[StageFactory] = []
    if spec.enrich is not None:
        from qsync.stages.enrich import enrich_stage

        stages.append(enrich_stage(spec.enrich))
    if spec.batch_mode:
        from qsync.stages.batch_mode import batch_mode_stage

        stages.append(batch_mode_stage)
    return stages


def run(
    source: SourceLike,
    *,
    db: PathLike | None = None,
    settings: RunSettings | None = None,
    concurrency: int | None = None,
    listeners: Sequence[Listener] = (),
    max_cost_usd: BudgetOption = KEEP,
    clock: Clock = SYSTEM_CLOCK,
    **options: Unpack[SpecOptions],
) -> RunResult:
    """What `qsync run` does: open the job (`open_for_run`), then run it until it completes, pauses or fails."""
    opened = open_for_run(source, db=db, max_cost_usd=max_cost_usd, settings=settings, clock=clock, listeners=listeners,
                          **options)  # fmt: skip
    runner = make_runner(opened, db=db, settings=settings, concurrency=concurrency, listeners=listeners,
                         max_cost_usd=max_cost_usd, clock=clock)  # fmt: skip
    return runner.run()  # the runner closes the sink


def run_job(
    job: str | OpenedJob,
    *,
    db: PathLike | None = None,
    settings: RunSettings | None = None,
    concurrency: int | None = None,
    listeners: Sequence[Listener] = (),
    max_cost_usd: BudgetOption = KEEP,
    embedder: Embedder | None = None,
    only_batches: Sequence[int] | None = None,
    clock: Clock = SYSTEM_CLOCK,
    checked: bool = False,
) -> RunResult:
    """Run (or resume) a planned job, as stored, until it completes, pauses or fails. `checked`: the caller has just
    read the whole checkpoint file (`qsync resume` does, as every command that reads one): the runner does not again."""
    return make_runner(
        job, db=db, settings=settings, concurrency=concurrency, listeners=listeners, max_cost_usd=max_cost_usd,
        embedder=embedder, only_batches=only_batches, clock=clock, checked=checked,
    ).run()  # fmt: skip


def cancel(job: str, *, db: PathLike | None = None, clock: Clock = SYSTEM_CLOCK) -> str:
    """Cancel a job. A live runner sees it at its next heartbeat and stops; a cancelled job stays so."""
    with Ledger(db, create=False) as ledger:
        return ledger_jobs.cancel(ledger, job, clock)
