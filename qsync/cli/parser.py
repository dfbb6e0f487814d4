"""The `qsync` command's arguments: every subcommand and option, with its help."""

from __future__ import annotations

import argparse

from qsync.ledger.states import BATCH_STATES
from qsync.spec.defaults import DEFAULT_BATCH_SIZE, DEFAULT_CONCURRENCY, DEFAULT_DIMENSIONS, MAX_CONCURRENCY
from qsync.spec.enrich import DEFAULT_MAX_OUTPUT_TOKENS
from qsync.spec.job import KEEP

DESCRIPTION = "Resumable, checkpointed backfills of Gemini embeddings into Qdrant, from a terminal."


def add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="DuckDB checkpoint file (default: $QSYNC_DB, else ./qsync.duckdb)")


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source",
        required=True,
        help="a .parquet, .csv, .tsv, .jsonl or .json file, a folder of Parquet files (hive partitions too) or a glob "
        "of them ('data/*.parquet', quoted), 'sql:SELECT …' (DuckDB SQL, or PostgreSQL's with a PostgreSQL "
        "--source-db), or a table name with a PostgreSQL --source-db",
    )
    p.add_argument(
        "--source-db",
        help="where an sql: source runs: a DuckDB file (read-only), or PostgreSQL: postgresql://USER@HOST:PORT/DB or "
        "'host=… dbname=…' (the password from PGPASSWORD, ~/.pgpass, PGSERVICE or the URL; never stored)",
    )
    p.add_argument(
        "--id-column", help="column with each record's id (default: guessed from the names: id, record_id, doc_id, …)"
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--text-column", help="column with the text to embed (default: guessed from the names: text, content, body, …)"
    )
    group.add_argument("--text-template", help="build the text from several columns, e.g. '{title}: {body}'")


def add_media_options(p: argparse.ArgumentParser) -> None:
    media = p.add_mutually_exclusive_group()
    where = "a path relative to the source file's folder, or absolute; the text column, if any, is its caption"
    media.add_argument(
        "--image-column", help=f"column of each record's PNG/JPEG image ({where}); needs --model gemini-embedding-2"
    )
    media.add_argument(
        "--document-column",
        help=f"column of each record's PDF, at most 6 pages ({where}); needs --model gemini-embedding-2",
    )


def add_enrich_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--enrich-prompt", help="ask a Gemini model about each record first, e.g. 'Summarise: {text}'")
    p.add_argument("--enrich-model", default="gemini-2.5-flash-lite", help="the model that answers the prompt")
    p.add_argument(
        "--enrich-max-output-tokens", type=int, default=DEFAULT_MAX_OUTPUT_TOKENS, metavar="N",
        help=f"the longest answer, in tokens (default {DEFAULT_MAX_OUTPUT_TOKENS}); the budget reserves it per call",
    )  # fmt: skip


def add_embedder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--embedder",
        help="'gemini' (default when GEMINI_API_KEY or GOOGLE_API_KEY is set), 'hash' (offline, the default "
        "otherwise) or 'package.module:factory' for your own",
    )
    p.add_argument("--dimensions", type=int, help=f"vector size (default {DEFAULT_DIMENSIONS})")
    p.add_argument(
        "--model",
        help="Gemini model: gemini-embedding-001 (default; text up to 2,048 tokens) or gemini-embedding-2 "
        "(text up to 8,192 tokens, 128-3072 dimensions)",
    )
    p.add_argument(
        "--task-type",
        help="Gemini task type (default RETRIEVAL_DOCUMENT); gemini-embedding-2 takes none: its records are "
        "sent as 'title: none | text: ...' (document:v1), its search queries as 'task: search result | query: ...'",
    )
    p.add_argument("--price-per-million", type=float, help="USD per 1M input tokens (default from pricing.json)")


