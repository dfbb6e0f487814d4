"""Qdrant sink figures: upsert throughput, reopening a large shard, and how long `qsync verify` takes.

    python benchmarks/qdrant_sink.py upsert [--points 20000] [--dimensions 768] [--runs 3]
    python benchmarks/qdrant_sink.py reopen [--points 200000] [--dimensions 768]
    python benchmarks/qdrant_sink.py verify [--points 200000] [--dimensions 64] [--qdrant disk]

upsert: qsync's QdrantSink.upsert (batches of 100, one thread) into qdrant-client's `:memory:` and into a
    Qdrant Edge shard on disk (each upsert flushed before it returns, as the runner has it), timed alone
    (no embedding, no ledger); `--runs` times each, reporting every run, the median and the spread.
reopen: a shard of N points (written here in batches of 1,000) is closed, then the time to open it again
    and read one point is taken, as a resumed job pays it.
verify: a job of N records (hashing embedder, 64-d vectors) is loaded into Qdrant (`:memory:` by default,
    `disk` for a Qdrant Edge folder), then `qsync verify` is timed on the complete collection, and again
    with `--repair` after 1% of the points were deleted behind the ledger's back.
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
from qsync.sink.factory import open_sink as QdrantSink
from qsync.sink.shards import acquire, open_shard, release
from qsync.spec.target import SinkSpec, point_id


def upsert(points: int, dimensions: int, runs: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((points, dimensions)).astype(np.float32)
    result: dict[str, Any] = {"points": points, "dimensions": dimensions, "batch": 100, "runs": runs}
    for label, path in (("memory", ":memory:"), ("edge", "edge")):
        rates = []
        for run in range(runs):
            where = path if path == ":memory:" else str(Path(tempfile.mkdtemp()) / "qdrant")
            sink = QdrantSink(SinkSpec(path=where), f"bench{run}", dimensions)
            sink.ensure_collection()
            started = time.perf_counter()
            for start in range(0, points, 100):
                ids = [f"r{i}" for i in range(start, min(points, start + 100))]
                sink.upsert(ids, vectors[start : start + len(ids)], [{"id": i} for i in ids])
            rates.append(round(points / (time.perf_counter() - started)))
            sink.close()
        result[f"{label}_points_per_s"] = rates
        result[f"{label}_median"] = int(np.median(rates))
        result[f"{label}_spread"] = f"{min(rates)}-{max(rates)}"
    return result


def reopen(points: int, dimensions: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="qsync-reopen-"))
    sink = QdrantSink(SinkSpec(path=str(root)), "c", dimensions)
    sink.ensure_collection()
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for start in range(0, points, 1000):
        ids = [f"r{i}" for i in range(start, min(points, start + 1000))]
        sink.upsert(ids, rng.standard_normal((len(ids), dimensions)).astype(np.float32), [{"id": i} for i in ids])
    write_s = time.perf_counter() - started
    sink.close()
    started = time.perf_counter()
    shared = acquire(root / "c")
    opened_s = time.perf_counter() - started
    found = shared.shard.retrieve([point_id("r0")], with_payload=True, with_vector=True)
    first_read_s = time.perf_counter() - started
    count = shared.shard.info().points_count
    release(shared)
    size = sum(f.stat().st_size for f in (root / "c").rglob("*") if f.is_file())
    return {
        "points": points, "dimensions": dimensions, "write_s": round(write_s, 1), "points_count": count,
        "reopen_s": round(opened_s, 2), "reopen_and_first_read_s": round(first_read_s, 2),
        "found_first": len(found) == 1, "disk_mb": round(size / 1e6), "bytes_per_point": round(size / points),
    }  # fmt: skip


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
    gone = [point_id(f"r{i}") for i in range(0, points, 100)]
    if qdrant == ":memory:":
        from qsync.sink.client import ClientSink

        sink = QdrantSink(SinkSpec(path=qdrant), "c", dimensions)
        assert isinstance(sink, ClientSink)
        client = sink.client
        client.delete("c", points_selector=models.PointIdsList(points=gone), wait=True)
    else:
        from qdrant_edge import UpdateOperation

        with open_shard(Path(qdrant) / "c") as shared:
            shared.durable(shared.update(UpdateOperation.delete_points(gone)))  # type: ignore[arg-type]
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
    parser.add_argument("which", choices=["upsert", "reopen", "verify"])
    parser.add_argument("--points", type=int)
    parser.add_argument("--dimensions", type=int)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--qdrant", default=":memory:", help="':memory:' (default) or 'disk' (a Qdrant Edge folder)")
    args = parser.parse_args()
    if args.which == "upsert":
        report = upsert(args.points or 20_000, args.dimensions or 768, args.runs)
    elif args.which == "reopen":
        report = reopen(args.points or 200_000, args.dimensions or 768)
    else:
        report = verify(args.points or 200_000, args.dimensions or 64, args.qdrant)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
