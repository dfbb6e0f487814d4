"""What DuckDB's checkpoint_threshold costs and saves on a large checkpoint file: a run's writes, a crash's replay.

    python benchmarks/wal_threshold.py writes --ledger /tmp/2m/one/q.duckdb --thresholds 16MB,128MiB --batches 2000 --rounds 2
    python benchmarks/wal_threshold.py replay --ledger /tmp/2m/one/q.duckdb --batches 1000,2500

`--ledger` is a checkpoint file a `two_million.py full` run left (millions of cache and points rows); every
measure works on a copy of it, in-process (no host, no runner: DuckDB alone, with the settings ledger/host.py
applies). A batch here is the rows a hashing batch of 175 records writes: 175 cache rows, 175 points rows, three
updates of its batch row, in one transaction.

- writes: those batches, one transaction each, at each threshold (alternating, `--rounds` times): the time per batch,
  the commits that took over 100 ms (those that folded the log into the file: a checkpoint) and their sum, and
  the close (which folds what is left).
- replay: that many batches written with no checkpoint, then the process killed (os._exit: the log left behind,
  as a crash leaves it); then the time to open the file again (DuckDB replays the log) and to close it.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROWS = 175  # records of one hashing batch of the 2M benchmark


def _connect(path: Path, threshold: str) -> Any:
    import duckdb

    from qsync.ledger.host import SETTINGS

    con = duckdb.connect(str(path))
    for name, value in {**SETTINGS, "checkpoint_threshold": f"'{threshold}'"}.items():  # the host's, but this size
        con.execute(f"SET GLOBAL {name} = {value}")
    return con


def _append(con: Any, table: str, rows: Any) -> None:
    con.register("new_rows", rows)
    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM new_rows")
    con.unregister("new_rows")


def write_batches(path: Path, threshold: str, batches: int, crash: bool) -> dict[str, Any]:
    """`batches` transactions of a batch's rows; with `crash`, the process ends without closing the file."""
    import pyarrow as pa

    con = _connect(path, threshold)
    job, last = con.execute("SELECT job_id, max(batch_no) FROM batches GROUP BY job_id LIMIT 1").fetchone()
    salt = os.urandom(4).hex()
    commits, started = [], time.perf_counter()
    for i in range(batches):
        now = datetime.datetime.now()
        keys = [hashlib.sha256(f"{salt}{i}-{j}".encode()).hexdigest() for j in range(ROWS)]
        batch_no = (i * 7919) % (last + 1)
        con.execute("BEGIN")
        con.execute("UPDATE batches SET status = 'running', attempts = attempts + 1, started_at = ? "
                    "WHERE job_id = ? AND batch_no = ?", [now, job, batch_no])  # fmt: skip
        cache = pa.table({
            "cache_key": [f"m|128||{k}" for k in keys], "model": ["m"] * ROWS,
            "dimensions": pa.array([128] * ROWS, pa.int32()), "task_type": [""] * ROWS, "content_hash": keys,
            "tokens": pa.array([10] * ROWS, pa.int32()), "byte_offset": pa.array(range(i * ROWS, (i + 1) * ROWS)),
            "created_at": pa.array([now] * ROWS, pa.timestamp("us")),
        })  # fmt: skip
        _append(con, "embeddings", cache)
        con.execute("UPDATE batches SET embedded_texts = embedded_texts + ? WHERE job_id = ? AND batch_no = ?",
                    [ROWS, job, batch_no])  # fmt: skip
        points = pa.table({
            "target": ["t"] * ROWS, "record_id": keys, "point_id": keys, "source_hash": keys, "vector_hash": keys,
            "embedder": ["m|128|"] * ROWS, "payload": ['{"id": 1}'] * ROWS, "job_id": [job] * ROWS,
            "updated_at": pa.array([now] * ROWS, pa.timestamp("us")),
        })  # fmt: skip
        _append(con, "points", points)
        con.execute("UPDATE batches SET status = 'done', finished_at = ? WHERE job_id = ? AND batch_no = ?",
                    [now, job, batch_no])  # fmt: skip
        before = time.perf_counter()
        con.execute("COMMIT")
        commits.append(time.perf_counter() - before)
    spent = time.perf_counter() - started
    wal = path.with_name(path.name + ".wal")
    result = {"threshold": threshold, "batches": batches, "seconds": round(spent, 2),
              "ms_per_batch": round(1000 * spent / batches, 2),
              "commit_median_ms": round(1000 * statistics.median(commits), 2),
              "checkpoints": sum(c > 0.1 for c in commits),
              "checkpoints_s": round(sum(c for c in commits if c > 0.1), 2),
              "wal_mb": round(wal.stat().st_size / 1e6, 1) if wal.exists() else 0.0}  # fmt: skip
    if crash:
        print(json.dumps(result), flush=True)
        os._exit(0)
    before = time.perf_counter()
    con.close()
    result["close_s"] = round(time.perf_counter() - before, 2)
    return result


def _copy(ledger: Path, folder: Path) -> Path:
    copy = folder / "q.duckdb"
    shutil.copyfile(ledger, copy)
    return copy


def replay(ledger: Path, batches: int) -> dict[str, Any]:
    import duckdb

    with tempfile.TemporaryDirectory(dir=ledger.parent) as folder:
        copy = _copy(ledger, Path(folder))
        child = subprocess.run([sys.executable, __file__, "crash", "--ledger", str(copy), "--batches", str(batches)],
                               capture_output=True, text=True, check=True)  # fmt: skip
        written = json.loads(child.stdout.splitlines()[-1])
        before = time.perf_counter()
        con = duckdb.connect(str(copy))
        opened = time.perf_counter() - before
        before = time.perf_counter()
        con.close()
        return {**written, "open_and_replay_s": round(opened, 2), "close_s": round(time.perf_counter() - before, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("writes", "replay", "crash"))
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--thresholds", default="16MB,128MiB")
    parser.add_argument("--batches", default="2000")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.mode == "crash":  # replay's child: write, then die without closing
        write_batches(args.ledger, "1TB", int(args.batches), crash=True)
        return
    results = []
    if args.mode == "writes":
        for _ in range(args.rounds):
            for threshold in args.thresholds.split(","):  # alternating: the machine's noise falls on each alike
                with tempfile.TemporaryDirectory(dir=args.ledger.parent) as folder:
                    results.append(write_batches(_copy(args.ledger, Path(folder)), threshold, int(args.batches), False))
                print(json.dumps(results[-1]), file=sys.stderr)
    else:
        for batches in args.batches.split(","):
            results.append(replay(args.ledger, int(batches)))
            print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps({"mode": args.mode, "ledger": str(args.ledger), "results": results}, indent=2))


if __name__ == "__main__":
    main()
