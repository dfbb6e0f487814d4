"""The Python API; the CLI and the notebooks are thin layers over these functions.

    import qsync
    qsync.run("data/wordnet_sample.jsonl", collection="wordnet", payload_columns=["pos"])
    qsync.status()            # dict for the newest job
    qsync.batches("wordnet:wordnet_sample", status="failed")   # DataFrame

Options are typed (`SpecOptions`, spec.py): a misspelled one is an error, never silently ignored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from typing_extensions import Unpack

from . import checkpoint as cp
from .cache import embedder_signature
from .checkpoint import JobState
from .clock import SYSTEM_CLOCK, Clock
from .config import resolve_db
from .embedders.base import Embedder, build_embedder
from .enrich import Enricher
from .errors import ConfigError, JobNotFound, TransientError
from .events import Listener
from .figures import read_figures
from .plan import PlanSummary
from .plan import create_job as _plan_job
from .runner import Runner, RunResult
from .sink import QdrantSink
from .sources import Source
from .spec import KEEP, Budget, JobSpec, RunSettings, SpecOptions, base_name, build_spec, differences
from .store import Store, open_store

PathLike = str | os.PathLike[str]


class SpecMismatch(ConfigError):
    """The job of that name is unfinished and was started with a different spec."""

    def __init__(self, job_id: str, status: str, diffs: list[str]) -> None:
        self.job_id = job_id
        self.status = status
        self.differences = diffs
        listed = "\n".join(f"  - {d}" for d in diffs)
        if any(d.startswith("dimensions:") for d in diffs):
            listed += (
                "\n  (vectors of another size also need another collection, or a named vector: a collection "
                "holds one size per vector)"
            )
        super().__init__(
            f"job {job_id!r} is unfinished ({status}) and was started with a different spec:\n{listed}\n"
            f"Either resume it as stored (`qsync resume {job_id}`), or cancel it (`qsync cancel {job_id}`) and run "
            "again to start afresh; vectors already paid for are reused either way."
        )


def create_job(
    source: Source | pd.DataFrame | PathLike,
    *,
    db: PathLike | None = None,
    max_cost_usd: float | None = None,
    clock: Clock = SYSTEM_CLOCK,
    **options: Unpack[SpecOptions],
) -> PlanSummary:
    """Plan a new job named `job` (default COLLECTION:SOURCE-STEM): snapshot the source into its
    manifest. Nothing is embedded yet. Refused if a job of that name exists."""
    spec, src = build_spec(source, db=db, **options)
    return _plan(open_store(resolve_db(db)), spec.name, spec, src, max_cost_usd, clock)


def prepare(
    source: Source | pd.DataFrame | PathLike,
    *,
    db: PathLike | None = None,
    max_cost_usd: Budget = KEEP,
    clock: Clock = SYSTEM_CLOCK,
    **options: Unpack[SpecOptions],
) -> str:
    """The job `run` would run, by name: see `open_job`."""
    spec, src = build_spec(source, db=db, **options)
    return open_job(spec, src, db=db, max_cost_usd=max_cost_usd, clock=clock)


def open_job(
    spec: JobSpec,
    source: Source,
    *,
    db: PathLike | None = None,
    max_cost_usd: Budget = KEEP,
    clock: Clock = SYSTEM_CLOCK,
) -> str:
    """Job identity, in one place. The newest job of the spec's name (NAME, NAME#2, …):

    - unfinished (planned, running, stale, paused, failed) and the same spec: it is resumed;
    - unfinished and a different spec: refused before anything runs (SpecMismatch names each difference);
    - completed or cancelled: a new job NAME#n+1 is planned, a re-sync: only new and changed records are
      embedded and written (unless the spec asks for a full rewrite);
    - none: a new job NAME is planned.

    A budget given (a number, or None for no cap) replaces the stored one; KEEP keeps it."""
    store = open_store(resolve_db(db))
    newest = _newest_job(store, spec.name)
    if newest is not None and not JobState(newest["status"]).final:
        stored = JobSpec.from_dict(
            json.loads(newest["config"]), job_id=newest["job_id"], collection=newest["collection"],
            source=newest["source"],
        )  # fmt: skip
        diffs = differences(stored, spec)
        if diffs:
            raise SpecMismatch(newest["job_id"], newest["status"], diffs)
        if max_cost_usd is not KEEP:
            cp.set_budget(store, newest["job_id"], max_cost_usd, clock)
        return str(newest["job_id"])
    job_id = spec.name if newest is None else _next_name(store, spec.name)
    _plan(store, job_id, spec, source, None if max_cost_usd is KEEP else max_cost_usd, clock)
    return job_id


def _plan(
    store: Store, job_id: str, spec: JobSpec, source: Source, max_cost_usd: float | None, clock: Clock
) -> PlanSummary:
    built = build_embedder(spec.embedder)
    store.query_rows("SELECT 1")  # the checkpoint file first: an unwritable --db is the clearer error
    _check_collection(spec, built.dimensions)
    signature = embedder_signature(built, spec.enrich.fingerprint() if spec.enrich else "")
    config = {**spec.to_dict(), "target": spec.target, "embedder_signature": signature}
    return _plan_job(
        store, job_id, source, spec.columns, built, config, spec.collection, spec.batch_size, clock,
        target=spec.target, embedder_signature=signature, incremental=spec.incremental,
        delete_missing=spec.delete_missing, max_cost_usd=max_cost_usd,
    )  # fmt: skip


def _check_collection(spec: JobSpec, dimensions: int) -> None:
    """Refuse a job whose vectors the collection cannot hold (another size or distance, or a vector name a
    server cannot add) before it is planned, rather than leave a job that can only fail. A Qdrant that is
    away or busy is not an error here: the run waits for it, and checks again."""
    sink = QdrantSink(spec.sink, spec.collection, dimensions, spec.collection_options)
    try:
        sink.ensure_collection()
    except TransientError:
        pass
    finally:
        sink.close()


def run(
    source: Source | pd.DataFrame | PathLike,
    *,
    db: PathLike | None = None,
    settings: RunSettings | None = None,
    concurrency: int | None = None,
    listeners: Sequence[Listener] = (),
    max_cost_usd: Budget = KEEP,
    clock: Clock = SYSTEM_CLOCK,
    **options: Unpack[SpecOptions],
) -> RunResult:
    """What `qsync run` does: open the job (`open_job`), then run it until it completes, pauses or fails."""
    job_id = prepare(source, db=db, max_cost_usd=max_cost_usd, clock=clock, **options)
    return make_runner(job_id, db=db, settings=settings, concurrency=concurrency, listeners=listeners,
                       clock=clock).run()  # fmt: skip


def run_job(
    job: str,
    *,
    db: PathLike | None = None,
    settings: RunSettings | None = None,
    concurrency: int | None = None,
    listeners: Sequence[Listener] = (),
    max_cost_usd: Budget = KEEP,
    embedder: Embedder | None = None,
    only_batches: Sequence[int] | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> RunResult:
    """Run (or resume) a planned job, as stored, until it completes, pauses or fails."""
    return make_runner(
        job, db=db, settings=settings, concurrency=concurrency, listeners=listeners, max_cost_usd=max_cost_usd,
        embedder=embedder, only_batches=only_batches, clock=clock,
    ).run()  # fmt: skip


resume_job = run_job


def make_runner(
    job: str,
    *,
    db: PathLike | None = None,
    settings: RunSettings | None = None,
    concurrency: int | None = None,
    listeners: Sequence[Listener] = (),
    max_cost_usd: Budget = KEEP,
    embedder: Embedder | None = None,
    only_batches: Sequence[int] | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Runner:
    """A Runner for the job, not started: notebooks run it in a thread and call request_stop().

    `settings` default to RunSettings.from_env(); `concurrency` overrides theirs. A budget given here
    replaces the stored one (None clears it); `embedder` replaces the stored one (tests)."""
    store = open_store(resolve_db(db))
    row = _job_row(store, job)
    config = json.loads(row["config"])
    spec = JobSpec.from_dict(config, job_id=job, collection=row["collection"], source=row["source"])
    if max_cost_usd is not KEEP:
        cp.set_budget(store, job, max_cost_usd, clock)
        limit = max_cost_usd
    else:
        limit = None if pd.isna(row["max_cost_usd"]) else float(row["max_cost_usd"])
    settings = settings or RunSettings.from_env()
    if concurrency is not None:
        settings = replace(settings, concurrency=concurrency)
    built = embedder or build_embedder(spec.embedder)
    sink = QdrantSink(spec.sink, spec.collection, built.dimensions, spec.collection_options)
    enricher = Enricher(spec.enrich) if spec.enrich else None
    signature = config.get("embedder_signature") or embedder_signature(
        built, spec.enrich.fingerprint() if spec.enrich else ""
    )
    return Runner(
        store, job, spec, built, sink, settings, limit, signature, enricher=enricher, listeners=listeners,
        only_batches=frozenset(only_batches) if only_batches is not None else None, clock=clock,
    )  # fmt: skip


def cancel(job: str, *, db: PathLike | None = None, clock: Clock = SYSTEM_CLOCK) -> str:
    """Cancel a job. A live runner sees it at its next heartbeat and stops; a cancelled job stays so."""
    return cp.cancel(open_store(resolve_db(db)), job, clock)


def _newest_job(store: Store, name: str) -> dict[str, Any] | None:
    """The job NAME or NAME#n with the highest n."""
    if not Path(store.path).exists():
        return None
    frame = store.query_df(
        "SELECT * FROM jobs WHERE job_id = ? OR job_id LIKE ? ESCAPE '\\'", [name, _like_prefix(name) + "#%"]
    )
    if frame.empty:
        return None
    frame["n"] = [_resync_number(j) for j in frame["job_id"]]
    row = frame.sort_values("n").iloc[-1]
    return {str(k): v for k, v in row.to_dict().items()}


