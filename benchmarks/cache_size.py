"""How big the embedding cache grows, and what persisting a batch costs, with Gemini-like vectors.

    python benchmarks/cache_size.py [--vectors 200000] [--dimensions 768]

The hashing embedder's vectors are mostly zeros and compress well; real embeddings are dense floats
that do not. This writes random unit vectors (as dense as Gemini's) through qsync's own cache insert,
100 per transaction as a batch does, into a fresh qsync store, and reports the file size and the time
per batch as the cache grows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from qsync.clock import SYSTEM_CLOCK
from qsync.ledger.cache import append_vectors, insert_vectors
from qsync.ledger.ledger import Ledger


class _Gemini:
    model, task_type, price_per_million_tokens = "gemini-embedding-001", "RETRIEVAL_DOCUMENT", 0.15

    def __init__(self, dimensions: int) -> None:
        self.dimensions = dimensions


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vectors", type=int, default=200_000)
    parser.add_argument("--dimensions", type=int, default=768)
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp(prefix="qsync-cache-")) / "q.duckdb"
    store = Ledger(path)
    vector_file = store.vectors
    embedder = _Gemini(args.dimensions)
    rng = np.random.default_rng(0)
    report: dict[str, Any] = {"dimensions": args.dimensions, "raw_bytes_per_vector": 4 * args.dimensions, "steps": []}
    started = step_started = time.perf_counter()
    batches = args.vectors // 100
    for b in range(batches):
        vectors = rng.standard_normal((100, args.dimensions)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        hashes = [hashlib.sha256(f"{b}/{i}".encode()).hexdigest() for i in range(100)]
        offsets = append_vectors(vector_file, vectors)  # as the ledger does: bytes first, then the rows
        vector_file.sync()
        with store.transaction() as con:
            insert_vectors(con, embedder, hashes, offsets, [10] * 100, SYSTEM_CLOCK.now(), origin=None)
        if (b + 1) % (batches // 10 or 1) == 0:
            now = time.perf_counter()
            report["steps"].append(
                {
                    "vectors": (b + 1) * 100,
                    "ms_per_batch": round((now - step_started) / (batches // 10 or 1) * 1000, 1),
                    "file_mb": round((path.stat().st_size + path.with_suffix(".vectors").stat().st_size) / 2**20),
                }
            )
            step_started = now
    store.close()
    report["total_s"] = round(time.perf_counter() - started, 1)
    report["file_mb_after_close"] = round(path.stat().st_size / 2**20)
    report["bytes_per_vector"] = round(path.stat().st_size / args.vectors)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
