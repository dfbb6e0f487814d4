"""The `qsync` command: the same jobs as the Python API, from a terminal.

Exit codes: 0 the job completed (or the command succeeded); 1 an error or a failed job; 2 bad usage;
3 the job paused or was cancelled (resumable unless cancelled); 4 refused: another runner owns the job.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import pandas as pd

from . import api, costs, verification
from .checkpoint import BATCH_STATES
from .columns import guess_columns, source_columns
from .embedders.gemini import api_key_from_env
from .errors import LeaseHeld, MissingColumn, QsyncError, StoreLocked
from .events import BatchFinished, Event
from .formatting import formatted, usd, value_text
from .progress import ProgressBar
from .runner import RunResult
from .spec import KEEP, RunSettings

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PAUSED, EXIT_REFUSED = 0, 1, 2, 3, 4


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="DuckDB checkpoint file (default: $QSYNC_DB, else ./qsync.duckdb)")


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source", required=True, help="a .parquet, .csv, .tsv, .jsonl or .json file, or 'sql:SELECT …' (DuckDB SQL)"
    )
    p.add_argument("--source-db", help="DuckDB database file that an sql: source runs against (read-only)")
    p.add_argument(
        "--id-column", help="column with each record's id (default: guessed from the names: id, record_id, doc_id, …)"
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--text-column", help="column with the text to embed (default: guessed from the names: text, content, body, …)"
    )
    group.add_argument("--text-template", help="build the text from several columns, e.g. '{title}: {body}'")


def _add_media_options(p: argparse.ArgumentParser) -> None:
    media = p.add_mutually_exclusive_group()
    where = "a path relative to the source file's folder, or absolute; the text column, if any, is its caption"
    media.add_argument(
        "--image-column", help=f"column of each record's PNG/JPEG image ({where}); needs --model gemini-embedding-2"
    )
    media.add_argument(
        "--document-column",
        help=f"column of each record's PDF, at most 6 pages ({where}); needs --model gemini-embedding-2",
    )


def _add_embedder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--embedder",
        help="'gemini' (default when GEMINI_API_KEY or GOOGLE_API_KEY is set), 'hash' (offline, the default "
        "otherwise) or 'package.module:factory' for your own",
    )
    p.add_argument("--dimensions", type=int, help="vector size (default 768)")
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


def _budget(text: str) -> float | None:
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


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concurrency", type=int, help="batches in flight at once (default 4)")
    p.add_argument("--texts-per-minute", type=float, help="pace to this many texts a minute (Gemini default 3000)")
    p.add_argument("--tokens-per-minute", type=float, help="pace to this many tokens a minute (Gemini default 1M)")
    p.add_argument(
        "--max-cost-usd", type=_budget, default=KEEP, metavar="USD|none",
        help="cap the job's whole spend (embeddings, enrichment, Batch Mode, across resumes); a new value given on "
        "resume replaces the stored one, 'none' clears it",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar (notices still print)")


def _settings(args: argparse.Namespace) -> RunSettings:
    return RunSettings.from_env(
        concurrency=args.concurrency, texts_per_minute=args.texts_per_minute, tokens_per_minute=args.tokens_per_minute
    )


def _columns(args: argparse.Namespace, *, text_optional: bool = False) -> tuple[str, str | None]:
    """The id and text columns: as given, else guessed from the source's column names by the guess the
    notebook's launcher makes (qsync.columns.guess_columns); a guess other than `id` or `text` is announced.
    `--text-column ''` is a given answer: no text (a media job's records without captions)."""
    text_given = args.text_column is not None or args.text_template is not None
    if args.id_column and text_given:
        return args.id_column, None if args.text_template else args.text_column
    available = source_columns(args.source, args.source_db)
    guessed_id, guessed_text = guess_columns(available, args.id_column)
    listed = ", ".join(available) or "none"
    if guessed_id is None:
        raise MissingColumn(f"no --id-column given, and no column is named like an id (columns are: {listed})")
    if not args.id_column:
        _announce_guess("id", guessed_id)
    if text_given:
        return guessed_id, None if args.text_template else args.text_column
    if guessed_text is None and not text_optional:
        raise MissingColumn(
            f"no --text-column given, and no column is named like a text (columns are: {listed}); "
            "pass --text-column or --text-template"
        )
    _announce_guess("text", guessed_text)
    return guessed_id, guessed_text


def _announce_guess(name: str, column: str | None) -> None:
    if column not in (None, name):  # `id` and `text` were the defaults before columns were guessed: no news
        print(f"qsync: {name} column: {column!r} (guessed from the source's columns; --{name}-column to choose)",
              file=sys.stderr)  # fmt: skip


class _RunTexts:
    """What this run embedded and found in the embedding cache, batch by batch."""

    def __init__(self) -> None:
        self.embedded = 0
        self.cached = 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, BatchFinished):
            self.embedded += event.embedded_texts
            self.cached += event.cache_hits


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qsync", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="create a job from a source and run it, or resume the job of that name")
    _add_source_options(run)
    _add_media_options(run)
    run.add_argument("--payload-columns", default="", help="comma-separated columns stored in each point's payload")
    run.add_argument("--collection", required=True, help="the Qdrant collection to write (created if missing)")
    _add_db(run)
    where = run.add_mutually_exclusive_group()
    where.add_argument("--qdrant-path", help="folder of Qdrant Edge shards, or :memory: (default: beside --db)")
    where.add_argument("--qdrant-url", help="a Qdrant server (default: $QDRANT_URL); key from $QDRANT_API_KEY")
    _add_embedder_options(run)
    run.add_argument(
        "--simulate-latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="make the hash embedder sleep per call, standing in for a remote API",
    )
    run.add_argument("--enrich-prompt", help="ask a Gemini model about each record first, e.g. 'Summarise: {text}'")
    run.add_argument("--enrich-model", default="gemini-2.5-flash-lite", help="the model that answers the prompt")
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
        "--batch-mode",
        action="store_true",
        help="embed with Gemini Batch Mode (half price; results within 24 h; polled, also after a restart)",
    )
    run.add_argument("--batch-size", type=int, default=100, help="records per batch and checkpoint (default 100)")
    run.add_argument("--job", help="job name (default: COLLECTION:SOURCE-STEM); an existing job is resumed")
    _add_run_options(run)

    resume = sub.add_parser("resume", help="continue a paused, failed or stale job")
    resume.add_argument("job", help="job name, as `qsync jobs` lists them")
    _add_db(resume)
    _add_run_options(resume)

    status = sub.add_parser("status", help="progress of a job (the newest when none is named)")
    status.add_argument("job", nargs="?", help="job name (default: the newest job)")
    _add_db(status)
    _add_json(status)

    jobs = sub.add_parser("jobs", help="list jobs")
    _add_db(jobs)
    _add_json(jobs)

    batches = sub.add_parser("batches", help="list a job's batches")
    batches.add_argument("job", help="job name, as `qsync jobs` lists them")
    batches.add_argument("--status", choices=BATCH_STATES)
    _add_db(batches)
    _add_json(batches)

    skipped = sub.add_parser("skipped", help="list records that were skipped, with reasons")
    skipped.add_argument("job", help="job name, as `qsync jobs` lists them")
    _add_db(skipped)
    _add_json(skipped)

    cost = sub.add_parser("cost", help="tokens and dollars a job spent, and what the cache and resumes saved")
    cost.add_argument("job", help="job name, as `qsync jobs` lists them")
    _add_db(cost)
    _add_json(cost)

    estimate = sub.add_parser("estimate", help="records, tokens, dollars and duration of a run, before running it")
    _add_source_options(estimate)
    _add_media_options(estimate)
    _add_embedder_options(estimate)
    estimate.add_argument(
        "--compare-models",
        action="store_true",
        help="estimate the same source with every priced embedding model (gemini-embedding-001 and -2), one row each",
    )
    estimate.add_argument("--texts-per-minute", type=float, help="the limit to pace to (Gemini default 3000)")
    estimate.add_argument("--tokens-per-minute", type=float, help="the limit to pace to (Gemini default 1M)")
    _add_db(estimate)
    _add_json(estimate)

    verify = sub.add_parser("verify", help="compare the collection with the ledger; --repair fixes it from the cache")
    verify.add_argument("job", help="job name; its collection is checked where the job wrote it")
    verify.add_argument("--repair", action="store_true", help="re-upsert missing or wrong points (no embedder call)")
    _add_db(verify)
    _add_json(verify)

    cancel = sub.add_parser("cancel", help="cancel a job (a running one stops at its next heartbeat)")
    cancel.add_argument("job", help="job name, as `qsync jobs` lists them")
    _add_db(cancel)

    search = sub.add_parser("search", help="the records of a job's collection nearest to a text")
    search.add_argument("job", help="job name: its collection is searched with its embedder")
    search.add_argument("text", help="what to look for, in words")
    search.add_argument("--limit", type=int, default=10, help="how many records (default 10)")
    _add_db(search)
    _add_json(search)

    demo = sub.add_parser("demo", help="offline demo: a backfill that is SIGKILLed part-way and resumed")
    demo.add_argument("--dir", default="qsync-demo", help="where the demo writes (default ./qsync-demo)")
    demo.add_argument("--source", help="default: the WordNet sample in data/")
    demo.add_argument("--kill-at", type=float, default=0.4, help="fraction done when the worker is killed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(_dispatch(args))
    except (LeaseHeld, StoreLocked) as exc:
        print(f"qsync: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except MissingColumn as exc:  # the command named (or left out) a column: usage, like a bad option
        print(f"qsync: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except QsyncError as exc:
        print(f"qsync: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("qsync: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `qsync jobs | head`: the reader has what it wanted
        with contextlib.suppress(OSError):  # Python flushes stdout at exit: let that write go nowhere
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command == "run":
        if args.embedder is None and api_key_from_env():
            print("qsync: embedding with Gemini (GEMINI_API_KEY or GOOGLE_API_KEY is set; --embedder hash stays "
                  "offline)", file=sys.stderr)  # fmt: skip
        options: dict[str, Any] = {}
        if args.price_per_million is not None:
            options["price_per_million_tokens"] = args.price_per_million
        if args.simulate_latency:
            options["latency_s"] = args.simulate_latency
        id_column, text_column = _columns(args, text_optional=bool(args.image_column or args.document_column))
        texts = _RunTexts()
        result = api.run(
            args.source,
            db=args.db,
            settings=_settings(args),
            listeners=[ProgressBar(disable=True if args.quiet else None), texts],
            max_cost_usd=args.max_cost_usd,
            collection=args.collection,
            job=args.job,
            id_column=id_column,
            text_column=text_column,
            text_template=args.text_template,
            payload_columns=[c.strip() for c in args.payload_columns.split(",") if c.strip()],
            image_column=args.image_column,
            document_column=args.document_column,
            embedder=args.embedder,
            model=args.model,
            dimensions=args.dimensions,
            task_type=args.task_type,
            embedder_options=options,
            batch_size=args.batch_size,
            qdrant_path=args.qdrant_path,
            qdrant_url=args.qdrant_url,
            source_db=args.source_db,
            batch_mode=args.batch_mode,
            distance=args.distance,
            on_disk=args.on_disk,
            payload_indexes=args.payload_index,
            vector_name=args.vector_name,
            extra_vectors=args.extra_vector,
            incremental=not args.full,
            delete_missing=args.delete_missing,
            enrich=None
            if not args.enrich_prompt
            else {
                "prompt": args.enrich_prompt,
                "model": args.enrich_model,
                "field": args.enrich_field,
                "embed": args.enrich_embed,
            },
        )
        return _report(result, args.db, texts, args.simulate_latency)
    if command == "resume":
        texts = _RunTexts()
        result = api.run_job(
            args.job,
            db=args.db,
            settings=_settings(args),
            max_cost_usd=args.max_cost_usd,
            listeners=[ProgressBar(disable=True if args.quiet else None), texts],
        )
        return _report(result, args.db, texts)
    if command == "status":
        info = api.status(args.job, db=args.db)
        if args.json:
            print(json.dumps(info, indent=2, default=str))
        else:
            _print_mapping(info)
        return EXIT_OK
    if command == "jobs":
        _print_frame(
            api.jobs(db=args.db),
            args.json,
            columns=[
                "job",
                "status",
                "processed_records",
                "total_records",
                "loaded_records",
                "skipped_records",
                "unchanged_records",
                "batches_failed",
                "cost_usd",
                "updated_at",
            ],
        )
        return EXIT_OK
    if command == "batches":
        _print_frame(api.batches(args.job, status=args.status, db=args.db), args.json)
        return EXIT_OK
    if command == "skipped":
        _print_frame(api.skipped(args.job, db=args.db), args.json)
        return EXIT_OK
    if command == "cost":
        frame = costs.cost(args.job, db=args.db)
        if args.json:
            print(json.dumps(_jsonable(frame.iloc[0].to_dict()), indent=2))
        else:
            _print_mapping(frame.iloc[0].to_dict())
        return EXIT_OK
    if command == "estimate":
        id_column, text_column = _columns(args)
        common: dict[str, Any] = {
            "id_column": id_column,
            "text_column": text_column,
            "text_template": args.text_template,
            "dimensions": args.dimensions or 768,
            "task_type": args.task_type,
            "texts_per_minute": args.texts_per_minute,
            "tokens_per_minute": args.tokens_per_minute,
            "db": args.db,
            "source_db": args.source_db,
            "image_column": args.image_column,
            "document_column": args.document_column,
        }
        if args.compare_models:
            _print_frame(costs.compare_models(args.source, **common), args.json)
            return EXIT_OK
        media = args.image_column or args.document_column  # only gemini-embedding-2 embeds media
        default_model = "gemini-embedding-2" if media else "gemini-embedding-001"
        estimate = costs.estimate(args.source, model=args.model or default_model, **common)
        if args.json:
            print(json.dumps(estimate, indent=2))
        else:
            _print_mapping(estimate)
        return EXIT_OK
    if command == "verify":
        report = verification.verify(args.job, db=args.db, repair=args.repair)
        data = report.to_dict()
        if args.json:
            print(json.dumps(data, indent=2))
        else:
            _print_mapping({k: v for k, v in data.items() if k != "samples"})
            for kind, ids in report.samples.items():
                if ids:
                    print(f"{kind}: {', '.join(ids)}{' …' if len(ids) == verification.SAMPLE else ''}")
        return EXIT_OK if report.ok else EXIT_ERROR
    if command == "cancel":
        print(f"{args.job}: {api.cancel(args.job, db=args.db)}")
        return EXIT_OK
    if command == "search":
        from .search import search

        _print_frame(search(args.job, args.text, limit=args.limit, db=args.db), args.json)
        return EXIT_OK
    if command == "demo":
        from .demo import run_demo

        return int(run_demo(args.dir, args.source, args.kill_at))
    raise AssertionError(command)


def _report(result: RunResult, db: str | None, texts: _RunTexts, simulated_latency_s: float = 0.0) -> int:
    info = api.status(result.job_id, db=db)
    print(
        f"{result.job_id}: {result.status} — {info['processed_records']:,}/{info['total_records']:,} records processed: "
        f"{info['loaded_records']:,} loaded, {info['skipped_records']:,} skipped, {info['unchanged_records']:,} "
        f"unchanged; {info['batches_failed']} batches failed, {info['tokens']:,} tokens, {usd(info['cost_usd'])}"
        + (f" (+ up to {usd(info['unconfirmed_cost_usd'])} unconfirmed)" if info["unconfirmed_cost_usd"] else "")
    )
    if texts.cached and not texts.embedded:  # a run that took no time: say why
        latency = (
            f" (--simulate-latency {simulated_latency_s:g} slows embedder calls only)" if simulated_latency_s else ""
        )
        print(f"  all {texts.cached:,} texts were in the embedding cache: 0 API calls{latency}")
    if info["skipped_records"]:
        print(f"  skipped records and reasons: qsync skipped {result.job_id!r}")
    if result.status == "completed":
        return EXIT_OK
    print(f"qsync: {result.status}: {result.message}", file=sys.stderr)
    if result.status == "paused" or info["batches_failed"]:
        hint = f"qsync batches {result.job_id!r} --status failed lists them; " if info["batches_failed"] else ""
        print(f"  {hint}`qsync resume {result.job_id}` continues", file=sys.stderr)
    return EXIT_PAUSED if result.status in ("paused", "cancelled") else EXIT_ERROR


def _jsonable(mapping: dict[Any, Any]) -> dict[str, Any]:
    return {str(k): v.item() if hasattr(v, "item") else v for k, v in mapping.items()}


def _print_mapping(mapping: dict[Any, Any]) -> None:
    width = max(len(str(k)) for k in mapping)
    for key, value in mapping.items():
        print(f"{key!s:<{width}}  {value_text(str(key), value)}")


def _print_frame(frame: pd.DataFrame, as_json: bool, columns: list[str] | None = None) -> None:
    if as_json:
        print(frame.to_json(orient="records", date_format="iso", indent=2))
        return
    if frame.empty:
        print("(none)")
        return
    shown = formatted(frame[columns] if columns else frame)  # dollars as dollars, `—` for missing values
    with pd.option_context(
        "display.max_rows", 500, "display.max_columns", 50, "display.width", 200, "display.max_colwidth", 80
    ):
        print(shown.to_string(index=False))


if __name__ == "__main__":
    sys.exit(main())
