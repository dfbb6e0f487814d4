"""The DuckDB schema, versioned and migrated forward.

MIGRATIONS[i] takes a store from version i to i + 1: SQL, or a function of the connection when SQL alone
cannot say it. A migration and the record that it ran commit in one transaction, so a crash
mid-migration leaves the file at the old version, never in between.
Tables that are updated in place (jobs, batches) carry no index: DuckDB handles an UPDATE of an indexed
table as delete + insert and the tables are small, so a scan is both correct and fast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    from qsync.ledger.vectorfile import VectorFile

SCHEMA_VERSION = 16

_V1 = """
CREATE TABLE qsync_schema (version INTEGER NOT NULL);

CREATE TABLE jobs (
    job_id            VARCHAR NOT NULL,
    status            VARCHAR NOT NULL,   -- planned | running | paused | completed | failed | cancelled
    message           VARCHAR,            -- why the job is in that status, in words a user can act on
    config            JSON NOT NULL,      -- how to rebuild embedder and sink on resume; never a secret
    source            VARCHAR NOT NULL,
    collection        VARCHAR NOT NULL,
    batch_size        INTEGER NOT NULL,
    total_records     BIGINT NOT NULL,
    skipped_records   BIGINT NOT NULL,
    batches_total     INTEGER NOT NULL,
    created_at        TIMESTAMP NOT NULL,
    started_at        TIMESTAMP,
    updated_at        TIMESTAMP NOT NULL,
    finished_at       TIMESTAMP,
    lease_token       VARCHAR,            -- set while a runner owns the job
    owner_pid         INTEGER,
    owner_host        VARCHAR,
    heartbeat_at      TIMESTAMP,
    cancel_requested  BOOLEAN NOT NULL DEFAULT false
);

-- The snapshot of the input taken at plan time. Resume reads records from here, never from the
-- source, so rows inserted, deleted or reordered in the source after planning change nothing.
CREATE TABLE manifest (
    job_id        VARCHAR NOT NULL,
    ordinal       BIGINT NOT NULL,        -- row number in the source, 0-based
    record_id     VARCHAR NOT NULL,
    content_hash  VARCHAR NOT NULL,       -- sha256 of the text to embed
    batch_no      INTEGER NOT NULL,
    token_estimate INTEGER NOT NULL,
    text          VARCHAR NOT NULL,
    payload       JSON NOT NULL
);

CREATE TABLE skipped (
    job_id     VARCHAR NOT NULL,
    ordinal    BIGINT,                    -- source row (line for text files), when known
    record_id  VARCHAR,
    stage      VARCHAR NOT NULL,          -- plan | embed
    reason     VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL
);

CREATE TABLE batches (
    job_id       VARCHAR NOT NULL,
    batch_no     INTEGER NOT NULL,
    status       VARCHAR NOT NULL,        -- pending | running | done | failed
    records      INTEGER NOT NULL,
    first_ordinal BIGINT NOT NULL,
    last_ordinal BIGINT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   VARCHAR,
    started_at   TIMESTAMP,
    finished_at  TIMESTAMP,
    duration_s   DOUBLE,
    embedded_texts INTEGER NOT NULL DEFAULT 0,   -- texts sent to the embedder (paid for)
    cache_hits   INTEGER NOT NULL DEFAULT 0,     -- texts whose vector came from the cache
    tokens       BIGINT NOT NULL DEFAULT 0,      -- tokens paid for, summed over attempts
    tokens_estimated BOOLEAN NOT NULL DEFAULT false,
    saved_tokens BIGINT NOT NULL DEFAULT 0,      -- tokens of cache hits: what we did not pay again
    cost_usd     DOUBLE NOT NULL DEFAULT 0
);

-- One row per attempt at a batch: the history behind batches.attempts and last_error.
CREATE TABLE attempts (
    job_id      VARCHAR NOT NULL,
    batch_no    INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    owner_pid   INTEGER NOT NULL,
    lease_token VARCHAR NOT NULL,
    started_at  TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    outcome     VARCHAR,                  -- done | failed | released
    error       VARCHAR
);