def _like_prefix(name: str) -> str:
    return name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _resync_number(job_id: str) -> int:
    _, _, n = job_id.partition("#")
    return int(n) if n.isdigit() else 1


def _next_name(store: Store, name: str) -> str:
    newest = _newest_job(store, base_name(name))
    n = _resync_number(str(newest["job_id"])) + 1 if newest else 2
    return f"{base_name(name)}#{n}"


# -- reading ---------------------------------------------------------------------------------------


def _reader(db: PathLike | None) -> Store:
    return open_store(resolve_db(db), writable=False)


def jobs(*, db: PathLike | None = None, clock: Clock = SYSTEM_CLOCK) -> pd.DataFrame:
    """Every job in the store, newest first, with live progress and a truthful status."""
    return read_figures(_reader(db), clock)


def status(job: str | None = None, *, db: PathLike | None = None, clock: Clock = SYSTEM_CLOCK) -> dict[str, Any]:
    """One job's status (the newest job when none is named) as a plain dict."""
    frame = read_figures(_reader(db), clock, job, newest=job is None)
    record = {str(k): v for k, v in frame.iloc[0].to_dict().items()}
    owner = f"pid {record['owner_pid']} on {record['owner_host']}" if record["leased"] else None
    result = {k: _plain(v) for k, v in record.items() if k not in ("owner_pid", "owner_host", "leased")}
    result["owner"] = owner
    return result


