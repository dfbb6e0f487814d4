"""Every figure shown for a job comes from here: `qsync status`, `qsync jobs`, `qsync cost`, the progress
bar, the notebook widgets and the demo all read `job_figures`, so the same job shows the same numbers
everywhere.

Each record of the source is in exactly one of four places:

- **loaded**: written to Qdrant by this job;
- **skipped**: not loaded because it is bad input (found at planning: no id, empty text, duplicate id,
  too long, unreadable line; or refused by the embedder or the enrichment model), listed with a reason;
- **unchanged**: (re-syncs only) already in the collection with the same text, embedded by the same
  embedder: nothing to do, nothing to pay;
- **remaining**: still to do.

A record longer than the model takes is cut into chunks, a point each (spec.chunking); records are counted
whole (a batch holds whole records, so a record is loaded when its batch is done), and **total_chunks** is how
many points the valid records make (equal to their number when none was cut).

`total = loaded + skipped + unchanged + remaining`; **processed** is `total - remaining` (what the
progress bar shows). **Embedded** texts are those the job paid for: in synchronous calls and in Batch Mode
(whose vectors its batches then take from the cache: never counted as cache hits). Cost is the job's whole spend: embeddings (synchronous and Batch Mode) and
enrichment answers, as the API reported it. **Unconfirmed** spend is paid calls that were sent but whose
answer was not saved (in flight now, or cut off by a crash or a timeout), or answered without usage and not
counted yet: counted at most what they can have cost (every token at least a byte; after a crash, counted exactly with countTokens when possible),
so that `cost_usd + unconfirmed_cost_usd` is never less than what was billed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import pandas as pd

from qsync.clock import Clock
from qsync.errors import JobNotFound
from qsync.ledger.ledger import Ledger
from qsync.ledger.process import lease_is_live
from qsync.spec.defaults import stale_after_s

_SQL = """
    SELECT j.job_id AS job, j.status, j.message, j.collection, j.source,
           j.total_records,
           CAST(coalesce(b.loaded, 0) AS BIGINT) AS loaded_records,
           j.skipped_records,
           CAST(coalesce(j.unchanged_records, 0) AS BIGINT) AS unchanged_records,
           CAST(coalesce(b.planned, 0) - coalesce(b.finished, 0) AS BIGINT) AS remaining_records,
           CAST(j.total_records - (coalesce(b.planned, 0) - coalesce(b.finished, 0)) AS BIGINT) AS processed_records,
           CAST((SELECT count(DISTINCT record_id) FROM deletions d
                 WHERE d.job_id = j.job_id AND d.done AND NOT coalesce(d.surplus, false)) AS BIGINT) AS deleted_records,
           CAST(coalesce(j.total_chunks, j.total_records - j.skipped_records) AS BIGINT) AS total_chunks,
           j.batches_total,
           CAST(coalesce(b.batches_done, 0) AS INTEGER) AS batches_done,
           CAST(coalesce(b.batches_failed, 0) AS INTEGER) AS batches_failed,
           CAST(coalesce(b.batches_running, 0) AS INTEGER) AS batches_running,
           CAST(coalesce(b.embedded_texts, 0) + coalesce(r.texts, 0) AS BIGINT) AS embedded_texts,
           CAST(coalesce(b.cache_hits, 0) AS BIGINT) AS cache_hits,
           CAST(coalesce(b.tokens, 0) + coalesce(r.tokens, 0) AS BIGINT) AS tokens,
           coalesce(b.tokens_estimated, false) AS tokens_estimated,
           CAST(coalesce(b.saved_tokens, 0) AS BIGINT) AS saved_tokens,
           coalesce(b.cost_usd, 0) + coalesce(r.cost_usd, 0) + coalesce(b.enrich_cost_usd, 0) AS cost_usd,
           coalesce(b.cost_usd, 0) AS embed_cost_usd,
           CAST(coalesce(r.texts, 0) AS BIGINT) AS batch_mode_texts,
           CAST(coalesce(r.tokens, 0) AS BIGINT) AS batch_mode_tokens,
           coalesce(r.cost_usd, 0) AS batch_mode_cost_usd,
           CAST(coalesce(b.enrich_tokens, 0) AS BIGINT) AS enrich_tokens,
           coalesce(b.enrich_cost_usd, 0) AS enrich_cost_usd,
           CAST(coalesce(u.tokens, 0) AS BIGINT) AS unconfirmed_tokens,
           coalesce(u.cost_usd, 0) AS unconfirmed_cost_usd,
           j.max_cost_usd,
           j.created_at, j.started_at, j.updated_at, j.finished_at, j.heartbeat_at,
           j.owner_pid, j.owner_host, j.lease_token IS NOT NULL AS leased, j.cancel_requested,
           j.stale_after_s, j.since_column, j.since_value, j.high_water
    FROM jobs j LEFT JOIN (
        SELECT job_id,
               sum(records) AS planned,
               sum(records) FILTER (WHERE status = 'done') AS finished,
               sum(records - skipped_records) FILTER (WHERE status = 'done') AS loaded,
               count(*) FILTER (WHERE status = 'done') AS batches_done,
               count(*) FILTER (WHERE status = 'failed') AS batches_failed,
               count(*) FILTER (WHERE status = 'running') AS batches_running,
               sum(tokens) AS tokens, bool_or(tokens_estimated) AS tokens_estimated,
               sum(cost_usd) AS cost_usd, sum(saved_tokens) AS saved_tokens,
               sum(enrich_tokens) AS enrich_tokens, sum(enrich_cost_usd) AS enrich_cost_usd,
               sum(embedded_texts) AS embedded_texts, sum(cache_hits) AS cache_hits
        FROM batches {where} GROUP BY job_id
    ) b USING (job_id)
    LEFT JOIN (
        SELECT job_id, sum(texts) FILTER (WHERE state = 'ingested') AS texts, sum(tokens) AS tokens,
               sum(cost_usd) AS cost_usd
        FROM remote_jobs {where} GROUP BY job_id
    ) r USING (job_id)
    LEFT JOIN (  -- paid calls sent but not (yet) answered and saved: in flight, or cut off by a crash; or answered
        -- without usage and not counted yet (at their bound until counted: engine.counting)
        SELECT job_id, sum(tokens) AS tokens, sum(cost_usd) AS cost_usd
        FROM spend_intents {where} {and_where} state IN ('open', 'unconfirmed', 'uncounted') GROUP BY job_id
    ) u USING (job_id)
