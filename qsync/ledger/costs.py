"""What the ledger knows of money beside the figures: what resumes did not redo, spend over time, the media
part of the tokens, the minutes a job's runs worked, and the estimate recorded when a job was planned."""

from __future__ import annotations

from typing import Any

import pandas as pd

from qsync.ledger.ledger import Ledger

_ESTIMATE_COLUMNS = ("job_id", "recorded_at", "records", "texts_to_embed", "cached_texts", "tokens", "tokens_basis",
                     "cost_usd", "minutes", "price_usd_per_million_tokens", "media_tokens")  # fmt: skip


def resume_savings(ledger: Ledger, job: str) -> tuple[int, int, int]:
    """(records that runs after the first found done and did not redo, their tokens, runs)."""
    row = ledger.query_rows(
        """
        WITH runs AS (
            SELECT lease_token, min(started_at) AS started FROM attempts WHERE job_id = $1 GROUP BY lease_token
        ), done AS (
            SELECT a.batch_no, min(a.finished_at) AS finished FROM attempts a
            WHERE a.job_id = $1 AND a.outcome = 'done' GROUP BY a.batch_no
        ), resumed AS (  -- for each run after the first: the batches it found done and did not redo
            SELECT coalesce(sum(b.records), 0) AS records, coalesce(sum(b.tokens), 0) AS tokens
            FROM runs r JOIN done d ON d.finished < r.started JOIN batches b ON b.job_id = $1 AND b.batch_no = d.batch_no
        )
        SELECT CAST((SELECT records FROM resumed) AS BIGINT), CAST((SELECT tokens FROM resumed) AS BIGINT),
               (SELECT count(*) FROM runs)
        """,
        [job],
    )[0]
    return int(row[0]), int(row[1]), int(row[2])


def spend_over_time(ledger: Ledger, job: str) -> pd.DataFrame:
    """Cumulative records, tokens and dollars as batches finished."""
    return ledger.query_df(
        """SELECT finished_at, batch_no, records - skipped_records AS records, tokens, cost_usd,
                  sum(records - skipped_records) OVER w AS cumulative_records,
                  sum(tokens) OVER w AS cumulative_tokens, sum(cost_usd) OVER w AS cumulative_cost_usd
           FROM batches WHERE job_id = ? AND status = 'done'
           WINDOW w AS (ORDER BY finished_at, batch_no ROWS UNBOUNDED PRECEDING)
           ORDER BY finished_at, batch_no""",
        [job],
    )


def media_split(ledger: Ledger, job: str) -> tuple[int, int, bool]:
    """(embedding tokens, the media part of them, whether that part was split by qsync's estimates)."""
    row = ledger.query_rows(
        "SELECT coalesce(sum(tokens), 0), coalesce(sum(media_tokens), 0), coalesce(bool_or(media_tokens_estimated), "
        "false) FROM batches WHERE job_id = ?",
        [job],
    )[0]
    return int(row[0]), int(row[1]), bool(row[2])


def run_minutes(ledger: Ledger, job: str) -> float | None:
    """Minutes the job's runs spent working (each run from its first attempt to its last answer; pauses between
    runs are not counted), or None before any batch was tried."""
    rows = ledger.query_rows(
        """SELECT sum(epoch(last) - epoch(first)) / 60.0 FROM (
               SELECT min(started_at) AS first, max(coalesce(finished_at, started_at)) AS last
               FROM attempts WHERE job_id = ? GROUP BY lease_token)""",
        [job],
    )
    value = rows[0][0] if rows else None
    return None if value is None else float(value)


def recorded_estimate(ledger: Ledger, job: str) -> dict[str, Any] | None:
    """The estimate stored when the job was planned, or None."""
    frame = ledger.query_df("SELECT * FROM plan_estimates WHERE job_id = ?", [job])
    if frame.empty:
        return None
    return {str(k): (None if pd.isna(v) else v) for k, v in frame.iloc[0].to_dict().items()}


def update_estimate(ledger: Ledger, estimate: dict[str, Any]) -> None:
    """Replace the figures of a job's recorded estimate by these (its calibration, made after the run started:
    money.recorded.record_estimate_soon); when it was recorded stays."""
    figures = [c for c in _ESTIMATE_COLUMNS if c not in ("job_id", "recorded_at")]
    ledger.write(
        lambda con: con.execute(
            f"UPDATE plan_estimates SET {', '.join(f'{c} = ?' for c in figures)} WHERE job_id = ?",
            [*(estimate[c] for c in figures), estimate["job_id"]],
        )
    )


def record_estimate(ledger: Ledger, estimate: dict[str, Any]) -> None:
    """Store a job's plan-time estimate (the first one stays)."""
    columns = ", ".join(_ESTIMATE_COLUMNS)
    ledger.write(
        lambda con: con.execute(
            f"INSERT OR IGNORE INTO plan_estimates ({columns}) VALUES ({', '.join('?' * len(_ESTIMATE_COLUMNS))})",
            [estimate[c] for c in _ESTIMATE_COLUMNS],
        )
    )