def batches(job: str, *, status: str | None = None, db: PathLike | None = None) -> pd.DataFrame:
    """The job's batches with attempts, last error, records, tokens and cost. `media_tokens` is the image and
    PDF-page part of `tokens`; `media_tokens_estimated` says qsync split it by its own estimates (the SDK
    drops the API's per-modality counts) rather than the API reporting it."""
    sql = """SELECT batch_no, status, records, skipped_records, attempts, last_error, embedded_texts, cache_hits, tokens,
                    tokens_estimated, media_tokens, media_tokens_estimated, saved_tokens, cost_usd, enrich_tokens, enrich_cost_usd, started_at, finished_at, duration_s,
                    first_ordinal, last_ordinal
             FROM batches WHERE job_id = ?"""
    _job_row(_reader(db), job)  # a job that does not exist is an error, not an empty table
    params: list[Any] = [job]
    if status:
        sql += " AND status = ?"
        params.append(status)
    return _reader(db).query_df(sql + " ORDER BY batch_no", params)


def skipped(job: str, *, db: PathLike | None = None) -> pd.DataFrame:
    """Records that were not loaded, each with the reason."""
    _job_row(_reader(db), job)
    return _reader(db).query_df(
        "SELECT ordinal, record_id, stage, reason, created_at FROM skipped WHERE job_id = ? ORDER BY ordinal NULLS LAST",
        [job],
    )


def batch_records(job: str, batch_no: int, *, db: PathLike | None = None) -> pd.DataFrame:
    """The records of one batch, as planned."""
    return _reader(db).query_df(
        "SELECT ordinal, record_id, content_hash, token_estimate, text, payload FROM manifest "
        "WHERE job_id = ? AND batch_no = ? ORDER BY ordinal",
        [job, batch_no],
    )


def _plain(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NaT:
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


def _job_row(store: Store, job: str) -> dict[str, Any]:
    frame = store.query_df("SELECT * FROM jobs WHERE job_id = ?", [job]) if Path(store.path).exists() else None
    if frame is None or frame.empty:
        raise JobNotFound(f"no job named {job!r} in {store.path}")
    return {str(k): v for k, v in frame.iloc[0].to_dict().items()}
