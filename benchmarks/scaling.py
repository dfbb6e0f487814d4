"""Plan time and memory as the input grows: 10k, 100k and 1M records.

    python benchmarks/scaling.py [--sizes 10000 100000 1000000] [--batches 300]

Each size runs in a fresh process: it writes N records to Parquet, plans the job (snapshot into the
manifest), then runs `--batches` batches spread over the whole job with the hashing embedder at 8
dimensions into a sink that drops the points, so that what is measured is qsync's own memory, not
Qdrant's. Reported: plan time, resident memory after planning, and the peak growth while running.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd

import qsync
from qsync.app.jobs import create_job, make_runner
from qsync.embedders.protocol import Vectors


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class DroppingSink:
    """Acknowledges every write at once and keeps nothing: the benchmark measures the runner alone."""

    collection, dimensions = "c", 8

    def exists(self) -> bool:
        return True

    def ensure_collection(self) -> None:
        return None

    def write(self, record_ids: list[str], vectors: Vectors, payloads: list[dict[str, Any]]) -> int:
        return 0

    def durable(self, written: int) -> None:
        return None

    def upsert(self, record_ids: list[str], vectors: Vectors, payloads: list[dict[str, Any]]) -> None:
        return None

    def delete(self, point_ids: list[str]) -> None:
        return None

    def scan(self, page: int = 2000) -> Any:
        return iter(())

    def query(self, vector: Any, limit: int = 10) -> Any:
        return []

    def close(self) -> None:
        return None


def one(n: int, batches: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="qsync-scaling-"))
    src = work / "records.parquet"
    words = ["river", "stone", "cloud", "lamp", "orbit", "fern", "copper", "violin", "harbor", "maple"]
    pd.DataFrame({
        "id": [f"r{i}" for i in range(n)],
        "text": [f"record {i} {words[i % 10]} {words[(i // 10) % 10]} {words[(i // 100) % 10]}" for i in range(n)],
    }).to_parquet(src)  # fmt: skip
    baseline = rss_mb()
    started = time.perf_counter()
    plan = create_job(src, collection="c", job="s", db=work / "q.duckdb", qdrant_path=":memory:",
                            embedder="hash", dimensions=8)  # fmt: skip
    plan_s = time.perf_counter() - started
    after_plan = rss_mb()
    step = max(1, plan.batches // batches)
    chosen = set(range(0, plan.batches, step))
    runner = make_runner("s", db=work / "q.duckdb", concurrency=4, sink=DroppingSink(), only_batches=chosen)
    peak = [after_plan]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    runner.run()
    run_s = time.perf_counter() - started
    done.set()
    sampler.join()
    processed = int(qsync.status("s", db=work / "q.duckdb")["processed_records"])
    return {
        "records": n,
        "plan_s": round(plan_s, 2),
        "rss_before_plan_mb": round(baseline),
        "rss_after_plan_mb": round(after_plan),
        "batches_run": len(chosen),
        "records_run": processed,
        "run_records_per_s": round(processed / run_s),
        "rss_peak_while_running_mb": round(peak[0]),
        "runner_growth_mb": round(peak[0] - after_plan),
        "duckdb_file_mb": round((work / "q.duckdb").stat().st_size / 2**20),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.batches)))
        return
    results = []
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--batches", str(args.batches)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)


if __name__ == "__main__":
    main()
