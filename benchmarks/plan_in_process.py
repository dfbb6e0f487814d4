"""`plan_job` of a qsync source tree, in this process, against a plain DuckDB file with the checkpoint host's
settings: the planning transaction's statements timed, its WAL's size, the commit after it (DuckDB's automatic
checkpoint of the plan) and the file's size. Trees alternate, so the machine's noise falls on each alike.

    python benchmarks/two_million.py data --rows 2000000 --data /tmp/2m           # records.parquet, once
    python benchmarks/plan_in_process.py --data /tmp/2m --rounds 3 --tree now=. --tree before=/path/to/worktree

Each round runs one child process per tree (PYTHONPATH=tree), so each measures its own code. Not a whole `qsync run`
(start-up, the host process, the estimate are left out): for those, `two_million.py first-batch`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import contextlib, json, sys, time
from pathlib import Path
import duckdb
from qsync.clock import SystemClock
from qsync.input.plan import plan_job
from qsync.input.sources import as_source
from qsync.ledger.host import SETTINGS, _Context
from qsync.ledger.migrate import check_schema
from qsync.spec.columns import Columns

class Limits:
    model, max_text_tokens, max_batch_texts, dimensions, task_type = "gemini-embedding-001", 2048, 100, 128, ""

class Timed:
    def __init__(self, con): self.con, self.times = con, []
    def execute(self, sql, params=None):
        started = time.perf_counter()
        result = self.con.execute(sql, params) if params is not None else self.con.execute(sql)
        self.times.append((time.perf_counter() - started, " ".join(str(sql).split())[:50]))
        return result
    def __getattr__(self, name): return getattr(self.con, name)

class PlainLedger:
    def __init__(self, path):
        self.path, self.media_dir = path, path.parent / "media"
        self.con = duckdb.connect(str(path))
        for name, value in SETTINGS.items():
            self.con.execute(f"SET GLOBAL {name} = {value}")
        context = _Context(path); check_schema(self.con, context, str(path)); context.vectors.close()
    @contextlib.contextmanager
    def transaction(self, **_):
        self.timed = Timed(self.con)
        self.con.execute("BEGIN")
        yield self.timed
        started = time.perf_counter(); self.con.execute("COMMIT")
        self.timed.times.append((time.perf_counter() - started, "COMMIT"))

source, path = sys.argv[1], Path(sys.argv[2])
ledger = PlainLedger(path)
started = time.perf_counter()
plan_job(ledger, "bench", as_source(source), Columns(), Limits(), {}, "c", 100, SystemClock(), target="t",
         embedder_signature="e")
plan_s = time.perf_counter() - started
wal_mb = path.with_name(path.name + ".wal").stat().st_size / 1e6
started = time.perf_counter()
ledger.con.execute("BEGIN"); ledger.con.execute("INSERT INTO qsync_file SELECT * FROM qsync_file LIMIT 0")
ledger.con.execute("COMMIT")  # a write after the plan: DuckDB checkpoints the plan's WAL first
next_commit_s = time.perf_counter() - started
wal_after_mb = path.with_name(path.name + ".wal").stat().st_size / 1e6 if path.with_name(path.name + ".wal").exists() else 0.0
ledger.con.execute("CHECKPOINT"); ledger.con.close()
print(json.dumps({"plan_s": round(plan_s, 2), "wal_mb": round(wal_mb, 1), "next_commit_s": round(next_commit_s, 2),
                  "wal_after_next_commit_mb": round(wal_after_mb, 1),
                  "file_mb": round(path.stat().st_size / 1e6, 1),
                  "slowest": [f"{d:.2f} {q}" for d, q in sorted(ledger.timed.times, reverse=True)[:5]]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the folder of records.parquet (two_million.py)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", action="append", required=True, help="NAME=PATH of a qsync source tree")
    args = parser.parse_args()
    trees = [tuple(t.split("=", 1)) for t in args.tree]
    runs: dict[str, list[dict[str, object]]] = {name: [] for name, _ in trees}
    for round_no in range(args.rounds):
        for name, tree in trees if round_no % 2 == 0 else trees[::-1]:
            with tempfile.TemporaryDirectory(prefix="qsync-plan-") as folder:
                env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
                out = subprocess.run([sys.executable, "-c", CHILD, str(args.data / "records.parquet"),
                                      str(Path(folder) / "q.duckdb")], env=env, capture_output=True, text=True,
                                     check=True, cwd=folder)  # fmt: skip
                run = json.loads(out.stdout.splitlines()[-1])
                runs[name].append(run)
                print(json.dumps({"tree": name, "round": round_no, **run}), file=sys.stderr)
    summary = {
        name: {key: {"median": statistics.median(float(r[key]) for r in rs),  # type: ignore[arg-type]
                     "min": min(float(r[key]) for r in rs), "max": max(float(r[key]) for r in rs)}  # type: ignore[arg-type]
               for key in ("plan_s", "next_commit_s", "wal_mb", "file_mb")}
        for name, rs in runs.items()
    }  # fmt: skip
    print(json.dumps({"rounds": args.rounds, "summary": summary, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
