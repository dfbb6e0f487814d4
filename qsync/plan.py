"""Planning: snapshot the input into the manifest once, cut it into batches, skip bad rows with reasons.

Everything happens in one transaction: a crash while planning leaves no half-planned job behind.
Batches are ranges of the manifest; resume only ever reads the manifest, so it never depends on
offsets into a source that may have changed since.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .checkpoint import insert_job
from .clock import Clock
from .errors import ConfigError, SourceError
from .mediaplan import MEDIA_TABLE, check_media, media_base, media_store, register_media
from .mediatokens import MEDIA_MODEL
from .sources import INPUT_VIEW, Columns, Source
from .store import Store, first_row

# Rough and deliberately simple: ~4 bytes of UTF-8 per token for Gemini's tokenizer on English text.
# Used to skip oversize texts before paying for them, and for estimates, where it is labelled as such.
BYTES_PER_TOKEN = 4


class PlanLimits(Protocol):
    """What planning needs to know of the embedder."""

    max_text_tokens: int
    max_batch_texts: int


@dataclass(frozen=True)
class PlanSummary:
    job_id: str
    total_records: int
    valid_records: int
    skipped_records: int
    batches: int
    unchanged_records: int = 0


def create_job(
    store: Store,
    job_id: str,
    source: Source,
    columns: Columns,
    embedder: PlanLimits,
    config: dict[str, Any],
    collection: str,
    batch_size: int,
    clock: Clock,
    target: str = "",
    embedder_signature: str = "",
    incremental: bool = True,
    delete_missing: bool = False,
    max_cost_usd: float | None = None,
) -> PlanSummary:
    """Plan a job. With `incremental`, records whose text the target already holds, embedded by the same
    embedder, are left out (unchanged: nothing to pay, nothing to write); with `delete_missing`, points
    of records that are no longer in the source are scheduled for deletion."""
    if batch_size < 1:
        raise ConfigError("batch size must be at least 1")
    batch_size = min(batch_size, embedder.max_batch_texts)
    now = clock.now()
    with store.transaction() as con:
        if first_row(con.execute("SELECT 1 FROM jobs WHERE job_id = ?", [job_id])):
            raise ConfigError(f"a job named {job_id!r} exists already")
        rejected = source.register(con, columns)
        try:
            if columns.media_kind:
                model = str(getattr(embedder, "model", MEDIA_MODEL))
                check_media(con, columns.media_kind, media_base(source), media_store(store.path), model)
            else:  # one query for both kinds of job: text jobs join an empty media table
                register_media(con, [])
            media = bool(columns.media_kind)
            # A media record's text is its caption: it may be missing or blank, the media may not.
            text_checks = (
                "WHEN media_problem IS NOT NULL THEN media_problem"
                if media
                else """WHEN text IS NULL THEN 'text is missing'
                        WHEN regexp_full_match(text, '[\\s\\p{Z}]*') THEN 'text is empty or whitespace'"""
            )
            con.execute(
                f"""
                CREATE OR REPLACE TEMP TABLE __qsync_checked AS
                WITH n AS (
                    SELECT i.*, m.media_ref, m.media_hash, m.media_problem,
                        CAST(ceil(strlen(coalesce(text, '')) / {BYTES_PER_TOKEN}) AS INTEGER) AS text_tokens,
                        CAST(coalesce(m.media_tokens, 0) AS INTEGER) AS media_part,
                        CAST(text_tokens + media_part AS INTEGER) AS token_estimate,
                        min(ordinal) OVER (PARTITION BY record_id) AS first_ordinal
                    FROM {INPUT_VIEW} i LEFT JOIN {MEDIA_TABLE} m USING (ordinal)
                )
                SELECT ordinal, record_id, coalesce(text, '') AS text, payload, token_estimate, media_part AS media_tokens, media_ref,
                    coalesce(media_hash, sha256(text)) AS content_hash,
                    CASE
                        WHEN problem IS NOT NULL THEN problem
                        WHEN record_id IS NULL THEN 'id is missing'
                        {text_checks}
                        WHEN ordinal <> first_ordinal
                            THEN 'duplicate id (first seen at row ' || CAST(first_ordinal + 1 AS VARCHAR) || ')'
                        WHEN text_tokens > {embedder.max_text_tokens}
                            THEN 'text too long: ~' || CAST(text_tokens AS VARCHAR)
                                 || ' tokens (estimated), limit {embedder.max_text_tokens}'
                    END AS reason
                FROM n
                """
            )
        except Exception as exc:
            if "duckdb" in type(exc).__module__:
                raise SourceError(f"cannot read {source.description}: {exc}") from exc
            raise
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE __qsync_unchanged AS
            SELECT c.ordinal FROM __qsync_checked c JOIN points p
              ON p.target = ? AND p.embedder = ? AND p.record_id = c.record_id AND p.source_hash = c.content_hash
            WHERE c.reason IS NULL AND ?
            """,
            [target, embedder_signature, incremental and bool(target)],
        )
        con.execute(
            f"""
            INSERT INTO manifest
            SELECT ?, ordinal, record_id, content_hash,
                CAST((row_number() OVER (ORDER BY ordinal) - 1) // {batch_size} AS INTEGER),
                token_estimate, text, payload, media_ref, media_tokens
            FROM __qsync_checked
            WHERE reason IS NULL AND ordinal NOT IN (SELECT ordinal FROM __qsync_unchanged)
            ORDER BY ordinal
            """,
            [job_id],
        )
        if delete_missing and target:
            # Only ids absent from the source leave; a record still there but now invalid keeps its point.
            con.execute(
                """INSERT INTO deletions (job_id, record_id, point_id)
                   SELECT ?, record_id, point_id FROM points
                   WHERE target = ? AND record_id NOT IN
                         (SELECT record_id FROM __qsync_checked WHERE record_id IS NOT NULL)""",
                [job_id, target],
            )
        con.execute(
            "INSERT INTO skipped SELECT ?, ordinal, record_id, 'plan', reason, ? FROM __qsync_checked "
            "WHERE reason IS NOT NULL ORDER BY ordinal",
            [job_id, now],
        )
        for row in rejected:
            con.execute(
                "INSERT INTO skipped VALUES (?, ?, NULL, 'plan', ?, ?)",
                [job_id, row.ordinal, row.reason, now],
            )
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
        insert_job(con, job_id, config, source.description, collection, batch_size,
                   (valid + skipped, skipped, batches, unchanged), max_cost_usd, now)  # fmt: skip
        for name in ("__qsync_checked", "__qsync_csv", "__qsync_unchanged"):
            con.execute(f"DROP TABLE IF EXISTS {name}")
        con.execute(f"DROP VIEW IF EXISTS {INPUT_VIEW}")
        _unregister(con)
    return PlanSummary(job_id, valid + skipped, valid, skipped, batches, unchanged)


def _unregister(con: Any) -> None:
    for name in (INPUT_VIEW, "__qsync_sql", MEDIA_TABLE):
        try:
            con.unregister(name)
        except Exception:  # not registered for this source kind
            pass
