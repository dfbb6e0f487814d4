"""Re-syncing a large PostgreSQL table: the whole table read again vs `--changed-since` (issue 21).

Starts a throwaway PostgreSQL server (tests/pg_server.py), loads ROWS rows (id bigint, ~90-character text, pos,
updated_at timestamptz, an index on it), and loads them once into a checkpoint file and an Edge collection with
`qsync run --changed-since updated_at --delete-missing` (hashing embedder, 8 dimensions: the embedder is not what is
measured). That state is copied twice (the checkpoint file, its vector file, the Qdrant folder), one copy per way of
re-syncing. Then, for each round: 1% of the rows get a new text and `updated_at = clock_timestamp()` (as rows
written one by one would), 0.01% are deleted, and the
same change is re-synced by both ways, alternating which goes first:

- `full`: `qsync run --source glosses --delete-missing` (every row read, compared, the changed ones embedded);
- `changed-since`: the same with `--changed-since updated_at` (only rows at or above the last mark read; the ids of
  every row read for deletions).

Each is one whole `qsync run` process as a user meets it (start-up, planning, the run, the flush). Reported: wall time,
rows read (the job's total_records), texts embedded, records deleted, and the time to the first batch: from the
process's start to its runner's lease (start-up, reading, comparing, the manifest, the estimate, the collection
checked), the part --changed-since changes.

    pip install -r benchmarks/requirements-postgres.txt
    python benchmarks/postgres_resync.py --rows 1000000 --rounds 3 > benchmarks/results/postgres/resync_1m.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from pg_server import throwaway_server  # noqa: E402

QSYNC = [sys.executable, "-m", "qsync"]
_STARTED = datetime.now(timezone.utc).replace(tzinfo=None)  # when the last measured process started (UTC, naive)
COMMON = ["--source", "glosses", "--collection", "bench", "--embedder", "hash", "--dimensions", "8",
          "--payload-columns", "pos", "--delete-missing", "--quiet"]  # fmt: skip
WAYS = {"full": [], "changed-since": ["--changed-since", "updated_at"]}


def _qsync(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    global _STARTED
    _STARTED = datetime.now(timezone.utc).replace(tzinfo=None)
    start = time.perf_counter()
    proc = subprocess.run([*QSYNC, *args], env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"qsync {' '.join(args[:2])} failed: {proc.stdout[-1000:]} {proc.stderr[-2000:]}")
    return wall, proc.stdout


def _status(db: Path, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run([*QSYNC, "status", "--json", "--db", str(db)], env=env, capture_output=True, text=True,
                          check=True)  # fmt: skip
    return dict(json.loads(proc.stdout))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qsync-pg-resync-"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "QSYNC_RUN_DIR": str(work / "run")}
    with throwaway_server() as server:
        url = server.url()
        server.sql(
            "CREATE TABLE glosses (id bigint PRIMARY KEY, text text, pos text, updated_at timestamptz)",
            "INSERT INTO glosses SELECT i, 'gloss ' || i || ': ' || md5(i::text) || ' ' || md5((i * 7)::text), "
            "CASE WHEN i % 2 = 0 THEN 'noun' ELSE 'verb' END, "
            f"timestamptz '2026-01-01' + i * interval '1 ms' FROM generate_series(1, {args.rows}) i",
            "CREATE INDEX ON glosses (updated_at)",
            "VACUUM ANALYZE glosses",
            url=url,
        )
        seed = work / "seed"
        seed.mkdir()
        start = time.perf_counter()
        _qsync(["run", *COMMON, *WAYS["changed-since"], "--source-db", url, "--db", str(seed / "q.duckdb")], env)
        first = {"wall_s": round(time.perf_counter() - start, 1), **_pick(_status(seed / "q.duckdb", env))}
        print("first load", first, file=sys.stderr)
        _wait_closed(seed)
        for way in WAYS:
            shutil.copytree(seed, work / way)
        runs: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
        for round_no in range(args.rounds):
            server.sql(
                f"UPDATE glosses SET text = text || ' (r{round_no})', updated_at = clock_timestamp() WHERE id % 100 = {round_no}",
                f"DELETE FROM glosses WHERE id % 10000 = {5000 + round_no}",
                url=url,
            )
            order = list(WAYS) if round_no % 2 == 0 else list(reversed(WAYS))
            for way in order:
                db = work / way / "q.duckdb"
                wall, _ = _qsync(["run", *COMMON, *WAYS[way], "--source-db", url, "--db", str(db)], env)
                runs[way].append({"wall_s": round(wall, 2), **_pick(_status(db, env))})
                print(way, runs[way][-1], file=sys.stderr)
    summary = {
        way: {
            "wall_s_median": statistics.median(r["wall_s"] for r in rs),
            "wall_s_range": [min(r["wall_s"] for r in rs), max(r["wall_s"] for r in rs)],
            "rows_read_median": statistics.median(r["total_records"] for r in rs),
            "to_first_batch_s_median": statistics.median(r["to_first_batch_s"] for r in rs),
            "to_first_batch_s_range": [min(r["to_first_batch_s"] for r in rs), max(r["to_first_batch_s"] for r in rs)],
        }
        for way, rs in runs.items()
    }
    print(json.dumps({"rows": args.rows, "rounds": args.rounds, "load": os.getloadavg(), "first_load": first,
                      "runs": runs, "summary": summary}, indent=1))  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)


def _wait_closed(folder: Path, timeout_s: float = 120) -> None:
    """Until no process holds the folder's files (the checkpoint file's host lingers 2 s after its last client, and
    checkpoints as it closes): a copy taken before would miss what it writes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        holders = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and str(folder).encode() in (proc / "cmdline").read_bytes():
                    holders.append(proc.name)
            except OSError:
                continue
        if not holders:
            return
        time.sleep(0.2)
    raise SystemExit(f"{folder} is still held by processes {holders}")


def _pick(status: dict[str, Any]) -> dict[str, Any]:
    keys = ("job", "status", "total_records", "loaded_records", "unchanged_records", "deleted_records",
            "embedded_texts", "since_value")  # fmt: skip
    picked = {k: status.get(k) for k in keys}
    # Start-up and planning (the source read, compared, the manifest, the estimate, the collection checked): from the
    # process's start to the lease its runner takes (the ledger's clock is naive UTC, this machine's).
    started = datetime.fromisoformat(str(status["started_at"]))
    picked["to_first_batch_s"] = round((started - _STARTED).total_seconds(), 2)
    return picked


if __name__ == "__main__":
    main()
