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
) -> PlanSummary:
    """Write the job planned from CHECKED. With `incremental`, records whose text the target already holds,
    embedded by the same embedder, are left out (unchanged: nothing to pay, nothing to write); with
    `delete_missing`, points of records that are no longer in the source are scheduled for deletion."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE __qsync_unchanged AS
        SELECT c.ordinal FROM {CHECKED} c JOIN points p
          ON p.target = ? AND p.embedder = ? AND p.record_id = c.record_id AND p.source_hash = c.content_hash
        WHERE c.reason IS NULL AND ?
        """,
        [target, embedder_signature, incremental and bool(target)],
    )
    con.execute(
        f"""
        INSERT INTO manifest
        SELECT ?, ordinal, record_id, content_hash,
            CAST((row_number() OVER (ORDER BY ordinal) - 1) // {int(batch_size)} AS INTEGER),
            token_estimate, text, payload, media_ref, media_tokens
        FROM {CHECKED}
        WHERE reason IS NULL AND ordinal NOT IN (SELECT ordinal FROM __qsync_unchanged)
        ORDER BY ordinal
        """,
        [job_id],
    )
    if delete_missing and target:
        # Only ids absent from the source leave; a record still there but now invalid keeps its point.
        con.execute(
            f"""INSERT INTO deletions (job_id, record_id, point_id)
               SELECT ?, record_id, point_id FROM points
               WHERE target = ? AND record_id NOT IN (SELECT record_id FROM {CHECKED} WHERE record_id IS NOT NULL)""",
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
            """SELECT (SELECT count(*) FROM manifest WHERE job_id = $1),
                  (SELECT count(*) FROM skipped WHERE job_id = $1),
                  (SELECT count(DISTINCT batch_no) FROM manifest WHERE job_id = $1),
                  (SELECT count(*) FROM __qsync_unchanged)""",
            [job_id],
        )
    )
    assert counts is not None
    to_embed, skipped, batches, unchanged = (int(c) for c in counts)
    valid = to_embed + unchanged
    con.execute(
        """INSERT INTO batches (job_id, batch_no, status, records, first_ordinal, last_ordinal)
           SELECT ?, batch_no, 'pending', count(*), min(ordinal), max(ordinal)
           FROM manifest WHERE job_id = ? GROUP BY batch_no ORDER BY batch_no""",
        [job_id, job_id],
    )
    con.execute(
        """INSERT INTO jobs (job_id, status, message, config, source, collection, batch_size, total_records,
               skipped_records, batches_total, created_at, updated_at, unchanged_records, max_cost_usd)
           VALUES (?, 'planned', NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        [job_id, json.dumps(config), source, collection, batch_size, valid + skipped, skipped, batches, now, now,
         unchanged, max_cost_usd],
    )  # fmt: skip
    con.execute("DROP TABLE IF EXISTS __qsync_unchanged")
    return PlanSummary(job_id, valid + skipped, valid, skipped, batches, unchanged)
