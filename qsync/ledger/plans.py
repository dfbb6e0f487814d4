"""A planned job into the ledger: its manifest, its skips, its batches and its row, from the checked input the
planner left in the planning transaction (input.plan). One transaction: a crash while planning leaves no
half-planned job behind.

Batches are ranges of the manifest; resume only ever reads the manifest, so it never depends on offsets into a
source that may have changed since.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from qsync.sql import first_row

CHUNKS = "__qsync_chunks"  # input.chunks: ordinal, chunk_no, chunk_count, char_start, char_end, text, token_estimate,
# media_ref, media_hash, media_tokens, page_start, page_end
CHECKED = "__qsync_checked"  # the planner's table: ordinal, record_id, text, payload, token_estimate, media_tokens,
# media_ref, content_hash, reason (NULL for a record to embed)


@dataclass(frozen=True)
class PlanSummary:
    job_id: str
    total_records: int
    valid_records: int
    skipped_records: int
    batches: int
    unchanged_records: int = 0
    chunks: int = 0  # points the valid records make: one each, or one per chunk of a long one


@dataclass(frozen=True)
class ReadMark:
    """What a plan with --changed-since read (input.changed): the rows with `column` >= `since` (every row when None)
    and the largest value among them, where the next job starts; `present`: the table of every id of the source when
    deletions are found by ids alone (the rows not read count as unchanged, not as gone)."""

    column: str
    since: str | None
    high_water: str | None
    present: str | None = None


def record_plan(
    con: Any,
    job_id: str,
    *,
    config: dict[str, Any],
    source: str,
    collection: str,
    batch_size: int,
    target: str,
    embedder_signature: str,
    incremental: bool,
    delete_missing: bool,
    max_cost_usd: float | None,
    rejected: list[tuple[int | None, str]],
    now: Any,
    read: ReadMark | None = None,
) -> PlanSummary:
    """Write the job planned from CHECKED and CHUNKS (the chunks of records cut by the planner). With `incremental`,
    points the target already holds with the same text and payload, embedded by the same embedder, are left out
    (unchanged: nothing to pay, nothing to write); points a shortened record no longer has are deleted; with
    `delete_missing`, so are the points of records that are no longer in the source. A batch holds whole records:
    about `batch_size` chunks (more when one record has more)."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE __qsync_units AS
        SELECT c.ordinal, c.record_id, coalesce(k.chunk_no, 0) AS chunk_no, coalesce(k.chunk_count, 1) AS chunk_count,
            coalesce(k.text, c.text) AS text,
            CASE WHEN k.ordinal IS NULL THEN c.content_hash WHEN k.media_hash IS NOT NULL THEN k.media_hash
                 ELSE sha256(k.text) END AS content_hash,
            CASE WHEN k.media_hash IS NOT NULL THEN c.token_estimate - c.media_tokens + k.media_tokens
                 ELSE coalesce(k.token_estimate, c.token_estimate) END AS token_estimate,
            -- json_merge_patch drops the keys whose value is null: a text chunk has no pages, a page window no
            -- characters.
            CASE WHEN k.ordinal IS NULL THEN c.payload::JSON ELSE json_merge_patch(c.payload, json_object(
                'chunk_no', k.chunk_no, 'chunk_count', k.chunk_count, 'char_start', k.char_start,
                'char_end', k.char_end, 'page_start', k.page_start, 'page_end', k.page_end)) END AS payload,
            coalesce(k.media_ref, c.media_ref) AS media_ref, coalesce(k.media_tokens, c.media_tokens) AS media_tokens
        FROM {CHECKED} c LEFT JOIN {CHUNKS} k USING (ordinal)
        WHERE c.reason IS NULL
        """
    )
    # Unchanged: a point the target holds with the same text and payload as planned, by the same embedder (points
    # written before payload hashes were kept: by their text alone). One anti join with the points table: the
    # unchanged rows (all but 1% in a re-sync) are never written out.
    todo = "SELECT * FROM __qsync_units"
    if incremental and target:
        todo = """
            SELECT u.* FROM __qsync_units u ANTI JOIN
                (SELECT record_id, chunk_no, source_hash, payload_hash FROM points WHERE target = $1 AND embedder = $2) p
              ON p.record_id = u.record_id AND p.chunk_no = u.chunk_no AND p.source_hash = u.content_hash
                 AND (p.payload_hash IS NULL OR p.payload_hash = sha256(u.payload::VARCHAR))"""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE __qsync_todo AS
        WITH todo AS MATERIALIZED ({todo}
        ), starts AS (  -- where each record's chunks start in the run of chunks: a batch holds whole records
            SELECT ordinal, sum(count(*)) OVER (ORDER BY ordinal) - count(*) AS start FROM todo GROUP BY ordinal
        ), numbers AS (  -- numbered a record at a time, not a row of text at a time: half the time at 2M records
            SELECT ordinal, CAST(dense_rank() OVER (ORDER BY start // {int(batch_size)}) - 1 AS INTEGER) AS batch_no
            FROM starts
        )
        SELECT todo.*, batch_no FROM todo JOIN numbers USING (ordinal)
        """,
        [target, embedder_signature] if incremental and target else [],
    )
    # The payload's hash is not written (64 bytes a row, a quarter of a 2M plan's WAL): it is computed from the
    # payload when a batch is read (batches.read_manifest).
    con.execute(
        """
        INSERT INTO manifest (job_id, ordinal, record_id, content_hash, batch_no, token_estimate, text, payload,
            media_ref, media_tokens, chunk_no, chunk_count)
        SELECT ?, ordinal, record_id, content_hash, batch_no, token_estimate, text, payload, media_ref, media_tokens,
            chunk_no, chunk_count
        FROM __qsync_todo ORDER BY ordinal, chunk_no
        """,
        [job_id],
    )
    if target:  # chunks a record still in the source no longer has (it was cut shorter, or fits in one now)
        con.execute(
            """INSERT INTO deletions (job_id, record_id, point_id, surplus)
               SELECT ?, p.record_id, p.point_id, true FROM points p
               JOIN (SELECT record_id, max(chunk_count) AS chunks FROM __qsync_units GROUP BY record_id) u
                 USING (record_id)
               WHERE p.target = ? AND p.chunk_no >= u.chunks""",
            [job_id, target],
        )
    if delete_missing and target:
        # Only ids absent from the source leave; a record still there but now invalid keeps its points. When only
        # changed rows were read, the source's ids were read apart: a record is gone when it is in neither.
        present = f"SELECT record_id FROM {CHECKED} WHERE record_id IS NOT NULL"
        if read and read.present:
            present += f" UNION ALL SELECT record_id FROM {read.present} WHERE record_id IS NOT NULL"
        con.execute(
            f"""INSERT INTO deletions (job_id, record_id, point_id)
               SELECT ?, record_id, point_id FROM points
               WHERE target = ? AND record_id NOT IN ({present})""",
            [job_id, target],
        )
    con.execute(
        f"INSERT INTO skipped SELECT ?, ordinal, record_id, 'plan', reason, ? FROM {CHECKED} "
        "WHERE reason IS NOT NULL ORDER BY ordinal",
        [job_id, now],
    )
    for ordinal, reason in rejected:
        con.execute("INSERT INTO skipped VALUES (?, ?, NULL, 'plan', ?, ?)", [job_id, ordinal, reason, now])
    counts = first_row(
        con.execute(
            """SELECT (SELECT count(DISTINCT ordinal) FROM __qsync_todo),
                  (SELECT count(*) FROM skipped WHERE job_id = $1),
                  (SELECT count(DISTINCT batch_no) FROM __qsync_todo),
                  (SELECT count(DISTINCT ordinal) FROM __qsync_units),
                  (SELECT count(*) FROM __qsync_units)""",
            [job_id],
        )
    )
    assert counts is not None
    to_embed, skipped, batches, valid, chunks = (int(c) for c in counts)
    unchanged = valid - to_embed  # records with no chunk to write
    con.execute(
        """INSERT INTO batches (job_id, batch_no, status, records, chunks, first_ordinal, last_ordinal)
           SELECT ?, batch_no, 'pending', count(DISTINCT ordinal), count(*), min(ordinal), max(ordinal)
           FROM __qsync_todo GROUP BY batch_no ORDER BY batch_no""",
        [job_id],
    )
    con.execute(
        """INSERT INTO jobs (job_id, status, message, config, source, collection, batch_size, total_records,
               skipped_records, batches_total, created_at, updated_at, unchanged_records, max_cost_usd, total_chunks,
               since_column, since_value, high_water)
           VALUES (?, 'planned', NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        [job_id, json.dumps(config), source, collection, batch_size, valid + skipped, skipped, batches, now, now,
         unchanged, max_cost_usd, chunks, read and read.column, read and read.since, read and read.high_water],
    )  # fmt: skip
    for table in ("__qsync_units", "__qsync_todo"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    return PlanSummary(job_id, valid + skipped, valid, skipped, batches, unchanged, chunks)
