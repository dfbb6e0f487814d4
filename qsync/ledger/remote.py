"""Gemini Batch Mode jobs in the ledger: recorded the moment one is submitted, so a restart goes on polling it
instead of paying for the same texts again; ingested (vectors into the cache) when it succeeds."""

from __future__ import annotations

from typing import Any

import pandas as pd

from qsync.ledger.cache import uncached_sql


def record(con: Any, job_id: str, name: str, hashes: list[str], now: Any) -> None:
    con.execute(
        "INSERT INTO remote_jobs (job_id, name, state, content_hashes, texts, submitted_at) "
        "VALUES (?, ?, 'submitted', ?, ?, ?)",
        [job_id, name, hashes, len(hashes), now],
    )


def mark_failed(con: Any, job_id: str, name: str, error: str, now: Any) -> None:
    con.execute(
        "UPDATE remote_jobs SET state = 'failed', error = ?, finished_at = ? WHERE job_id = ? AND name = ?",
        [error, now, job_id, name],
    )


def mark_ingested(con: Any, job_id: str, name: str, tokens: int, cost: float, now: Any) -> None:
    con.execute(
        "UPDATE remote_jobs SET state = 'ingested', tokens = ?, cost_usd = ?, finished_at = ? "
        "WHERE job_id = ? AND name = ?",
        [tokens, cost, now, job_id, name],
    )


def pending(con: Any, job_id: str) -> list[str]:
    """Names of the job's Batch Mode jobs submitted and not yet ingested or failed, oldest first."""
    rows = con.execute(
        "SELECT name FROM remote_jobs WHERE job_id = ? AND state = 'submitted' ORDER BY submitted_at", [job_id]
    ).fetchall()
    return [str(r[0]) for r in rows]


def hashes_of(con: Any, job_id: str, name: str) -> list[str]:
    row = con.execute("SELECT content_hashes FROM remote_jobs WHERE job_id = ? AND name = ?", [job_id, name]).fetchall()
    return list(row[0][0]) if row else []


def texts_to_submit(con: Any, job_id: str, key_prefixes: list[str]) -> pd.DataFrame:
    """content_hash, text of the job's unfinished batches that neither the cache (keys `prefix || hash`, for each of
    `key_prefixes`: cache.key_prefixes) nor a submitted Batch Mode job covers, in manifest order."""
    frame: pd.DataFrame = con.df(
        f"""
        WITH covered AS (
            SELECT DISTINCT unnest(content_hashes) AS content_hash FROM remote_jobs
            WHERE job_id = ? AND state = 'submitted'
        )
        SELECT m.content_hash, any_value(m.text) AS text
        FROM manifest m JOIN batches b ON b.job_id = m.job_id AND b.batch_no = m.batch_no
        WHERE m.job_id = ? AND b.status <> 'done'
          AND m.content_hash NOT IN (SELECT content_hash FROM covered)
          AND {uncached_sql("m.content_hash")}
        GROUP BY m.content_hash ORDER BY min(m.ordinal)
        """,
        [job_id, job_id, *key_prefixes],
    )
    return frame


def texts_of(con: Any, job_id: str, hashes: list[str]) -> dict[str, str]:
    """content hash -> text as planned, for these hashes."""
    rows = con.execute(
        "SELECT content_hash, any_value(text) FROM manifest WHERE job_id = ? AND content_hash IN "
        "(SELECT unnest(?::VARCHAR[])) GROUP BY content_hash",
        [job_id, hashes],
    ).fetchall()
    return {str(h): str(t) for h, t in rows}
