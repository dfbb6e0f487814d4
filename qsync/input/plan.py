"""Planning: read the source once, check every record, and snapshot the valid ones into the job's manifest;
bad rows are skipped with their reasons. The source is read, checked and recorded inside one ledger transaction
(ledger.plans writes what this module leaves in the CHECKED table), so a crash while planning leaves nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from qsync.catalog.models import MEDIA_MODEL
from qsync.catalog.tokens import sql_estimate_tokens
from qsync.clock import Clock
from qsync.disk import LEDGER_MARGIN, ensure_room
from qsync.errors import ConfigError, JobExists, SourceError
from qsync.input.changed import CHANGED_VALUE, PRESENT_TABLE, ChangedSince
from qsync.input.chunks import add_page_windows, split_long_texts
from qsync.input.media_plan import MEDIA_TABLE, MediaRow, check_media, media_base, register_media
from qsync.input.postgres import POSTGRES_TABLE
from qsync.input.records import INPUT_VIEW, MAX_PAYLOAD_BYTES, brief
from qsync.input.sources import FRAME_VIEW, Source
from qsync.ledger.jobs import job_exists
from qsync.ledger.ledger import Ledger
from qsync.ledger.plans import CHECKED, CHUNKS, PlanSummary, ReadMark, record_plan
from qsync.spec.chunking import Chunking
from qsync.spec.columns import Columns


class PlanLimits(Protocol):
    """What planning needs to know of the embedder."""

    @property
    def model(self) -> str: ...

    @property
    def max_text_tokens(self) -> int: ...

    @property
    def max_batch_texts(self) -> int: ...

    @property
    def dimensions(self) -> int: ...

    @property
    def task_type(self) -> str: ...


def plan_job(
    ledger: Ledger,
    job_id: str,
    source: Source,
    columns: Columns,
    limits: PlanLimits,
    config: dict[str, Any],
    collection: str,
    batch_size: int,
    clock: Clock,
    *,
    target: str = "",
    embedder_signature: str = "",
    incremental: bool = True,
    delete_missing: bool = False,
    max_cost_usd: float | None = None,
    chunking: Chunking | None = None,
    whole_records: str | None = None,
    changed: ChangedSince | None = None,
    before_commit: Callable[[], None] | None = None,
) -> PlanSummary:
    """Plan a job: snapshot the source into its manifest. Refused if a job of that name exists already. With
    `chunking` on, a text longer than the model takes is cut into chunks (input.chunks), a manifest row each;
    `whole_records` names what cannot work on chunks (enrichment): the plan is refused if a record must be cut.
    `changed`: read only the rows changed since a mark (input.changed), and record where the next job starts.
    `before_commit`: a last check (the collection), run inside the planning transaction once the source is read: what
    it raises leaves nothing planned, and what it waits for (a shard loading) overlaps the planning."""
    if batch_size < 1:
        raise ConfigError("batch size must be at least 1")
    batch_size = min(batch_size, limits.max_batch_texts)
    chunking = chunking or Chunking()
    now = clock.now()
    ensure_room(ledger.path, LEDGER_MARGIN, "planning the job into the checkpoint file")
    if changed is not None:
        source = replace(source, changed=changed)  # type: ignore[type-var]  # options.build_spec checked the kind
    with ledger.transaction() as con:
        if job_exists(con, job_id):
            raise JobExists(f"a job named {job_id!r} exists already")
        rejected = source.register(con, columns)
        try:
            long_pdfs = check_records(con, source, columns, limits, ledger, skip_long=not chunking.enabled)
            _split(con, chunking, limits, whole_records)
            add_page_windows(con, long_pdfs)
            read = _read_mark(con, changed)
        except Exception as exc:
            if "duckdb" in type(exc).__module__:
                raise SourceError(f"cannot read {source.description}: {brief(exc)}") from exc
            raise
        summary = record_plan(
            con, job_id, config=config, source=source.description, collection=collection, batch_size=batch_size,
            target=target, embedder_signature=embedder_signature, incremental=incremental,
            delete_missing=delete_missing, max_cost_usd=max_cost_usd,
            rejected=[(row.ordinal, row.reason) for row in rejected], now=now, read=read,
        )  # fmt: skip
        for name in (CHECKED, CHUNKS, "__qsync_csv", POSTGRES_TABLE, PRESENT_TABLE):
            con.execute(f"DROP TABLE IF EXISTS {name}")
        con.execute(f"DROP VIEW IF EXISTS {INPUT_VIEW}")
        _unregister(con)
        if before_commit is not None:
            before_commit()
    return summary


def _read_mark(con: Any, changed: ChangedSince | None) -> ReadMark | None:
    """What the plan read with --changed-since: the largest value of the column among the rows read (the previous
    mark again when no row changed), and the ids read for deletions."""
    if changed is None:
        return None
    row = con.execute(f"SELECT CAST(max({CHANGED_VALUE}) AS VARCHAR) FROM {INPUT_VIEW}").fetchone()
    high_water = row[0] if row and row[0] is not None else changed.since
    return ReadMark(changed.column, changed.since, high_water, PRESENT_TABLE if changed.reads_ids else None)


def _split(con: Any, chunking: Chunking, limits: PlanLimits, whole_records: str | None) -> None:
    budget = chunking.budget(int(limits.max_text_tokens))
    # At the model's own limit, a text the model took whole before (its vector is cached) stays whole: the upper
    # estimate must never re-cut, and re-pay, what was loaded as one point. A size the user chose cuts regardless.
    whole = limits if chunking.tokens is None else None
    cut = split_long_texts(con, CHECKED, budget, chunking.overlap, enabled=chunking.enabled, whole=whole)
    if cut and whole_records:
        raise ConfigError(
            f"{cut} record(s) are longer than {budget:,} tokens and would be cut into chunks, but "
            f"{whole_records} works on whole records: run with --chunk-tokens 0 to skip them as too long"
        )


def check_records(
    con: Any, source: Source, columns: Columns, limits: PlanLimits, ledger: Ledger, *, skip_long: bool = True
) -> list[MediaRow]:
    """Create CHECKED from the source's normalized input: each record's hash, token estimate, media, and the
    reason it is skipped (NULL when it is to be embedded). `skip_long`: a text over the model's limit is skipped
    (without chunking); else it is left to be cut into chunks, and a PDF longer than the model reads is cut into
    page windows: the rows of those PDFs are returned."""
    long_pdfs: list[MediaRow] = []
    if columns.media_kind:
        long_pdfs = check_media(con, columns.media_kind, media_base(source), ledger.media_dir,
                                limits.model or MEDIA_MODEL, cut=not skip_long)  # fmt: skip
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
    limit = int(limits.max_text_tokens) if skip_long or media else 2**31 - 1
    con.execute(
        rf"""
        CREATE OR REPLACE TEMP TABLE {CHECKED} AS
        WITH n AS (
            SELECT i.*, m.media_ref, m.media_hash, m.media_problem,
                {sql_estimate_tokens("text")} AS text_tokens,
                CAST(coalesce(m.media_tokens, 0) AS INTEGER) AS media_part,
                CAST(text_tokens + media_part AS INTEGER) AS token_estimate,
                min(ordinal) OVER (PARTITION BY record_id) AS first_ordinal
            FROM {INPUT_VIEW} i LEFT JOIN {MEDIA_TABLE} m USING (ordinal)
        )
        SELECT ordinal, record_id, coalesce(text, '') AS text, payload, token_estimate, media_part AS media_tokens,
            media_ref, coalesce(media_hash, sha256(text)) AS content_hash,
            CASE
                WHEN problem IS NOT NULL THEN problem
                WHEN record_id IS NULL THEN 'id is missing'
                WHEN regexp_full_match(record_id, '[\s\p{{Z}}]*') THEN 'id is empty or whitespace'
                {text_checks}
                WHEN ordinal <> first_ordinal
                    THEN 'duplicate id (first seen at row ' || CAST(first_ordinal + 1 AS VARCHAR) || ')'
                WHEN strlen(payload) > {MAX_PAYLOAD_BYTES}
                    THEN 'payload too large: ' || CAST(strlen(payload) // 1048576 AS VARCHAR) || ' MB of JSON, limit '
                         || '{MAX_PAYLOAD_BYTES // 1048576} MB'
                WHEN text_tokens > {limit}
                    THEN 'text too long: ~' || CAST(text_tokens AS VARCHAR) || ' tokens (estimated), limit {limit}'
            END AS reason
        FROM n
        """
    )
    return long_pdfs


def _unregister(con: Any) -> None:
    for name in (INPUT_VIEW, "__qsync_sql", FRAME_VIEW, MEDIA_TABLE):
        try:
            con.unregister(name)
        except Exception:  # not registered for this source kind
            pass
