"""Qdrant Edge: upserting points a shard already holds against new points, 100 at a time (issue 24: a re-sync's
changed records ran slower than its new ones; Edge replacing points was the suspect).

    python benchmarks/edge_upsert.py --points 300000 --rounds 60 [--out benchmarks/results/speed/edge_upsert.json]

In this process, qdrant-edge-py alone (no qsync): a shard of `--points` points of 128 floats with a small payload,
as `two_million.py` makes them; then `--rounds` rounds, each upserting 100 points with ids the shard holds (random,
new vectors and payloads) and then 100 points with new ids, alternating. Reported: the median and the 10th / 90th
percentiles of one upsert call of each kind, and the time to fill the shard.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_edge import Distance, EdgeConfig, EdgeShard, EdgeVectorParams, Point, UpdateOperation

DIMENSIONS = 128
BATCH = 100


def _point_id(n: int) -> str:
    return str(uuid.UUID(int=n + 1))


def measure(points: int, rounds: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    shard = EdgeShard.create(
        tempfile.mkdtemp(prefix="edge-upsert-"),
        EdgeConfig(vectors=EdgeVectorParams(DIMENSIONS, Distance.Cosine, on_disk=False)),
    )

    def upsert(ids: list[int]) -> float:
        rows = rng.random((len(ids), DIMENSIONS), dtype=np.float32).tolist()
        batch = [Point(_point_id(n), rows[i], {"record_id": n, "text": f"record {n} of the benchmark"})
                 for i, n in enumerate(ids)]  # fmt: skip
        started = time.perf_counter()
        shard.update(UpdateOperation.upsert_points(batch))
        return time.perf_counter() - started

    started = time.perf_counter()
    for first in range(0, points, 1000):
        upsert(list(range(first, min(points, first + 1000))))
    shard.flush()
    filled_s = time.perf_counter() - started
    held, new = [], []
    fresh = points
    for _ in range(rounds):
        held.append(upsert([int(n) for n in rng.choice(points, BATCH, replace=False)]))
        new.append(upsert(list(range(fresh, fresh + BATCH))))
        fresh += BATCH
    shard.close()

    def spread(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {"median_ms": round(statistics.median(ordered) * 1e3, 2),
                "p10_ms": round(ordered[len(ordered) // 10] * 1e3, 2),
                "p90_ms": round(ordered[len(ordered) * 9 // 10] * 1e3, 2)}  # fmt: skip

    return {"points": points, "rounds": rounds, "batch": BATCH, "dimensions": DIMENSIONS,
            "fill_s": round(filled_s, 1), "held_ids": spread(held), "new_ids": spread(new)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = measure(args.points, args.rounds)
    print(json.dumps(result))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