"""


@dataclass(frozen=True)
class JobFigures:
    """One job's figures at one moment (see the module's docstring for what each count means)."""

    job: str
    status: str  # planned | running | paused | completed | failed | cancelled | stale
    message: str | None
    collection: str
    total_records: int
    loaded_records: int
    skipped_records: int
    unchanged_records: int
    remaining_records: int
    processed_records: int
    batches_total: int
    batches_done: int
    batches_failed: int
    tokens: int
    cost_usd: float
    unconfirmed_tokens: int
    unconfirmed_cost_usd: float
    saved_tokens: int
    max_cost_usd: float | None
    total_chunks: int = 0  # points the job's valid records make (more than records when long ones were cut)
    batch_mode_texts: int = 0
    batch_mode_tokens: int = 0
    batch_mode_cost_usd: float = 0.0

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> JobFigures:
        values: dict[str, Any] = {}
        for f in fields(cls):
            value: Any = row.get(f.name)
            if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
                values[f.name] = None
            else:
                values[f.name] = value.item() if hasattr(value, "item") else value
        return cls(**values)


def read_figures(ledger: Ledger, clock: Clock, job: str | None = None, *, newest: bool = False) -> pd.DataFrame:
    """The figures of one job (`job`), of the newest job (`newest`), or of every job, newest first."""
    if job is not None:
        # The job named in every part: DuckDB does not push the filter into the grouped subqueries, and a
        # running job reads its figures a few times a second.
        frame = ledger.query_df(
            _SQL.format(where="WHERE job_id = $job", and_where="AND") + " WHERE j.job_id = $job", {"job": job}
        )
        if frame.empty:
            raise JobNotFound(f"no job named {job!r} in {ledger.path}")
    else:
        frame = ledger.query_df(
            _SQL.format(where="", and_where="WHERE") + " ORDER BY j.created_at DESC" + (" LIMIT 1" if newest else "")
        )
        if newest and frame.empty:
            raise JobNotFound(f"no jobs in {ledger.path} yet")
    return with_liveness(frame, clock)


def job_figures(ledger: Ledger, clock: Clock, job: str) -> JobFigures:
    return JobFigures.from_row(read_figures(ledger, clock, job).iloc[0].to_dict())


def with_liveness(frame: pd.DataFrame, clock: Clock) -> pd.DataFrame:
    """A `running` job whose owner is gone is shown as `stale`: status never claims work nobody does. A lease is
    judged by the stale timeout its holder stored with it (older leases: $QSYNC_STALE_AFTER_S)."""
    default = stale_after_s()
    now = clock.now()
    frame = frame.copy()
    for i, row in frame.iterrows():
        if row["status"] == "running":
            pid = None if pd.isna(row["owner_pid"]) else int(row["owner_pid"])
            heartbeat: datetime | None = None if pd.isna(row["heartbeat_at"]) else row["heartbeat_at"].to_pydatetime()
            stale_after = default if pd.isna(row["stale_after_s"]) else float(row["stale_after_s"])
            if not lease_is_live(pid, row["owner_host"], heartbeat, now, stale_after):
                frame.at[i, "status"] = "stale"
                frame.at[i, "message"] = f"the runner (pid {pid}) stopped without finishing; resume the job to continue"
    return frame