-- Every vector an embedder returned, written before the upsert that uses it: the reason a crash or a
-- second job never pays for the same embedding twice.
CREATE TABLE embeddings (
    cache_key    VARCHAR PRIMARY KEY,     -- model|dimensions|task_type|content_hash (one indexed column
                                          -- makes DuckDB look up IN lists by index, ~6x faster)
    model        VARCHAR NOT NULL,
    dimensions   INTEGER NOT NULL,
    task_type    VARCHAR NOT NULL,
    content_hash VARCHAR NOT NULL,
    tokens       INTEGER NOT NULL,
    vector       FLOAT[] NOT NULL,
    created_at   TIMESTAMP NOT NULL
);
"""

# v2: records the embedder refused are skipped inside their batch (stage 'embed'); a done batch's
# loaded records are `records - skipped_records`.
_V2 = """
ALTER TABLE batches ADD COLUMN skipped_records INTEGER DEFAULT 0;
"""

# v3: Gemini Batch Mode. Each remote batch job is recorded the moment it is submitted, so a restart goes
# on polling it instead of paying for the same texts again; `origin` marks vectors a job prefetched in
# Batch Mode, which its batches then use without counting them as savings.
_V3 = """
CREATE TABLE remote_jobs (
    job_id        VARCHAR NOT NULL,
    name          VARCHAR NOT NULL,       -- the Gemini batch job, e.g. batches/123
    state         VARCHAR NOT NULL,       -- submitted | ingested | failed
    content_hashes VARCHAR[] NOT NULL,
    texts         INTEGER NOT NULL,
    tokens        BIGINT NOT NULL DEFAULT 0,
    cost_usd      DOUBLE NOT NULL DEFAULT 0,
    submitted_at  TIMESTAMP NOT NULL,
    finished_at   TIMESTAMP,
    error         VARCHAR
);
ALTER TABLE embeddings ADD COLUMN origin VARCHAR;
"""

# v4: enrichment with generateContent. Answers are cached like vectors (never paid twice); batches
# carry the tokens and cost of their answers.
_V4 = """
CREATE TABLE generations (
    cache_key     VARCHAR PRIMARY KEY,    -- model|sha256(prompt)
    model         VARCHAR NOT NULL,
    answer        VARCHAR NOT NULL,
    input_tokens  INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd      DOUBLE NOT NULL,
    created_at    TIMESTAMP NOT NULL
);
ALTER TABLE batches ADD COLUMN enrich_tokens BIGINT DEFAULT 0;
ALTER TABLE batches ADD COLUMN enrich_cost_usd DOUBLE DEFAULT 0;
"""

# v5: what the ledger knows each collection holds, written in the transaction that marks a batch done.
# It lets a new job over a changed source skip unchanged records, delete records that left the source,
# and lets `qsync verify` compare the collection with what it should hold, and repair it from the cache.
_V5 = """
CREATE TABLE points (
    target       VARCHAR NOT NULL,        -- sink location | collection | vector name
    record_id    VARCHAR NOT NULL,
    point_id     VARCHAR NOT NULL,
    source_hash  VARCHAR NOT NULL,        -- sha256 of the record's text (the manifest's content_hash)
    vector_hash  VARCHAR NOT NULL,        -- sha256 of the text embedded (differs when enrichment embeds answers)
    embedder     VARCHAR NOT NULL,        -- model|dimensions|task_type[|enrichment signature]
    payload      JSON NOT NULL,
    job_id       VARCHAR NOT NULL,
    updated_at   TIMESTAMP NOT NULL
);
CREATE TABLE deletions (
    job_id     VARCHAR NOT NULL,
    record_id  VARCHAR NOT NULL,
    point_id   VARCHAR NOT NULL,
    done       BOOLEAN NOT NULL DEFAULT false
);
ALTER TABLE jobs ADD COLUMN unchanged_records BIGINT DEFAULT 0;
"""

# v6: the job's budget is a column (the whole spend across resumes; a resume may change or clear it), and
# its spec is what `config` holds (spec.job reads both shapes).
_V6 = """
ALTER TABLE jobs ADD COLUMN max_cost_usd DOUBLE;
UPDATE jobs SET max_cost_usd = TRY_CAST(json_extract_string(config, '$.max_cost_usd') AS DOUBLE);
"""


class MigrationContext(Protocol):
    """What a migration written in Python may use besides the connection."""

    @property
    def vectors(self) -> VectorFile: ...

    @property
    def path(self) -> Path: ...


def _v7(con: Any, context: MigrationContext) -> None:
    """v7: cached vectors move out of DuckDB into an append-only file beside it (ledger.vectorfile); the
    table keeps each one's byte offset. Persisting a batch of 100 768-d vectors drops from ~20 ms of CPU
    (with 2-5 s WAL checkpoints every ~100 batches) to ~3 ms (benchmarks/checkpoint_formats.py).
    Existing vectors are copied into the file here."""
    import numpy as np
    import pyarrow as pa

    from qsync.sql import arrow_table

    con.execute(
        """CREATE TABLE embeddings_v7 (
            cache_key    VARCHAR PRIMARY KEY,     -- model|dimensions|task_type|content_hash
            model        VARCHAR NOT NULL,
            dimensions   INTEGER NOT NULL,
            task_type    VARCHAR NOT NULL,
            content_hash VARCHAR NOT NULL,
            tokens       INTEGER NOT NULL,
            byte_offset  BIGINT NOT NULL,         -- where its `dimensions` float32 start in the .vectors file
            created_at   TIMESTAMP NOT NULL,
            origin       VARCHAR
        )"""
    )
    vectors = context.vectors
    last = ""
    while True:  # pages by key: a query's result must be drained before the next statement runs
        batch = arrow_table(
            con,
            "SELECT cache_key, model, dimensions, task_type, content_hash, tokens, vector, created_at, origin "
            "FROM embeddings WHERE cache_key > ? ORDER BY cache_key LIMIT 20000",
            [last],
        )
        if not batch.num_rows:
            break
        last = batch.column("cache_key")[-1].as_py()
        dims = batch.column("dimensions").to_numpy()
        flat = np.asarray(batch.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False), "<f4")
        offsets = np.empty(len(dims), dtype=np.int64)
        ends = np.cumsum(dims)
        for size in np.unique(dims):  # rows of one size are one matrix, appended at once
            rows = np.flatnonzero(dims == size)
            matrix = np.stack([flat[ends[r] - size : ends[r]] for r in rows])
            first = vectors.append(matrix)
            offsets[rows] = first + np.arange(len(rows), dtype=np.int64) * int(size) * 4
        table = batch.drop_columns(["vector"]).append_column("byte_offset", pa.array(offsets, pa.int64()))
        con.register("__qsync_v7", table)
        con.execute(
            "INSERT INTO embeddings_v7 SELECT cache_key, model, dimensions, task_type, content_hash, tokens, "
            "byte_offset, created_at, origin FROM __qsync_v7"
        )
        con.unregister("__qsync_v7")
    con.execute("DROP TABLE embeddings")
    con.execute("ALTER TABLE embeddings_v7 RENAME TO embeddings")


# v8: write-ahead for money. Every paid call (an embedding request, an enrichment answer, a Batch Mode
# submission) is recorded here, with an upper bound of what it can cost, before it is sent; when its answer
# is saved, the intent is settled in the same transaction (the real figures are then in batches,
# generations or remote_jobs). An intent a crash left open, or whose call got no answer, is *unconfirmed*
# spend: counted in every total, so what qsync reports is never less than what was billed.
_V8 = """
CREATE TABLE spend_intents (
    job_id         VARCHAR NOT NULL,
    intent_id      VARCHAR NOT NULL,
    batch_no       INTEGER,                -- NULL for a Batch Mode submission
    kind           VARCHAR NOT NULL,       -- embed | enrich | batch_mode
    texts          INTEGER NOT NULL,
    tokens         BIGINT NOT NULL,        -- at most this many (until counted exactly)
    cost_usd       DOUBLE NOT NULL,
    counted        BOOLEAN NOT NULL DEFAULT false,  -- tokens counted with countTokens (exact)
    state          VARCHAR NOT NULL,       -- open | settled | void | unconfirmed
    content_hashes VARCHAR[],              -- the texts sent (embed), to count them after a crash
    lease_token    VARCHAR NOT NULL,
    created_at     TIMESTAMP NOT NULL,
    closed_at      TIMESTAMP
);
"""

# v9: media records (gemini-embedding-2). `media_ref` is the path of the record's image or document, read
# again when its batch runs (its content_hash is sha256 of those bytes + caption: a file changed since
# planning is a skip, never a vector filed under another file's hash); DataFrame bytes are written once
# into a content-addressed folder beside the DuckDB file (input.media_plan) and referenced from there. Batches
# count their image and document tokens apart from the total.
_V9 = """
ALTER TABLE manifest ADD COLUMN media_ref VARCHAR;
ALTER TABLE batches ADD COLUMN media_tokens BIGINT DEFAULT 0;
"""

# v10: the media part of a record's token_estimate (its image or PDF pages, catalog.tokens), so an estimate
# prices it at the media price and the caption at the text price; and whether a batch's media_tokens were
# split by qsync's estimates (the SDK drops the API's per-modality counts) or reported by the API.
_V10 = """
ALTER TABLE manifest ADD COLUMN media_tokens INTEGER DEFAULT 0;
ALTER TABLE batches ADD COLUMN media_tokens_estimated BOOLEAN DEFAULT false;
"""

# v11: the estimate a job was planned with (money.recorded; the table was created outside the migrations
# before, hence IF NOT EXISTS), and how long the lease holder's heartbeat may lapse, stored with its lease so
# that status judges liveness by the runner's own figure.
_V11 = """
CREATE TABLE IF NOT EXISTS plan_estimates (
    job_id           VARCHAR PRIMARY KEY,
    recorded_at      TIMESTAMP NOT NULL,
    records          BIGINT NOT NULL,   -- records the job planned to embed (its manifest)
    texts_to_embed   BIGINT NOT NULL,   -- distinct texts not already in the embedding cache
    cached_texts     BIGINT NOT NULL,
    tokens           BIGINT NOT NULL,
    tokens_basis     VARCHAR NOT NULL,
    cost_usd         DOUBLE NOT NULL,
    minutes          DOUBLE,            -- at the run's rate limits; NULL when nothing paces the run
    price_usd_per_million_tokens DOUBLE NOT NULL
);
ALTER TABLE plan_estimates ADD COLUMN IF NOT EXISTS media_tokens BIGINT DEFAULT 0;  -- images, PDF pages
ALTER TABLE jobs ADD COLUMN stale_after_s DOUBLE;
"""


def _v12(con: Any, context: MigrationContext) -> None:
    """v12: a Qdrant folder inside the checkpoint file's folder is named relative to it (the two can then move
    together): the stored specs and `target`s of local sinks written as absolute paths are rewritten."""
    import json
    from pathlib import Path

    base = context.path.parent

    def relative(where: str) -> str | None:
        try:
            return str(Path(where).relative_to(base)) if Path(where).is_absolute() else None
        except ValueError:
            return None

    for (target,) in con.execute("SELECT DISTINCT target FROM points WHERE target LIKE 'local:/%'").fetchall():
        where, bar, rest = str(target).removeprefix("local:").partition("|")
        inside = relative(where)
        if inside is not None and bar:
            con.execute("UPDATE points SET target = ? WHERE target = ?", [f"local:{inside}|{rest}", target])
    for job_id, config in con.execute("SELECT job_id, config FROM jobs").fetchall():
        data = json.loads(config)
        sink = data.get("sink") or {}
        inside = relative(sink.get("path") or "")
        if inside is None:
            continue
        sink["path"] = inside
        where, bar, rest = str(data.get("target") or "").removeprefix("local:").partition("|")
        if bar and relative(where) == inside:
            data["target"] = f"local:{inside}|{rest}"
        con.execute("UPDATE jobs SET config = ? WHERE job_id = ?", [json.dumps(data), job_id])


# v13: texts being embedded right now, by which run (its lease): a run about to pay for a text another process's run
# is paying for waits for that text's vector instead (ledger.claims). Rows leave when their batch ends (done, failed
# or handed back), or the run's lease; a claim whose lease is gone counts for nothing.
_V13 = """
CREATE TABLE text_claims (
    cache_key   VARCHAR NOT NULL,
    job_id      VARCHAR NOT NULL,
    lease_token VARCHAR NOT NULL,
    claimed_at  TIMESTAMP NOT NULL
);
"""

# v14: the file's own identity, made once: a process that reconnects to a checkpoint file knows it is the file it
# had (a file deleted and made anew at the same path may even get the old one's inode number).
_V14 = """
CREATE TABLE qsync_file (file_id VARCHAR NOT NULL);
INSERT INTO qsync_file VALUES (gen_random_uuid()::VARCHAR);
"""

# v15: long texts are cut into chunks, a point each (spec.chunking): a manifest row is one chunk of its record
# (chunk 0 of 1 for a record that fits, as before), a batch holds whole records (`chunks`: its texts), the points
# table knows each point's chunk, and a deletion of a chunk a shortened record no longer has is `surplus` (not a
# record deleted). A job counts the chunks of its records.
# A point keeps the hash of its payload as planned (before an enrichment answer joins it), so a re-sync tells an
# unchanged point from one whose payload changed.
_V15 = """
ALTER TABLE manifest ADD COLUMN chunk_no INTEGER DEFAULT 0;
ALTER TABLE manifest ADD COLUMN chunk_count INTEGER DEFAULT 1;
ALTER TABLE batches ADD COLUMN chunks INTEGER;
UPDATE batches SET chunks = records;
ALTER TABLE points ADD COLUMN chunk_no INTEGER DEFAULT 0;
ALTER TABLE deletions ADD COLUMN surplus BOOLEAN DEFAULT false;
ALTER TABLE jobs ADD COLUMN total_chunks BIGINT;
ALTER TABLE manifest ADD COLUMN payload_hash VARCHAR;
ALTER TABLE points ADD COLUMN payload_hash VARCHAR;
"""

# v16: a job that read only the rows changed since the last completed one (--changed-since COLUMN, input.changed):
# the column, the value it read from (NULL: every row), and the largest value it read, where the next job starts.
_V16 = """
ALTER TABLE jobs ADD COLUMN since_column VARCHAR;
ALTER TABLE jobs ADD COLUMN since_value VARCHAR;
ALTER TABLE jobs ADD COLUMN high_water VARCHAR;
"""

Migration = str | Callable[[Any, MigrationContext], None]  # SQL, or fn(connection, context)
MIGRATIONS: list[Migration] = [_V1, _V2, _V3, _V4, _V5, _V6, _v7, _V8, _V9, _V10, _V11, _v12, _V13, _V14, _V15, _V16]
assert len(MIGRATIONS) == SCHEMA_VERSION
