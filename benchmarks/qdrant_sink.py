"""Qdrant sink figures: upsert throughput (in memory and on disk) and how long `qsync verify` takes.

    python benchmarks/qdrant_sink.py upsert [--points 20000] [--dimensions 768]
    python benchmarks/qdrant_sink.py verify [--points 200000] [--dimensions 64]

upsert: qsync's QdrantSink.upsert (batches of 100, wait=True) into embedded Qdrant, `:memory:` and a
    local folder, timed alone (no embedding, no ledger).
verify: a job of N records (hashing embedder, 64-d vectors) is loaded into embedded Qdrant (in memory by
    default: qdrant-client's local folder mode slows down as it grows, ~80 points/s past 20,000), then
    `qsync verify` is timed on the complete collection, and again with `--repair` after 1% of the points
    were deleted behind the ledger's back.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from qdrant_client import models

import qsync
from qsync.sink import QdrantSink, SinkSpec, _local_client


def upsert(points: int, dimensions: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((points, dimensions)).astype(np.float32)
    result: dict[str, Any] = {"points": points, "dimensions": dimensions, "batch": 100}
    for label, path in (("memory", ":memory:"), ("disk", str(Path(tempfile.mkdtemp()) / "qdrant"))):
        sink = QdrantSink(SinkSpec(path=path), "bench", dimensions)
        sink.ensure_collection()
        started = time.perf_counter()
        for start in range(0, points, 100):
            ids = [f"r{i}" for i in range(start, min(points, start + 100))]
            sink.upsert(ids, vectors[start : start + len(ids)], [{"id": i} for i in ids])
        result[f"{label}_points_per_s"] = round(points / (time.perf_counter() - started))
    return result


def verify(points: int, dimensions: int, qdrant: str) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="qsync-verify-"))
    if qdrant != ":memory:":
        qdrant = str(work / "qdrant")
    frame = pd.DataFrame(
        {"id": [f"r{i}" for i in range(points)], "text": [f"record number {i}" for i in range(points)]}
    )
    started = time.perf_counter()
    result = qsync.run(frame, collection="c", job="v", db=work / "q.duckdb", qdrant_path=qdrant,
                       embedder="hash", dimensions=dimensions, concurrency=4)  # fmt: skip
    load_s = time.perf_counter() - started
    assert result.ok, result.message
    started = time.perf_counter()
    clean = qsync.verify("v", db=work / "q.duckdb")
    verify_s = time.perf_counter() - started
    client = _local_client(qdrant)
    gone = [qsync.point_id(f"r{i}") for i in range(0, points, 100)]
    client.delete("c", points_selector=models.PointIdsList(points=gone), wait=True)
    started = time.perf_counter()
    repaired = qsync.verify("v", db=work / "q.duckdb", repair=True)
    repair_s = time.perf_counter() - started
    return {
        "points": points,
        "dimensions": dimensions,
        "qdrant": qdrant,
        "load_s": round(load_s, 1),
        "verify_s": round(verify_s, 2),
        "verify_ok": clean.ok,
        "deleted_then_repaired": repaired.repaired,
        "verify_with_repair_s": round(repair_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("which", choices=["upsert", "verify"])
    parser.add_argument("--points", type=int)
    parser.add_argument("--dimensions", type=int)
    parser.add_argument("--qdrant", default=":memory:", help="':memory:' (default) or 'disk' (a local folder)")
    args = parser.parse_args()
    if args.which == "upsert":
        report = upsert(args.points or 20_000, args.dimensions or 768)
    else:
        report = verify(args.points or 200_000, args.dimensions or 64, args.qdrant)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
