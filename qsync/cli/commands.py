"""The `qsync` subcommands: one function each, taking the parsed arguments and returning the exit code. They
call the Python API (qsync.app) and print through `output`; none holds logic of its own beyond the options."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qsync.app import jobs, reading
from qsync.app.compare import COMPARE_SIZES, compare, comparison_view, meaning, sample_sentence, spent_sentence
from qsync.app.versus import versus
from qsync.cli.output import (
    EXIT_ERROR,
    EXIT_OK,
    RunTexts,
    jsonable,
    print_frame,
    print_mapping,
    report,
)
from qsync.cli.progress import ProgressBar
from qsync.embedders.gemini_client import api_key_from_env
from qsync.errors import ConfigError, MissingColumn
from qsync.formatting import skips_for_people
from qsync.input.columns import guess_columns, source_columns
from qsync.money.estimate import compare_models, estimate
from qsync.ops.verify import SAMPLE
from qsync.spec.defaults import DEFAULT_DIMENSIONS, resolve_db
from qsync.spec.settings import RunSettings


def _settings(args: argparse.Namespace) -> RunSettings:
    return RunSettings.from_env(
        concurrency=args.concurrency, texts_per_minute=args.texts_per_minute, tokens_per_minute=args.tokens_per_minute
    )


def _columns(args: argparse.Namespace, *, text_optional: bool = False) -> tuple[str, str | None]:
    """The id and text columns: as given, else guessed from the source's column names by the guess the
    notebook's launcher makes (qsync.input.columns.guess_columns); a guess other than `id` or `text` is announced.
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


def run(args: argparse.Namespace) -> int:
    if args.embedder is None and api_key_from_env():
        print("qsync: embedding with Gemini (GEMINI_API_KEY or GOOGLE_API_KEY is set; --embedder hash stays "
              "offline)", file=sys.stderr)  # fmt: skip
    options: dict[str, Any] = {}
    if args.price_per_million is not None:
        options["price_per_million_tokens"] = args.price_per_million
    if args.simulate_latency:
        options["latency_s"] = args.simulate_latency
    id_column, text_column = _columns(args, text_optional=bool(args.image_column or args.document_column))
    texts = RunTexts()
    enrich = None
    if args.enrich_prompt:
        enrich = {"prompt": args.enrich_prompt, "model": args.enrich_model, "field": args.enrich_field,
                  "embed": args.enrich_embed, "max_output_tokens": args.enrich_max_output_tokens}  # fmt: skip
    result = jobs.run(
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
        changed_since=args.changed_since,
        chunk_tokens=args.chunk_tokens,
        chunk_overlap=args.chunk_overlap,
        enrich=enrich,
    )
    return report(result, args.db, texts, args.simulate_latency)


def resume(args: argparse.Namespace) -> int:
    texts = RunTexts()
    result = jobs.run_job(
        args.job,
        db=args.db,
        settings=_settings(args),
        max_cost_usd=args.max_cost_usd,
        listeners=[ProgressBar(disable=True if args.quiet else None), texts],
        checked=True,  # cli.main read the whole file before this command (once: seconds at 2M records)
    )
    return report(result, args.db, texts)


def status(args: argparse.Namespace) -> int:
    info = reading.status(args.job, db=args.db)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        print_mapping(info)
    return EXIT_OK


JOB_COLUMNS = ["job", "status", "processed_records", "total_records", "loaded_records", "skipped_records",
               "unchanged_records", "batches_failed", "cost_usd", "updated_at"]  # fmt: skip


def jobs_(args: argparse.Namespace) -> int:
    print_frame(reading.jobs(db=args.db), args.json, columns=JOB_COLUMNS)
    return EXIT_OK


def batches(args: argparse.Namespace) -> int:
    print_frame(reading.batches(args.job, status=args.status, db=args.db), args.json)
    return EXIT_OK


def skipped(args: argparse.Namespace) -> int:
    found = reading.skipped(args.job, db=args.db)
    print_frame(found if args.json or found.empty else skips_for_people(found), args.json)
    return EXIT_OK


def cost(args: argparse.Namespace) -> int:
    row = reading.cost(args.job, db=args.db).iloc[0].to_dict()
    if args.json:
        print(json.dumps(jsonable(row), indent=2))
        return EXIT_OK
    print_mapping(row)
    shown = versus(args.job, db=args.db)  # the notebooks' cost view shows the same table
    if shown is not None:
        print("\nthe estimate recorded when the job was planned, against what it spent:")
        print(textwrap.indent(shown.table.to_string(index=False), "  "))
        print(textwrap.fill(shown.footnote, 110, initial_indent="  ", subsequent_indent="  "))
    return EXIT_OK


