"""What the CLI, the Python API, the widgets, verify and search read of a job, beside its figures (figures.py):
its batches, its skipped records, a batch's records, what its collection should hold, what was planned."""

from __future__ import annotations

from typing import Any

import pandas as pd

from qsync.formatting import skip_kinds
from qsync.ledger.cache import uncached_sql
from qsync.ledger.jobs import job_record
from qsync.ledger.ledger import Ledger

BATCH_COLUMNS = (
    "batch_no, status, records, skipped_records, attempts, last_error, embedded_texts, cache_hits, tokens, "
    "tokens_estimated, media_tokens, media_tokens_estimated, saved_tokens, cost_usd, enrich_tokens, enrich_cost_usd, "
    "started_at, finished_at, duration_s, first_ordinal, last_ordinal"
)


def batches(ledger: Ledger, job: str, status: str | None = None) -> pd.DataFrame:
    """The job's batches with attempts, last error, records, tokens and cost (JobNotFound for no such job)."""
    job_record(ledger, job)
    sql = f"SELECT {BATCH_COLUMNS} FROM batches WHERE job_id = ?"
    params: list[Any] = [job]
    if status:
        sql += " AND status = ?"
        params.append(status)
    return ledger.query_df(sql + " ORDER BY batch_no", params)


def skipped(ledger: Ledger, job: str) -> pd.DataFrame:
    """Records that were not loaded, each with the reason."""
    job_record(ledger, job)
    return ledger.query_df(
        "SELECT ordinal, record_id, stage, reason, created_at FROM skipped WHERE job_id = ? ORDER BY ordinal NULLS LAST",
        [job],
    )


def batch_records(ledger: Ledger, job: str, batch_no: int) -> pd.DataFrame:
    """The records of one batch, as planned."""
    return ledger.query_df(
        "SELECT ordinal, record_id, content_hash, token_estimate, text, payload FROM manifest "
        "WHERE job_id = ? AND batch_no = ? ORDER BY ordinal",
        [job, batch_no],
    )


def planned_records(
    ledger: Ledger, collection: str, points: list[tuple[str, int]]
) -> dict[tuple[str, int], tuple[str, str | None]]:
    """(record id, chunk number) -> (text, media path) of points a collection holds (for search hits), as planned
    by the job that last wrote each point: a record's whole text, or the passage of one of its chunks (never an
    older job's text of the same record)."""
    if not points:
        return {}
    ids, chunks = sorted({r for r, _ in points}), sorted({c for _, c in points})
    rows = ledger.query_rows(
        f"SELECT m.record_id, coalesce(m.chunk_no, 0), any_value(m.text), any_value(m.media_ref) "
        f"FROM points p JOIN manifest m ON m.job_id = p.job_id AND m.record_id = p.record_id "
        f"AND coalesce(m.chunk_no, 0) = p.chunk_no "
        f"WHERE p.job_id IN (SELECT job_id FROM jobs WHERE collection = ?) "
        f"AND p.record_id IN ({', '.join('?' * len(ids))}) "
        f"AND p.chunk_no IN ({', '.join('?' * len(chunks))}) GROUP BY 1, 2",
        [collection, *ids, *chunks],
    )
    wanted = set(points)
    found = {(str(r), int(c)): (str(t), m) for r, c, t, m in rows if (str(r), int(c)) in wanted}
    if len(found) < len(wanted):  # a sink whose points the ledger does not follow (":memory:"): any job's plan
        rows = ledger.query_rows(
            f"SELECT record_id, coalesce(chunk_no, 0), any_value(text), any_value(media_ref) FROM manifest "
            f"WHERE job_id IN (SELECT job_id FROM jobs WHERE collection = ?) "
            f"AND record_id IN ({', '.join('?' * len(ids))}) GROUP BY 1, 2",
            [collection, *ids],
        )
        for r, c, t, m in rows:
            if (str(r), int(c)) in wanted:
                found.setdefault((str(r), int(c)), (str(t), m))
    return found


def chunks(ledger: Ledger, job: str) -> pd.DataFrame:
    """The texts a job planned to embed, a row each: a whole record (chunk 0 of 1), or one chunk of a long record
    with its characters in the record's text (`char_start`, `char_end`) and its tokens (estimated); `chunk` is
    "3/7" as search shows it (`chunk_no` counts from 0, as in the payload)."""
    return ledger.query_df(
        """SELECT record_id, CAST(coalesce(chunk_no, 0) + 1 AS VARCHAR) || '/' || CAST(coalesce(chunk_count, 1) AS VARCHAR)
                   AS chunk, coalesce(chunk_no, 0) AS chunk_no, coalesce(chunk_count, 1) AS chunk_count,
               CAST(json_extract(payload, '$.char_start') AS BIGINT) AS char_start,
               CAST(json_extract(payload, '$.char_end') AS BIGINT) AS char_end,
               token_estimate AS tokens, batch_no
           FROM manifest WHERE job_id = ? ORDER BY ordinal, chunk_no""",
        [job],
    )


