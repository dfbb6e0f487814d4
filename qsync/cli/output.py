"""How the `qsync` command prints: tables and listings formatted like the notebooks' (dollars as dollars, `—` for
a missing value), and the summary of a run with what to run next."""

from __future__ import annotations

import sys
from typing import Any

import pandas as pd

from qsync.app import reading
from qsync.engine.events import BatchFinished, Event
from qsync.engine.runner import RunResult
from qsync.formatting import batch_mode_text, chunked, formatted, rows_read_text, unconfirmed, usd, value_text

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PAUSED, EXIT_REFUSED = 0, 1, 2, 3, 4


class RunTexts:
    """What this run embedded and found in the embedding cache, batch by batch."""

    wants_progress = False  # it counts BatchFinished events only

    def __init__(self) -> None:
        self.embedded = 0
        self.cached = 0
        self.batch_mode = 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, BatchFinished):
            self.embedded += event.embedded_texts
            self.cached += event.cache_hits
            self.batch_mode += event.batch_mode_texts


def report(result: RunResult, db: str | None, texts: RunTexts, simulated_latency_s: float = 0.0) -> int:
    info = reading.status(result.job_id, db=db)
    print(
        f"{result.job_id}: {result.status} — {info['processed_records']:,}/{info['total_records']:,} records processed: "
        f"{info['loaded_records']:,} loaded, {info['skipped_records']:,} skipped, {info['unchanged_records']:,} "
        f"unchanged{chunked(info['total_records'] - info['skipped_records'], info['total_chunks'])}; "
        f"{info['batches_failed']} batches failed, {info['tokens']:,} tokens, {usd(info['cost_usd'])}"
        + unconfirmed(info["unconfirmed_cost_usd"])
    )
    if info.get("since_column"):
        print(
            "  "
            + rows_read_text(
                info["since_column"],
                info["since_value"],
                # Only a completed job's mark is where the next re-sync starts (docs/CLI.md).
                info["high_water"] if result.status == "completed" else None,
                info["total_records"],
            )
        )
    if texts.batch_mode:
        print("  " + batch_mode_text(info["batch_mode_texts"], info["batch_mode_tokens"], info["batch_mode_cost_usd"]))
    if texts.cached and not texts.embedded and not texts.batch_mode:  # a run that took no time: say why
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


def jsonable(mapping: dict[Any, Any]) -> dict[str, Any]:
    return {str(k): v.item() if hasattr(v, "item") else v for k, v in mapping.items()}


def print_mapping(mapping: dict[Any, Any]) -> None:
    width = max(len(str(k)) for k in mapping)
    for key, value in mapping.items():
        print(f"{key!s:<{width}}  {value_text(str(key), value)}")


_MAX_COLWIDTH = 80


def print_frame(frame: pd.DataFrame, as_json: bool, columns: list[str] | None = None) -> None:
    if as_json:
        print(frame.to_json(orient="records", date_format="iso", indent=2))
        return
    if frame.empty:
        print("(none)")
        return
    shown = formatted(frame[columns] if columns else frame)  # dollars as dollars, `—` for missing values
    with pd.option_context("display.max_rows", 500, "display.max_columns", 50, "display.width", 200):
        # A terminal line a cell: a long text (a search hit, an error) cut with `...`; --json gives it whole.
        print(shown.to_string(index=False, max_colwidth=_MAX_COLWIDTH))