def estimate_(args: argparse.Namespace) -> int:
    id_column, text_column = _columns(args)
    common: dict[str, Any] = {
        "id_column": id_column,
        "text_column": text_column,
        "text_template": args.text_template,
        "dimensions": args.dimensions or DEFAULT_DIMENSIONS,
        "task_type": args.task_type,
        "texts_per_minute": args.texts_per_minute,
        "tokens_per_minute": args.tokens_per_minute,
        "db": args.db,
        "source_db": args.source_db,
        "image_column": args.image_column,
        "document_column": args.document_column,
        "chunk_tokens": args.chunk_tokens,
        "chunk_overlap": args.chunk_overlap,
    }
    if args.compare_models:
        print_frame(compare_models(args.source, **common), args.json)
        return EXIT_OK
    media = args.image_column or args.document_column  # only gemini-embedding-2 embeds media
    default_model = "gemini-embedding-2" if media else "gemini-embedding-001"
    enrich = None
    if args.enrich_prompt:
        enrich = {"prompt": args.enrich_prompt, "model": args.enrich_model,
                  "max_output_tokens": args.enrich_max_output_tokens}  # fmt: skip
    found = estimate(args.source, model=args.model or default_model, enrich=enrich, **common)
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        print_mapping(found)
    return EXIT_OK


def compare_(args: argparse.Namespace) -> int:
    id_column, text_column = _columns(args)
    queries = _queries(args.queries) if args.queries else []
    found = compare(
        args.source, db=args.db, sample=args.sample, models=args.models, sizes=args.sizes or COMPARE_SIZES,
        queries=queries, id_column=id_column, text_column=text_column, text_template=args.text_template,
        source_db=args.source_db, chunk_tokens=args.chunk_tokens, chunk_overlap=args.chunk_overlap,
        max_cost_usd=args.max_cost_usd, dry_run=args.dry_run,
        on_sample=lambda sample: print(sample_sentence(sample), file=sys.stderr if args.json else sys.stdout),
    )  # fmt: skip
    if args.dry_run:
        if args.json:
            print(json.dumps({"sample_records": found.sample_records, "queries": found.queries,
                              "sample_cost_usd": found.sample_cost_usd}, indent=2))  # fmt: skip
        return EXIT_OK
    if args.json:
        print_frame(found.table, True)
        return EXIT_OK
    print(spent_sentence(found))
    print_frame(comparison_view(found.table), False)
    print(textwrap.fill(meaning(found.table), width=100))
    return EXIT_OK


def _queries(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the queries file {path}: {exc}") from exc
    return [line.strip() for line in lines if line.strip()]


def verify(args: argparse.Namespace) -> int:
    found = reading.verify(args.job, db=args.db, repair=args.repair)
    data = found.to_dict()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_mapping({k: v for k, v in data.items() if k != "samples"})
        for kind, ids in found.samples.items():
            if ids:
                print(f"{kind}: {', '.join(ids)}{' …' if len(ids) == SAMPLE else ''}")
    return EXIT_OK if found.ok else EXIT_ERROR


def cancel(args: argparse.Namespace) -> int:
    print(f"{args.job}: {jobs.cancel(args.job, db=args.db)}")
    return EXIT_OK


def search(args: argparse.Namespace) -> int:
    print_frame(reading.search(args.job, args.text, limit=args.limit, chunks=args.chunks, db=args.db), args.json)
    return EXIT_OK


def recover(args: argparse.Namespace) -> int:
    from qsync.ledger.integrity import recover as recover_file

    found = recover_file(resolve_db(args.db))
    print(f"recovered {found.recovered}; the damaged file is kept as {found.damaged}")
    for table, rows in found.rows.items():
        lost = found.lost.get(table, 0)
        print(f"  {table}: {rows:,} rows" + (f", {lost:,} lost (in damaged blocks)" if lost else ""))
    if found.cancelled:
        print(f"jobs that were unfinished are now cancelled: {', '.join(found.cancelled)}")
        print("  run each again (`qsync run` with the same options): the vectors already paid for come from the cache")
    if found.lost.get("embeddings"):
        print(
            f"  {found.lost['embeddings']:,} cached vectors were lost with their rows: those texts are paid once more"
        )
    return EXIT_OK


def demo(args: argparse.Namespace) -> int:
    from qsync.cli.demo import run_demo

    return int(run_demo(args.dir, args.source, args.kill_at))


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": run, "resume": resume, "status": status, "jobs": jobs_, "batches": batches, "skipped": skipped,
    "cost": cost, "estimate": estimate_, "compare": compare_, "verify": verify, "cancel": cancel, "search": search, "recover": recover,
    "demo": demo,
}  # fmt: skip
