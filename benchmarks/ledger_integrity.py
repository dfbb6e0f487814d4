"""What the integrity check costs: every command that reads a checkpoint file first reads all of it (DuckDB
verifies each block's checksum as it reads it), so a damaged file is told at once.

    python benchmarks/ledger_integrity.py [--records 200000] [--repeats 7]

Builds a checkpoint file by a real job (hashing embedder, 768 dimensions, in-memory Qdrant) of --records
records, then, alternating, times in fresh processes:

* `check`:  opening the file and `qsync.ledger.integrity.check` alone (the process's start-up left out);
* `status`: `qsync status JOB` as a user meets it (start-up, integrity check, the query, the output);
* `status, no check`: the same command with the check left out (the benchmark empties the CLI's set of checked
  commands) — the difference is what the check adds to each command.

Reported: median and spread (min to max) of each, the file's size and rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

import qsync

_CHECK_ONLY = """
import sys, time
from qsync.ledger.integrity import check
from qsync.ledger.ledger import Ledger
started = time.perf_counter()
with Ledger(sys.argv[1], create=False) as ledger:
    check(ledger)
print(time.perf_counter() - started)
"""
_STATUS_UNCHECKED = """
import importlib, sys
cli = importlib.import_module("qsync.cli.main")
cli._CHECKED = frozenset()
sys.exit(cli.main(sys.argv[1:]))
"""


def build(db: Path, records: int) -> None:
    frame = pd.DataFrame(
        {"id": [f"r{i}" for i in range(records)], "text": [f"record number {i} " * 8 for i in range(records)]}
    )
    qsync.run(frame, collection="c", job="j", db=db, dimensions=768, qdrant_path=":memory:", progress=False)


def timed(command: list[str], *, check_only: bool) -> float:
    started = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    whole = time.perf_counter() - started
    return float(out.stdout.strip()) if check_only else whole


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    db = Path(tempfile.mkdtemp(prefix="qsync-integrity-")) / "q.duckdb"
    started = time.perf_counter()
    build(db, args.records)
    print(f"built {db} ({db.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - started:.0f} s", file=sys.stderr)

    status = ["status", "j", "--db", str(db)]
    runs = {
        "check": [sys.executable, "-c", _CHECK_ONLY, str(db)],
        "status": [sys.executable, "-m", "qsync", *status],
        "status, no check": [sys.executable, "-c", _STATUS_UNCHECKED, *status],
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, command in runs.items():  # alternating: the machine's noise falls on all alike
            times[name].append(timed(command, check_only=name == "check"))
    result = {
        "records": args.records,
        "file_mb": round(db.stat().st_size / 1e6, 1),
        **{
            name: {"median_s": round(statistics.median(ts), 3), "min_s": round(min(ts), 3), "max_s": round(max(ts), 3)}
            for name, ts in times.items()
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
