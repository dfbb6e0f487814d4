"""PostgreSQL as a source (issue 21): which driver, and what planning a large table costs.

Starts a throwaway PostgreSQL server (tests/pg_server.py: initdb in a temporary folder, 127.0.0.1, password
authentication), loads ROWS rows (id bigint, text of ~90 characters, pos), then, alternating, several rounds of
whole processes:

- `driver:NAME`: a process that reads every row of the table into Arrow record batches and drops them, as the plan
  would consume them: ADBC's PostgreSQL driver (a record batch stream), psycopg 3 (binary, a server-side cursor,
  rows turned into Arrow batches of 10,000), connectorx (`arrow_stream`, batches of 10,000); and ADBC reading the
  whole result at once (`adbc-whole`), to show what streaming saves. Wall time, rows read, the process's peak RSS;
- `plan:postgres`: `qsync.prepare(TABLE, source_db=URL)` in a fresh process and a fresh checkpoint file: the whole
  plan (read, check, manifest, estimate) of the table, nothing embedded. Wall time, rows/s, peak RSS of the
  process and of the checkpoint file's host process (VmHWM, read before the host exits);
- `plan:parquet`: the same for the same rows from a Parquet file, for comparison.

    pip install -r benchmarks/requirements-postgres.txt
    python benchmarks/postgres_source.py --rows 1000000 --rounds 3 > benchmarks/results/postgres/source.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from pg_server import throwaway_server  # noqa: E402

READERS = {
    "adbc": """
import adbc_driver_postgresql.dbapi as pg
with pg.connect(URL) as con, con.cursor() as cur:
    cur.execute(QUERY)
    rows = sum(b.num_rows for b in cur.fetch_record_batch())
""",
    "psycopg": """
import psycopg, pyarrow as pa
rows = 0
with psycopg.connect(URL) as con, con.cursor(name="q", binary=True) as cur:
    cur.itersize = 10000
    cur.execute(QUERY)
    names = None
    while chunk := cur.fetchmany(10000):
        names = names or [d.name for d in cur.description]
        batch = pa.RecordBatch.from_arrays([pa.array(c) for c in zip(*chunk)], names=names)
        rows += batch.num_rows
""",
    "adbc-whole": """
import adbc_driver_postgresql.dbapi as pg
with pg.connect(URL) as con, con.cursor() as cur:
    cur.execute(QUERY)
    rows = cur.fetch_arrow_table().num_rows  # the whole result at once, for comparison
""",
    "connectorx": """
import connectorx as cx
reader = cx.read_sql(URL, QUERY, return_type="arrow_stream", batch_size=10000)
rows = sum(b.num_rows for b in reader)
""",
}

PLAN = """
import qsync
rows = -1
qsync.prepare(SOURCE, source_db=DB_URL, db=CHECKPOINT, collection="bench", embedder="hash", dimensions=8,
              id_column="id", text_column="text", payload_columns=["pos"])
"""


def _host_hwm_kb(checkpoint: str) -> int | None:
    """Peak RSS of the checkpoint file's host (python -m qsync.ledger.host PATH), while it is still alive."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if b"qsync.ledger.host" in cmdline and any(checkpoint.encode() in part for part in cmdline):
                for line in (proc / "status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            continue
    return None


_HWM = "\nprint(rows)\nprint(next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1])\n"


def _process(code: str, checkpoint: str | None = None) -> dict[str, Any]:
    """Run `code` in a fresh interpreter; its wall time and peak RSS (VmHWM, which an exec starts afresh, unlike
    ru_maxrss that a forked child inherits), and the ledger host's for a plan."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code + _HWM], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, check=False)  # fmt: skip
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"a measured process failed: {proc.stderr[-2000:]}")
    rows, hwm_kb = proc.stdout.split()[-2:]
    result = {"wall_s": round(wall, 3), "peak_rss_mb": round(int(hwm_kb) / 1024, 1), "rows": int(rows)}
    if checkpoint:
        hwm = _host_hwm_kb(checkpoint)
        result["host_peak_rss_mb"] = round(hwm / 1024, 1) if hwm else None
    return result


def _summary(runs: list[dict[str, Any]], rows: int) -> dict[str, Any]:
    walls = [r["wall_s"] for r in runs]
    out: dict[str, Any] = {
        "wall_s_median": statistics.median(walls),
        "wall_s_range": [min(walls), max(walls)],
        "rows_per_s_median": round(rows / statistics.median(walls)),
        "peak_rss_mb_median": statistics.median(r["peak_rss_mb"] for r in runs),
    }
    hosts = [r["host_peak_rss_mb"] for r in runs if r.get("host_peak_rss_mb")]
    if hosts:
        out["host_peak_rss_mb_median"] = statistics.median(hosts)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated: driver:adbc,plan:postgres,…")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qsync-pg-bench-"))
    with throwaway_server() as server:
        url = server.url()
        server.sql(
            "CREATE TABLE glosses (id bigint PRIMARY KEY, text text, pos text)",
            "INSERT INTO glosses SELECT i, 'gloss ' || i || ': ' || md5(i::text) || ' ' || md5((i * 7)::text), "
            f"CASE WHEN i % 2 = 0 THEN 'noun' ELSE 'verb' END FROM generate_series(1, {args.rows}) i",
            "VACUUM ANALYZE glosses",
            url=url,
        )
        parquet = work / "glosses.parquet"
        import adbc_driver_postgresql.dbapi as pg
        import pyarrow.parquet as pq

        with pg.connect(url) as con, con.cursor() as cur:
            cur.execute("SELECT id, text, pos FROM glosses")
            pq.write_table(cur.fetch_arrow_table(), parquet)
        cases: dict[str, str] = {
            f"driver:{name}": f"URL = {url!r}\nQUERY = 'SELECT id, text, pos FROM glosses'\n{code}"
            for name, code in READERS.items()
        }
        cases["plan:postgres"] = f"SOURCE = 'glosses'\nDB_URL = {url!r}\n"
        cases["plan:parquet"] = f"SOURCE = {str(parquet)!r}\nDB_URL = None\n"
        wanted = [c for c in cases if not args.only or c in args.only.split(",")]
        runs: dict[str, list[dict[str, Any]]] = {c: [] for c in wanted}
        for round_no in range(args.rounds):
            for case in wanted:  # alternating: each round runs every case once
                if case.startswith("plan:"):
                    checkpoint = str(work / f"{case.split(':')[1]}-{round_no}.duckdb")
                    code = f"{cases[case]}CHECKPOINT = {checkpoint!r}\n{PLAN}"
                    runs[case].append(_process(code, checkpoint))
                else:
                    runs[case].append(_process(cases[case]))
                print(case, runs[case][-1], file=sys.stderr)
    print(json.dumps({
        "rows": args.rows, "rounds": args.rounds, "load": os.getloadavg(),
        "runs": runs, "summary": {c: _summary(r, args.rows) for c, r in runs.items()},
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
