"""A whole `qsync.run` in one process, timed: 8,000 DataFrame rows, the hashing embedder (768-d), Qdrant Edge.

    python benchmarks/inprocess_hashing.py LABEL

No API latency, so what is left is qsync's own work: planning, the checkpoint, the shard. Prints the label, the
job's status and the seconds the call took (start-up of the ledger host included).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time

import pandas as pd

import qsync


def main() -> None:
    frame = pd.DataFrame({"id": range(8000), "text": [f"record number {i} with some words" for i in range(8000)]})
    folder = tempfile.mkdtemp()
    started = time.perf_counter()
    result = qsync.run(frame, collection="c", job="p", db=f"{folder}/q.duckdb", dimensions=768, progress=False)
    print(sys.argv[1] if len(sys.argv) > 1 else "qsync", result.status, round(time.perf_counter() - started, 2))
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
