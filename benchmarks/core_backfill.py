"""The original failure, measured: a 202,910-record backfill killed at 51,000 records and resumed.

    python benchmarks/core_backfill.py [--records 202910] [--kill-at 51000] [--dimensions 768]

1. writes N synthetic records (WordNet glosses, each made unique) to Parquet;
2. runs `qsync run` in a separate process (hashing embedder, embedded Qdrant on disk) and SIGKILLs it
   once 51,000 records are checkpointed;
3. resumes in this process with the ledger instrumented, and reports:
   - records/s before the kill and during the resume;
   - how long the resume took to find its place (lease, recovery, pending batches) and to finish its
     first batch (which includes opening the local Qdrant folder);
   - the checkpoint cost per batch: time in DuckDB transactions (claim, persist vectors, mark done);
   - records and texts the resume did not redo.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

import qsync
from qsync.engine import runner as runner_module
from qsync.engine.events import BatchFinished, Event, JobStarted
from qsync.ledger import lease as lease_module
from qsync.ledger.run import LeasedJob

REPO = Path(__file__).resolve().parents[1]
PRICE = 0.15  # USD per 1M input tokens, gemini-embedding-001 (qsync/catalog/pricing.json)


def make_source(path: Path, n: int) -> None:
    base = pd.read_json(REPO / "data" / "wordnet_sample.jsonl", lines=True)
    texts = base["text"].tolist()
    frame = pd.DataFrame(
        {
            "id": [f"rec-{i}" for i in range(n)],
            "text": [f"{texts[i % len(texts)]} (variant {i // len(texts)})" for i in range(n)],
            "pos": [base["pos"].iat[i % len(base)] for i in range(n)],
        }
    )
    frame.to_parquet(path)


def timed(store: dict[str, list[float]], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            store[name].append(time.perf_counter() - t0)

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=202_910)
    parser.add_argument("--kill-at", type=int, default=51_000)
    parser.add_argument("--dimensions", type=int, default=768)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--dir", help="work folder (default: a temporary one)")
    parser.add_argument("--qdrant-path", help="Qdrant location (default: a folder beside the DuckDB file; :memory:)")
    parser.add_argument(
        "--poll-s", type=float, default=1.0,
        help="how often this process reads the job's status to know when to kill (the notebook monitor's "
        "interval; each read from another process makes the runner close and reopen its DuckDB file)",
    )  # fmt: skip
    args = parser.parse_args()
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="qsync-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    src, db = workdir / "records.parquet", workdir / "qsync.duckdb"
    t0 = time.perf_counter()
    make_source(src, args.records)
    print(f"source: {args.records:,} records in {time.perf_counter() - t0:.1f}s -> {src}")

    command = [
        sys.executable, "-m", "qsync", "run", "--source", str(src), "--collection", "bench", "--db", str(db),
        "--job", "bench", "--dimensions", str(args.dimensions), "--concurrency", str(args.concurrency),
        "--payload-columns", "pos", "--quiet", "--embedder", "hash",
        "--price-per-million", str(PRICE),  # priced as gemini-embedding-001, so the ledger counts dollars
        *(["--qdrant-path", args.qdrant_path] if args.qdrant_path else []),
    ]  # fmt: skip
    started = time.perf_counter()
    worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    planned_at = None
    done = 0
    while worker.poll() is None:
        try:
            info = qsync.status("bench", db=db)
        except qsync.QsyncError:
            time.sleep(0.2)
            continue
        planned_at = planned_at or time.perf_counter()
        done = info["processed_records"]
        if done >= args.kill_at:
            os.kill(worker.pid, signal.SIGKILL)
            break
        time.sleep(args.poll_s)
    worker.wait()
    killed_at = time.perf_counter()
    before = qsync.status("bench", db=db)
    plan_s = (planned_at or killed_at) - started
    first_rate = before["processed_records"] / (killed_at - (planned_at or started))
    print(
        f"first run: planned in ~{plan_s:.1f}s (process start + plan), killed at {before['processed_records']:,} "
        f"records, {first_rate:,.0f} records/s; status now {before['status']!r}"
    )

    timings: dict[str, list[float]] = defaultdict(list)
    for name in ("claim", "record_embeddings", "complete", "runnable_batches"):
        setattr(LeasedJob, name, timed(timings, name, getattr(LeasedJob, name)))
    runner_module.take_lease = timed(timings, "acquire", lease_module.take_lease)  # type: ignore[attr-defined]
    from qsync.sink.client import ClientSink
    from qsync.sink.edge import EdgeSink

    sink_class = ClientSink if args.qdrant_path == ":memory:" else EdgeSink
    sink_class.ensure_collection = timed(timings, "open_qdrant", sink_class.ensure_collection)  # type: ignore[method-assign]
    marks: dict[str, float] = {}

    def listener(event: Event) -> None:
        if isinstance(event, JobStarted):
            marks["found_place"] = time.perf_counter()
        if isinstance(event, BatchFinished) and "first_batch" not in marks:
            marks["first_batch"] = time.perf_counter()

    t_resume = time.perf_counter()
    result = qsync.resume("bench", db=db, concurrency=args.concurrency, listeners=[listener])
    resume_s = time.perf_counter() - t_resume
    after = qsync.status("bench", db=db)
    resumed_records = after["processed_records"] - before["processed_records"]
    batches = len(timings["complete"])
    find_place = {k: round(sum(timings.pop(k)), 3) for k in ("acquire", "runnable_batches", "open_qdrant")}
    per_batch = {k: 1000 * sum(v) / max(1, len(v)) for k, v in timings.items()}
    checkpoint_ms = sum(per_batch.values())
    report = {
        "records": args.records,
        "dimensions": args.dimensions,
        "concurrency": args.concurrency,
        "status_read_every_s": args.poll_s,
        "qdrant": args.qdrant_path or "Qdrant Edge shard",
        "status": result.status,
        "first_run_records_per_s": round(first_rate),
        "killed_at_records": before["processed_records"],
        "resume_ledger_find_place_s": round(find_place["acquire"] + find_place["runnable_batches"], 3),
        "resume_ledger_steps_s": {k: v for k, v in find_place.items() if k != "open_qdrant"},
        "resume_open_local_qdrant_s": find_place["open_qdrant"],
        "resume_until_started_s": round(marks["found_place"] - t_resume, 3),
        "resume_first_batch_done_s": round(marks["first_batch"] - t_resume, 3),
        "resume_records": resumed_records,
        "resume_records_per_s": round(resumed_records / resume_s),
        "checkpoint_ms_per_batch": round(checkpoint_ms, 2),
        "checkpoint_ms_by_step": {k: round(v, 2) for k, v in per_batch.items()},
        "checkpoint_share_of_wall_time": round(checkpoint_ms * batches / 1000 / resume_s / args.concurrency, 3),
        "records_not_redone": before["processed_records"],
        "usd_spent_before_kill": round(before["cost_usd"], 4),
        "usd_spent_by_resume": round(after["cost_usd"] - before["cost_usd"], 4),
        "usd_total": round(after["cost_usd"], 4),
        "texts_embedded_total": after["embedded_texts"],
        "texts_embedded_twice": after["embedded_texts"] - (after["total_records"] - after["skipped_records"]),
        "cache_hits_on_resume": after["cache_hits"],
        "duckdb_file_mb": round(db.stat().st_size / 2**20),
        "vector_file_mb": round(db.with_suffix(".vectors").stat().st_size / 2**20),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
