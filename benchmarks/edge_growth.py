"""A Qdrant Edge shard's upsert and flush times as it grows, in-process (as qsync's Edge host calls it): does the
store slow a long run down?

    python benchmarks/edge_growth.py --points 2000000 [--flush-every 10] [--out F]

Batches of 100 points of 128 dimensions (random, cosine) with a small payload, one flush every `--flush-every`
upserts (a run flushes once per group of completed batches); a line of medians per 200,000 points.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from qdrant_edge import Distance, EdgeConfig, EdgeShard, EdgeVectorParams, Point, UpdateOperation

BATCH, DIMENSIONS, REPORT_EVERY = 100, 128, 200_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=2_000_000)
    parser.add_argument("--flush-every", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="edge-growth-")
    config = EdgeConfig(vectors=EdgeVectorParams(DIMENSIONS, Distance.Cosine, on_disk=False), on_disk_payload=True)
    shard = EdgeShard.create(folder, config)
    rng = np.random.default_rng(0)
    upserts: list[float] = []
    flushes: list[float] = []
    lines = []
    try:
        for b in range(args.points // BATCH):
            rows = rng.standard_normal((BATCH, DIMENSIONS), dtype=np.float32).tolist()
            first = b * BATCH
            points = [Point(first + i, v, {"record_id": str(first + i), "text": f"record {first + i}"})
                      for i, v in enumerate(rows)]  # fmt: skip
            started = time.perf_counter()
            shard.update(UpdateOperation.upsert_points(points))
            upserts.append(time.perf_counter() - started)
            if b % args.flush_every == args.flush_every - 1:
                started = time.perf_counter()
                shard.flush()
                flushes.append(time.perf_counter() - started)
            if (first + BATCH) % REPORT_EVERY == 0:
                lines.append({"points": first + BATCH, "upsert_ms_median": round(1000 * statistics.median(upserts), 2),
                              "flush_ms_median": round(1000 * statistics.median(flushes), 2),
                              "flush_ms_max": round(1000 * max(flushes), 1)})  # fmt: skip
                print(json.dumps(lines[-1]), flush=True)
                upserts, flushes = [], []
    finally:
        shard.close()
        shutil.rmtree(folder)
    if args.out:
        args.out.write_text(json.dumps({"flush_every": args.flush_every, "lines": lines}, indent=2) + "\n")


if __name__ == "__main__":
    main()