def budget_option(text: str) -> float | None:
    """--max-cost-usd: dollars, or 'none' to clear a stored cap."""
    if text.strip().lower() in ("none", "no", "off"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of dollars (or 'none')") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("a budget must be more than $0; use 'none' for no cap")
    return value


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concurrency", type=int, help=f"API calls in flight at once (default: from the limits, "
                   f"{DEFAULT_CONCURRENCY} at Gemini's tier 1, up to {MAX_CONCURRENCY} when they are lifted)")  # fmt: skip
    p.add_argument("--texts-per-minute", type=float, help="pace to this many texts a minute (Gemini default 3000)")
    p.add_argument("--tokens-per-minute", type=float, help="pace to this many tokens a minute (Gemini default 1M)")
    p.add_argument(
        "--max-cost-usd", type=budget_option, default=KEEP, metavar="USD|none",
        help="cap the job's whole spend (embeddings, enrichment, Batch Mode, across resumes); a new value given on "
        "resume replaces the stored one, 'none' clears it",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar (notices still print)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qsync", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="create a job from a source and run it, or resume the job of that name")
    add_source_options(run)
    add_media_options(run)
    run.add_argument("--payload-columns", default="", help="comma-separated columns stored in each point's payload")
    run.add_argument("--collection", required=True, help="the Qdrant collection to write (created if missing)")
    add_db(run)
    where = run.add_mutually_exclusive_group()
    where.add_argument("--qdrant-path", help="folder of Qdrant Edge shards, or :memory: (default: beside --db)")
    where.add_argument("--qdrant-url", help="a Qdrant server (default: $QDRANT_URL); key from $QDRANT_API_KEY")
    add_embedder_options(run)
    run.add_argument(
        "--simulate-latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="make the hash embedder sleep per call, standing in for a remote API",
    )
    add_enrich_options(run)
    run.add_argument("--enrich-field", default="enrichment", help="payload key for the answer")
    run.add_argument(
        "--enrich-embed", default="text", choices=["text", "answer", "both"], help="what to embed (default: text)"
    )
    run.add_argument("--distance", default="cosine", choices=["cosine", "dot", "euclid", "manhattan"],
                     help="distance of a new collection (default: cosine)")  # fmt: skip
    run.add_argument("--on-disk", action="store_true", help="create the collection with vectors on disk")
    run.add_argument(
        "--payload-index", action="append", default=[], metavar="COLUMN[:TYPE]",
        help="index a payload column (keyword, integer, float, bool, text, uuid, datetime); repeatable",
    )  # fmt: skip
    run.add_argument("--vector-name", help="write a named vector (e.g. one per model, so models can share points)")
    run.add_argument(
        "--extra-vector", action="append", default=[], metavar="NAME:DIMS",
        help="another named vector to create with a new collection, for a model that will share it; repeatable",
    )  # fmt: skip
    run.add_argument("--full", action="store_true", help="re-sync: write every record, even those unchanged")
    run.add_argument(
        "--delete-missing", action="store_true", help="re-sync: delete points of records no longer in the source"
    )
    run.add_argument(
        "--changed-since", metavar="COLUMN",
        help="re-sync: read only rows whose COLUMN (a timestamp or increasing id the table sets on each write) is >= "
        "the largest the last completed job read; with --delete-missing, deletions are found by reading ids alone",
    )  # fmt: skip
    add_chunk_options(run)
    run.add_argument(
        "--batch-mode",
        action="store_true",
        help="embed with Gemini Batch Mode (half price; results within 24 h; polled, also after a restart)",
    )
    run.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"records per batch and checkpoint (default {DEFAULT_BATCH_SIZE})",
    )
    run.add_argument("--job", help="job name (default: COLLECTION:SOURCE-STEM); an existing job is resumed")
    add_run_options(run)

    resume = sub.add_parser("resume", help="continue a paused, failed or stale job")
    resume.add_argument("job", help="job name, as `qsync jobs` lists them")
    add_db(resume)
    add_run_options(resume)

    status = sub.add_parser("status", help="progress of a job (the newest when none is named)")
    status.add_argument("job", nargs="?", help="job name (default: the newest job)")
    add_db(status)
    add_json(status)

    jobs = sub.add_parser("jobs", help="list jobs")
    add_db(jobs)
    add_json(jobs)

    batches = sub.add_parser("batches", help="list a job's batches")
    batches.add_argument("job", help="job name, as `qsync jobs` lists them")
    batches.add_argument("--status", choices=BATCH_STATES)
    add_db(batches)
    add_json(batches)

    skipped = sub.add_parser("skipped", help="list records that were skipped, with reasons")
    skipped.add_argument("job", help="job name, as `qsync jobs` lists them")
    add_db(skipped)
    add_json(skipped)

    cost = sub.add_parser("cost", help="tokens and dollars a job spent, and what the cache and resumes saved")
    cost.add_argument("job", help="job name, as `qsync jobs` lists them")
    add_db(cost)
    add_json(cost)

    estimate = sub.add_parser("estimate", help="records, tokens, dollars and duration of a run, before running it")
    add_source_options(estimate)
    add_media_options(estimate)
    add_embedder_options(estimate)
    estimate.add_argument(
        "--compare-models",
        action="store_true",
        help="estimate the same source with every priced embedding model (gemini-embedding-001 and -2), one row each",
    )
    add_enrich_options(estimate)
    add_chunk_options(estimate)
    estimate.add_argument("--texts-per-minute", type=float, help="the limit to pace to (Gemini default 3000)")
    estimate.add_argument("--tokens-per-minute", type=float, help="the limit to pace to (Gemini default 1M)")
    add_db(estimate)
    add_json(estimate)

    compare = sub.add_parser(
        "compare",
        help="embed a sample at each model's full size and measure what each smaller size keeps of its neighbours, "
        "beside the whole table's cost, time and storage",
    )
    add_source_options(compare)
    compare.add_argument("--sample", type=int, default=300, metavar="N", help="records to embed (default 300)")
    compare.add_argument("--models", nargs="+", metavar="MODEL",
                         help="default: every priced embedding model (gemini-embedding-001 and -2)")  # fmt: skip
    compare.add_argument("--sizes", nargs="+", type=int, metavar="N",
                         help="vector sizes to measure (default 128 256 512 768 1536 3072)")  # fmt: skip
    compare.add_argument("--queries", metavar="FILE",
                         help="a text file of search queries, one a line: their neighbours are measured too")  # fmt: skip
    compare.add_argument("--max-cost-usd", type=float, metavar="USD",
                         help="stop embedding a model's sample at this spend (run again to go on)")  # fmt: skip
    compare.add_argument("--dry-run", action="store_true", help="say what the sample costs; embed nothing")
    add_chunk_options(compare)
    add_db(compare)
    add_json(compare)

    verify = sub.add_parser("verify", help="compare the collection with the ledger; --repair fixes it from the cache")
    verify.add_argument("job", help="job name; its collection is checked where the job wrote it")
    verify.add_argument("--repair", action="store_true", help="re-upsert missing or wrong points (no embedder call)")
    add_db(verify)
    add_json(verify)

    cancel = sub.add_parser("cancel", help="cancel a job (a running one stops at its next heartbeat)")
    cancel.add_argument("job", help="job name, as `qsync jobs` lists them")
    add_db(cancel)

    search = sub.add_parser("search", help="the records of a job's collection nearest to a text")
    search.add_argument("job", help="job name: its collection is searched with its embedder")
    search.add_argument("text", help="what to look for, in words")
    search.add_argument("--limit", type=int, default=10, help="how many records (default 10)")
    search.add_argument("--chunks", action="store_true", help="a row per chunk of long records, not per record")
    add_db(search)
    add_json(search)

    recover = sub.add_parser(
        "recover", help="make a new checkpoint file from a damaged one (what can be read of it; the cache is kept)"
    )
    add_db(recover)

    demo = sub.add_parser("demo", help="offline demo: a backfill that is SIGKILLed part-way and resumed")
    demo.add_argument("--dir", default="qsync-demo", help="where the demo writes (default ./qsync-demo)")
    demo.add_argument("--source", help="default: the WordNet sample in data/")
    demo.add_argument("--kill-at", type=float, default=0.4, help="fraction done when the worker is killed")
    return parser


def add_chunk_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--chunk-tokens", type=int, default=None, metavar="N",
        help="cut texts longer than N tokens into chunks, a point each (default: the model's limit, so no text is "
        "skipped for its length); 0: skip texts over the limit instead",
    )  # fmt: skip
    parser.add_argument("--chunk-overlap", type=int, default=0, metavar="N",
                        help="tokens neighbouring chunks share (default 0)")  # fmt: skip
