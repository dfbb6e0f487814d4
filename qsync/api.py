"""The Python API; the CLI and the notebooks are thin layers over these functions.

import qsync
qsync.run("data/wordnet_sample.jsonl", collection="wordnet", payload_columns=["pos"])
qsync.status()            # dict for the latest job
qsync.batches("wordnet:wordnet_sample", status="failed")   # DataFrame
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .clock import SYSTEM_CLOCK, Clock
from .config import default_qdrant_path, env_float, resolve_db
from .embedders.base import Embedder, EmbedderSpec, build_embedder
from .embedders.gemini import api_key_from_env
from .enrich import Enricher, EnrichSpec
from .errors import ConfigError, JobNotFound
from .events import Listener
from .lease import lease_is_live
from .ledger import embedder_signature
from .plan import PlanSummary
from .plan import create_job as _plan_job
from .runner import Runner, RunResult, RunSettings
from .sink import CollectionOptions, QdrantSink, SinkSpec
from .sources import Columns, Source, as_source
from .store import Store, first_row, open_store

PathLike = str | os.PathLike[str]


def default_settings(concurrency: int = 4) -> RunSettings:
    return RunSettings(
        concurrency=concurrency,
        heartbeat_s=env_float("QSYNC_HEARTBEAT_S", 5.0),
        stale_after_s=env_float("QSYNC_STALE_AFTER_S", 60.0),
        retry_base_s=env_float("QSYNC_RETRY_BASE_S", 1.0),
    )


def default_embedder(requested: str | None) -> str:
    if requested:
        return requested
    return "gemini" if api_key_from_env() else "hash"


def default_job_name(source: Source | pd.DataFrame | PathLike, collection: str) -> str:
    if isinstance(source, pd.DataFrame):
        return f"{collection}:dataframe"
    text = str(getattr(source, "description", source))
    if text.lower().startswith("sql"):
        return f"{collection}:sql-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return f"{collection}:{Path(text).stem}"


def _sink_spec(db: Path, qdrant_path: PathLike | None, qdrant_url: str | None) -> SinkSpec:
    url = qdrant_url or (None if qdrant_path else os.environ.get("QDRANT_URL"))
    if url:
        return SinkSpec(url=url)
    path = str(qdrant_path) if qdrant_path else default_qdrant_path(db)
    return SinkSpec(path=path if path == ":memory:" else str(Path(path).expanduser().resolve()))


def create_job(
    source: Source | pd.DataFrame | PathLike,
    *,
    collection: str,
    db: PathLike | None = None,
    job: str | None = None,
    id_column: str = "id",
    text_column: str | None = "text",
    text_template: str | None = None,
    payload_columns: Sequence[str] = (),
    embedder: str | None = None,
    dimensions: int | None = None,
    embedder_options: dict[str, Any] | None = None,
    batch_size: int = 100,
    qdrant_path: PathLike | None = None,
    qdrant_url: str | None = None,
    source_db: str | None = None,
    max_cost_usd: float | None = None,
    batch_mode: bool = False,
    enrich: EnrichSpec | dict[str, Any] | None = None,
    distance: str = "cosine",
    on_disk: bool = False,
    payload_indexes: Sequence[str] = (),
    vector_name: str | None = None,
    extra_vectors: Sequence[str] = (),
    incremental: bool = True,
    delete_missing: bool = False,
    clock: Clock = SYSTEM_CLOCK,
) -> PlanSummary:
    """Snapshot the source into a new job's manifest. Nothing is embedded yet.

    The embedder defaults to Gemini when GEMINI_API_KEY or GOOGLE_API_KEY is set, else the offline one."""
    db_path = resolve_db(db)
    columns = Columns(id_column, None if text_template else text_column, text_template, tuple(payload_columns))
    spec = EmbedderSpec(default_embedder(embedder), dimensions, dict(embedder_options or {}))
    if batch_mode and spec.kind != "gemini":
        raise ConfigError("Batch Mode is a Gemini feature: use --embedder gemini with --batch-mode")
    enrich_spec = EnrichSpec.from_dict(enrich) if isinstance(enrich, dict) else enrich
    if enrich_spec is not None:
        enrich_spec.check_fields(["text", id_column, *payload_columns])
    built = build_embedder(spec)
    src = as_source(source, database=source_db)
    job_id = job or default_job_name(src, collection)
    sink_spec = _sink_spec(db_path, qdrant_path, qdrant_url)
    options = CollectionOptions(distance, on_disk, tuple(payload_indexes), vector_name, tuple(extra_vectors))
    target = QdrantSink(sink_spec, collection, built.dimensions, options).target
    signature = embedder_signature(built, enrich_spec.fingerprint() if enrich_spec else "")
    config = {
        "columns": columns.to_dict(),
        "embedder": EmbedderSpec(spec.kind, built.dimensions, spec.options).to_dict(),
        "sink": sink_spec.to_dict(),
        "collection_options": options.to_dict(),
        "target": target,
        "embedder_signature": signature,
        "delete_missing": delete_missing,
        "max_cost_usd": max_cost_usd,
        "batch_mode": batch_mode,
        "enrich": enrich_spec.to_dict() if enrich_spec else None,
    }
    return _plan_job(
        open_store(db_path), job_id, src, columns, built, config, collection, batch_size, clock,
        target=target, embedder_signature=signature, incremental=incremental, delete_missing=delete_missing,
    )  # fmt: skip


def run_job(
    job: str,
    *,
    db: PathLike | None = None,
    concurrency: int = 4,
    listeners: list[Listener] | None = None,
    settings: RunSettings | None = None,
    qdrant_path: PathLike | None = None,
    qdrant_url: str | None = None,
    embedder: Embedder | None = None,
    max_cost_usd: float | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> RunResult:
    """Run (or resume) a planned job until it completes, pauses or fails."""
    return make_runner(
        job, db=db, concurrency=concurrency, listeners=listeners, settings=settings,
        qdrant_path=qdrant_path, qdrant_url=qdrant_url, embedder=embedder, max_cost_usd=max_cost_usd, clock=clock,
    ).run()  # fmt: skip


resume_job = run_job


def make_runner(
    job: str,
    *,
    db: PathLike | None = None,
    concurrency: int = 4,
    listeners: list[Listener] | None = None,
    settings: RunSettings | None = None,
    qdrant_path: PathLike | None = None,
    qdrant_url: str | None = None,
    embedder: Embedder | None = None,
    max_cost_usd: float | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Runner:
    """A Runner for the job, not started: notebooks run it in a thread and call request_stop()."""
    db_path = resolve_db(db)
    store = open_store(db_path)
    row = _job_row(store, job)
    config = json.loads(row["config"])
    built = embedder or build_embedder(EmbedderSpec.from_dict(config["embedder"]))
    stored_sink = SinkSpec.from_dict(config["sink"])
    sink_spec = _sink_spec(db_path, qdrant_path, qdrant_url) if (qdrant_path or qdrant_url) else stored_sink
    options = CollectionOptions.from_dict(config.get("collection_options"))
    sink = QdrantSink(sink_spec, row["collection"], built.dimensions, options)
    settings = settings or default_settings(concurrency)
    settings.max_cost_usd = max_cost_usd if max_cost_usd is not None else config.get("max_cost_usd")
    settings.batch_mode = bool(config.get("batch_mode"))
    settings.batch_mode_poll_s = env_float("QSYNC_BATCH_POLL_S", settings.batch_mode_poll_s)
    runner = Runner(store, job, built, sink, settings, listeners, clock)
    runner.target = config.get("target", sink.target)
    runner.embedder_signature = config.get("embedder_signature", runner.embedder_signature)
    if config.get("enrich"):
        runner.enricher = Enricher(EnrichSpec.from_dict(config["enrich"]), clock)
    return runner


def prepare(
    source: Source | pd.DataFrame | PathLike,
    *,
    collection: str,
    job: str | None = None,
    db: PathLike | None = None,
    **plan_options: Any,
) -> str:
    """The job `run` would run: the unfinished job of that name, else a newly planned one (returned by name).

    Re-running a completed backfill is a re-sync: the new job (NAME#2, NAME#3, ...) embeds and writes only
    records that are new or whose text changed, and with delete_missing=True removes records that left."""
    job_id = job or default_job_name(as_source(source, database=plan_options.get("source_db")), collection)
    store = open_store(resolve_db(db))
    existing = _find_job(store, job_id)
    if existing is not None and existing["status"] in ("completed", "cancelled"):
        job_id = _next_name(store, job_id)
        existing = None
    if existing is None:
        create_job(source, collection=collection, db=db, job=job_id, **plan_options)
    return job_id


def run(
    source: Source | pd.DataFrame | PathLike,
    *,
    collection: str,
    job: str | None = None,
    db: PathLike | None = None,
    concurrency: int = 4,
    listeners: list[Listener] | None = None,
    settings: RunSettings | None = None,
    **plan_options: Any,
) -> RunResult:
    """What `qsync run` does: prepare() the job, then run it until it completes, pauses or fails."""
    job_id = prepare(source, collection=collection, job=job, db=db, **plan_options)
    return run_job(
        job_id, db=db, concurrency=concurrency, listeners=listeners, settings=settings,
        max_cost_usd=plan_options.get("max_cost_usd"),
    )  # fmt: skip


def _next_name(store: Store, base: str) -> str:
    base = base.split("#", 1)[0]
    names = {
        r[0] for r in store.query_rows("SELECT job_id FROM jobs WHERE job_id = ? OR job_id LIKE ?", [base, base + "#%"])
    }
    n = 2
    while f"{base}#{n}" in names:
        n += 1
    return f"{base}#{n}"


def cancel(job: str, *, db: PathLike | None = None, clock: Clock = SYSTEM_CLOCK) -> str:
    """Cancel a job. A live runner sees it at its next heartbeat and stops; a cancelled job stays so."""
    store = open_store(resolve_db(db))
    with store.transaction() as con:
        row = first_row(con.execute("SELECT status, lease_token FROM jobs WHERE job_id = ?", [job]))
        if row is None:
            raise JobNotFound(f"no job named {job!r} in {store.path}")
        if row[0] in ("completed", "cancelled"):
            return str(row[0])
        if row[1] is not None:
            con.execute("UPDATE jobs SET cancel_requested = true WHERE job_id = ?", [job])
            return "cancel requested"
        con.execute(
            "UPDATE jobs SET status = 'cancelled', message = 'cancelled by `qsync cancel`', finished_at = ?, "
            "updated_at = ? WHERE job_id = ?",
            [clock.now(), clock.now(), job],
        )
        return "cancelled"


# -- reading ---------------------------------------------------------------------------------------

_JOBS_SQL = """
    SELECT j.job_id AS job, j.status, j.message, j.collection, j.source, j.total_records,
           CAST(coalesce(b.processed_records, 0) AS BIGINT) AS processed_records, j.skipped_records,
           coalesce(j.unchanged_records, 0) AS unchanged_records,
           (SELECT count(*) FROM deletions d WHERE d.job_id = j.job_id AND d.done) AS deleted_records,
           j.batches_total, CAST(coalesce(b.batches_done, 0) AS INTEGER) AS batches_done,
           CAST(coalesce(b.batches_failed, 0) AS INTEGER) AS batches_failed, CAST(coalesce(b.batches_running, 0) AS INTEGER) AS batches_running,
           CAST(coalesce(b.tokens, 0) + coalesce(r.tokens, 0) AS BIGINT) AS tokens,
           coalesce(b.cost_usd, 0) + coalesce(b.enrich_cost_usd, 0) + coalesce(r.cost_usd, 0) AS cost_usd,
           CAST(coalesce(b.saved_tokens, 0) AS BIGINT) AS saved_tokens, CAST(coalesce(b.embedded_texts, 0) AS BIGINT) AS embedded_texts,
           CAST(coalesce(b.cache_hits, 0) AS BIGINT) AS cache_hits,
           j.created_at, j.started_at, j.updated_at, j.finished_at, j.heartbeat_at,
           j.owner_pid, j.owner_host, j.lease_token IS NOT NULL AS leased, j.cancel_requested
    FROM jobs j LEFT JOIN (
        SELECT job_id,
               sum(records - skipped_records) FILTER (WHERE status = 'done') AS processed_records,
               count(*) FILTER (WHERE status = 'done') AS batches_done,
               count(*) FILTER (WHERE status = 'failed') AS batches_failed,
               count(*) FILTER (WHERE status = 'running') AS batches_running,
               sum(tokens) AS tokens, sum(cost_usd) AS cost_usd, sum(saved_tokens) AS saved_tokens,
               sum(enrich_cost_usd) AS enrich_cost_usd,
               sum(embedded_texts) AS embedded_texts, sum(cache_hits) AS cache_hits
        FROM batches GROUP BY job_id
    ) b USING (job_id)
    LEFT JOIN (
        SELECT job_id, sum(tokens) AS tokens, sum(cost_usd) AS cost_usd FROM remote_jobs GROUP BY job_id
    ) r USING (job_id)
"""


def _reader(db: PathLike | None) -> Store:
    return open_store(resolve_db(db), writable=False)


def jobs(*, db: PathLike | None = None, clock: Clock = SYSTEM_CLOCK) -> pd.DataFrame:
    """Every job in the store, newest first, with live progress and a truthful status."""
    frame = _reader(db).query_df(_JOBS_SQL + " ORDER BY j.created_at DESC")
    return _with_liveness(frame, clock)


def status(job: str | None = None, *, db: PathLike | None = None, clock: Clock = SYSTEM_CLOCK) -> dict[str, Any]:
    """One job's status (the newest job when none is named) as a plain dict."""
    store = _reader(db)
    if job is None:
        frame = store.query_df(_JOBS_SQL + " ORDER BY j.created_at DESC LIMIT 1")
        if frame.empty:
            raise JobNotFound(f"no jobs in {store.path} yet")
    else:
        frame = store.query_df(_JOBS_SQL + " WHERE j.job_id = ?", [job])
        if frame.empty:
            raise JobNotFound(f"no job named {job!r} in {store.path}")
    record = {str(k): v for k, v in _with_liveness(frame, clock).iloc[0].to_dict().items()}
    owner = f"pid {record['owner_pid']} on {record['owner_host']}" if record["leased"] else None
    result = {k: _plain(v) for k, v in record.items() if k not in ("owner_pid", "owner_host", "leased")}
    result["owner"] = owner
    return result


def batches(job: str, *, status: str | None = None, db: PathLike | None = None) -> pd.DataFrame:
    """The job's batches with attempts, last error, records, tokens and cost."""
    sql = """SELECT batch_no, status, records, skipped_records, attempts, last_error, embedded_texts, cache_hits, tokens,
                    tokens_estimated, saved_tokens, cost_usd, enrich_tokens, enrich_cost_usd, started_at, finished_at, duration_s,
                    first_ordinal, last_ordinal
             FROM batches WHERE job_id = ?"""
    params: list[Any] = [job]
    if status:
        sql += " AND status = ?"
        params.append(status)
    return _reader(db).query_df(sql + " ORDER BY batch_no", params)


def skipped(job: str, *, db: PathLike | None = None) -> pd.DataFrame:
    """Records that were not loaded, each with the reason."""
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


def _with_liveness(frame: pd.DataFrame, clock: Clock) -> pd.DataFrame:
    """A `running` job whose owner is gone is shown as `stale`: status never claims work nobody does."""
    stale_after = env_float("QSYNC_STALE_AFTER_S", 60.0)
    now = clock.now()
    frame = frame.copy()
    for i, row in frame.iterrows():
        if row["status"] == "running":
            pid = None if pd.isna(row["owner_pid"]) else int(row["owner_pid"])
            heartbeat = None if pd.isna(row["heartbeat_at"]) else row["heartbeat_at"].to_pydatetime()
            if not lease_is_live(pid, row["owner_host"], heartbeat, now, stale_after):
                frame.at[i, "status"] = "stale"
                frame.at[i, "message"] = (
                    f"the runner (pid {pid}) stopped without finishing; `qsync resume {row['job']}` continues"
                )
    return frame


def _plain(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NaT:
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


def _find_job(store: Store, job: str) -> dict[str, Any] | None:
    if not Path(store.path).exists():
        return None
    frame = store.query_df("SELECT * FROM jobs WHERE job_id = ?", [job])
    return None if frame.empty else {str(k): v for k, v in frame.iloc[0].to_dict().items()}


def _job_row(store: Store, job: str) -> dict[str, Any]:
    row = _find_job(store, job)
    if row is None:
        raise JobNotFound(f"no job named {job!r} in {store.path}")
    return row