def expected_points(ledger: Ledger, target: str) -> pd.DataFrame:
    """What a collection should hold (record_id, point_id, vector_hash, embedder, payload, the job_id that last
    wrote it, and which chunk of its record each point is): every point any job loaded into the target, minus those
    deleted since."""
    return ledger.query_df(
        "SELECT record_id, point_id, vector_hash, embedder, payload, job_id, coalesce(chunk_no, 0) AS chunk_no "
        "FROM points WHERE target = ?",
        [target],
    )


def skip_reasons(ledger: Ledger, job: str) -> dict[str, int]:
    """How many records were skipped for each kind of reason (formatting.reason_kinds), most common first."""
    kinds = skip_kinds(ledger.query_df("SELECT reason FROM skipped WHERE job_id = ?", [job])["reason"])
    return {str(reason): int(n) for reason, n in zip(kinds["reason"], kinds["records"], strict=True)}


# What an estimate reads of a planned manifest: each distinct content once, its text (a media record's caption),
# its token estimate, and the media part of it.
_MANIFEST_TEXTS = """
    SELECT content_hash, any_value(text) AS text, any_value(token_estimate) AS token_estimate,
           any_value(coalesce(media_tokens, 0)) AS media_tokens
    FROM manifest WHERE job_id = ? GROUP BY content_hash"""


def manifest_texts(ledger: Ledger, job: str) -> pd.DataFrame:
    """content_hash, text, token_estimate, media_tokens: each distinct content of the job's manifest once, in no
    particular order (an estimate picks its calibration sample by content hash)."""
    return ledger.query_df(_MANIFEST_TEXTS, [job])


def manifest_size(ledger: Ledger, job: str) -> tuple[int, int, int, int]:
    """(records, distinct contents, estimated tokens, media tokens) of the job's manifest."""
    row = ledger.query_rows(
        "SELECT count(*), count(DISTINCT content_hash), coalesce(sum(token_estimate), 0), "
        "coalesce(sum(media_tokens), 0) FROM manifest WHERE job_id = ?",
        [job],
    )[0]
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def text_token_estimates(ledger: Ledger, job: str) -> list[int]:
    """Each distinct content's estimated text tokens (its media part left out)."""
    rows = ledger.query_rows(
        "SELECT any_value(token_estimate - coalesce(media_tokens, 0)) FROM manifest WHERE job_id = ? "
        "GROUP BY content_hash",
        [job],
    )
    return [int(r[0]) for r in rows]


def planned_units(ledger: Ledger, name: str) -> pd.DataFrame:
    """record_id, chunk_no, content_hash of every unit (a record, or a chunk of one) the jobs NAME, NAME#2, …
    planned: a re-sync plans only what changed, so the units of a source read more than once are their union."""
    return ledger.query_df(
        "SELECT record_id, chunk_no, any_value(content_hash) AS content_hash FROM manifest "
        "WHERE job_id = ? OR starts_with(job_id, ?) GROUP BY record_id, chunk_no ORDER BY record_id, chunk_no",
        [name, name + "#"],
    )


_UNCACHED = """
    WITH c AS (
        SELECT content_hash, any_value(text) AS text, any_value(token_estimate - coalesce(media_tokens, 0)) AS own,
               any_value(coalesce(media_tokens, 0)) AS media
        FROM manifest WHERE job_id = ? GROUP BY content_hash
    ), u AS (
        SELECT *, {uncached} AS todo FROM c
    )""".format(uncached=uncached_sql("c.content_hash"))


def uncached_contents(
    ledger: Ledger, job: str, key_prefixes: list[str], sample: int
) -> tuple[int, int, int, int, int, pd.DataFrame]:
    """Of the job's distinct contents, those the cache holds under none of `key_prefixes` (cache.key_prefixes), counted
    in SQL (a million texts never leave the file): (distinct contents, uncached, their own text tokens, their media
    tokens, how many send a text, a sample of those: columns text, own, the first `sample` by content hash). One pass
    over the manifest: at 2M records each pass is a second or more before the job's first batch."""
    params = [job, *key_prefixes, sample]
    row = ledger.query_rows(
        _UNCACHED + " SELECT count(*), count(*) FILTER (WHERE todo), coalesce(sum(own) FILTER (WHERE todo), 0), "
        "coalesce(sum(media) FILTER (WHERE todo), 0), count(*) FILTER (WHERE todo AND text <> ''), "
        "arg_min({'text': text, 'own': own}, content_hash, ?) FILTER (WHERE todo AND text <> '') FROM u",
        params,
    )[0]
    picked = pd.DataFrame(row[5] or [], columns=["text", "own"])
    return int(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4]), picked
