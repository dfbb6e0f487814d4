"""What qsync's checkpoint costs alone: its writes for N batches, one thread, no API, no sink.

    python benchmarks/ledger_cost.py [--batches 100] [--dimensions 768]

Per batch of 100 records: claim, persist 100 dense random vectors (like Gemini's), mark done — the
three ledger writes a worker makes — into a fresh qsync store. Reported: wall and CPU time per batch,
and the share of each COMMIT (where DuckDB writes its WAL and, now and then, checkpoints).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qsync.app.jobs import create_job
from qsync.clock import SYSTEM_CLOCK
from qsync.embedders.hashing import HashingEmbedder
from qsync.ledger.batches import Completion
from qsync.ledger.lease import take_lease
from qsync.ledger.ledger import Ledger
from qsync.ledger.run import LeasedJob


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--dimensions", type=int, default=768)
    args = parser.parse_args()
    db = Path(tempfile.mkdtemp(prefix="qsync-ledger-")) / "q.duckdb"
    n = args.batches * 100
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "text": [f"record number {i}" for i in range(n)]})
    create_job(frame, collection="c", job="j", db=db, dimensions=args.dimensions, qdrant_path=":memory:")
    store = Ledger(db)
    lease, _ = take_lease(store, "j", SYSTEM_CLOCK, 60, os.getpid())
    embedder = HashingEmbedder(args.dimensions)  # only its identity is used: the vectors are random
    rng = np.random.default_rng(0)
    all_vectors = [rng.standard_normal((100, args.dimensions)).astype(np.float32) for _ in range(args.batches)]

    commits: dict[str, float] = defaultdict(float)
    step = [""]
    opened = store.transaction

    @contextlib.contextmanager
    def timed_commit(*, keeps_open: bool = True) -> Iterator[Any]:
        with opened(keeps_open=keeps_open) as con:
            yield con
            started = time.perf_counter()  # the COMMIT runs as the `with` above exits
        commits[step[0]] += time.perf_counter() - started

    store.transaction = timed_commit  # type: ignore[method-assign]
    ledger = LeasedJob(store, lease, SYSTEM_CLOCK, target="bench", embedder_signature="bench")
    steps_cpu: dict[str, float] = defaultdict(float)
    batch_wall: list[float] = []
    cpu, wall = os.times(), time.perf_counter()
    for batch_no, vectors in enumerate(all_vectors):
        started = time.perf_counter()
        c0 = time.process_time()
        step[0] = "claim"
        work = ledger.claim(batch_no)
        c1 = time.process_time()
        step[0] = "persist vectors"
        ledger.record_embeddings(work, embedder, work.hashes, vectors, [10] * 100, tokens_estimated=False, cost=0.0)
        c2 = time.process_time()
        step[0] = "mark done"
        ledger.complete([Completion(work, cache_hits=0, saved_tokens=0, duration_s=0.0)])
        c3 = time.process_time()
        batch_wall.append(time.perf_counter() - started)
        for name, ms in (("claim", c1 - c0), ("persist vectors", c2 - c1), ("mark done", c3 - c2)):
            steps_cpu[name] += ms
    cpu_end, wall_end = os.times(), time.perf_counter()
    per_batch = 1000 / args.batches
    walls = sorted(batch_wall)
    report = {
        "batches": args.batches,
        "dimensions": args.dimensions,
        "wall_ms_per_batch": round((wall_end - wall) * per_batch, 1),
        "cpu_ms_per_batch": round((cpu_end.user + cpu_end.system - cpu.user - cpu.system) * per_batch, 1),
        "cpu_ms_per_batch_by_step": {k: round(v * per_batch, 1) for k, v in steps_cpu.items()},
        "commit_ms_per_batch": {k: round(v * per_batch, 1) for k, v in commits.items()},
        "batch_wall_ms_median": round(1000 * walls[len(walls) // 2], 1),
        "batch_wall_ms_p99": round(1000 * walls[int(len(walls) * 0.99)], 1),
        "batch_wall_ms_max": round(1000 * walls[-1], 1),
    }
    store.close()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
