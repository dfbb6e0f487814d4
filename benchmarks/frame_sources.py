"""Planning 1,000,000 rows from a pandas DataFrame, a pyarrow Table, a polars DataFrame and a folder of Parquet files:
each a whole process (start-up, reading the frame from Parquet, planning, exit), alternating, `--rounds` each.

    python benchmarks/frame_sources.py [--rows 1000000] [--rounds 3] [--out benchmarks/results/frames/run.json]

What `qsync.prepare` does for a new job (hashing embedder, Qdrant Edge), its two phases timed apart: the plan (the
source read, every record checked and snapshotted into the manifest) and then the estimate recorded beside it (the
manifest's texts read back; the same work whatever the source); nothing embedded. Per run: the process's wall time,
`plan_s`, `prepare_s` (plan + estimate), the RSS with the frame loaded, the process's peak RSS (VmHWM) after the plan
and at the end, and the same two peaks of the checkpoint file's host process (ledger/host.py: the normalised rows
are sent to it and planned there), read from /proc.

Rows: id (int64), text (~70 bytes, distinct), tag (one of 16 strings), score (float64), written once as one Parquet
file (which the frame kinds read) and as a folder of 8 partitions, hive-partitioned by `part`.
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

KINDS = ("pandas", "arrow", "polars", "parquet-folder")


def make_data(folder: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ids = pa.array(range(rows), pa.int64())
    text = pc.binary_join_element_wise(
        "record ", pc.cast(ids, pa.string()), " of the benchmark: a few words to embed", ""
    )
    tag = pc.binary_join_element_wise("tag-", pc.cast(pc.bit_wise_and(ids, 15), pa.string()), "")
    table = pa.table({"id": ids, "text": text, "tag": tag, "score": pc.divide(pc.cast(ids, pa.float64()), 7.0)})
    pq.write_table(table, folder / "rows.parquet")
    parted = table.append_column("part", pc.cast(pc.bit_wise_and(ids, 7), pa.int64()))
    pq.write_to_dataset(parted, folder / "parts", partition_cols=["part"])  # hive: part=0/, part=1/, …


def child(kind: str, data: Path, work: Path) -> dict[str, Any]:
    """One planning run, in this process."""
    import qsync
    from qsync.app.jobs import plan
    from qsync.app.options import build_spec
    from qsync.embedders.factory import build_embedder
    from qsync.ledger.hosts import host_pid
    from qsync.ledger.ledger import Ledger
    from qsync.money.recorded import record_estimate

    if kind == "pandas":
        import pandas as pd

        source: Any = pd.read_parquet(data / "rows.parquet")
    elif kind == "arrow":
        import pyarrow.parquet as pq

        source = pq.read_table(data / "rows.parquet")
    elif kind == "polars":
        import polars as pl

        source = pl.read_parquet(data / "rows.parquet")
    else:
        source = data / "parts"
    rss_loaded = _status_kb(os.getpid(), "VmRSS")
    db = work / "q.duckdb"
    # prepare's path for a new job (app.jobs.open_job), its two phases timed apart: the plan reads the source into
    # the manifest; the estimate recorded beside it reads the manifest's texts back (the same for every source).
    spec, src = build_spec(source, collection="c", db=db, qdrant_path=work / "qdrant", embedder="hash",
                           dimensions=64, payload_columns=["tag", "score"])  # fmt: skip
    with Ledger(db) as ledger:
        embedder = build_embedder(spec.embedder)
        started = time.perf_counter()
        plan(ledger, spec.name, spec, src, embedder, None)
        plan_s = time.perf_counter() - started
        peak_plan = _status_kb(os.getpid(), "VmHWM")
        pid = host_pid(db)
        host_peak_plan = _peak_kb(pid) if pid else None
        record_estimate(ledger, spec.name, embedder)
        prepare_s = time.perf_counter() - started
        host_peak = _peak_kb(pid) if pid else None
    info = qsync.status(spec.name, db=db)
    return {
        "kind": kind, "plan_s": round(plan_s, 3), "prepare_s": round(prepare_s, 3), "records": info["total_records"],
        # VmHWM, not ru_maxrss: Linux carries a parent's peak into ru_maxrss across fork and exec.
        "peak_rss_plan_mb": _mb(peak_plan), "peak_rss_mb": _mb(_status_kb(os.getpid(), "VmHWM")),
        "rss_before_plan_mb": _mb(rss_loaded), "host_peak_rss_plan_mb": _mb(host_peak_plan),
        "host_peak_rss_mb": _mb(host_peak),
    }  # fmt: skip


def _mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _peak_kb(pid: int) -> int | None:
    try:
        return _status_kb(pid, "VmHWM")
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data, args.work)))
        return
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="qsync-frames-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        make_data(data, args.rows)
        for round_no in range(args.rounds):
            for kind in KINDS:  # alternating: a busy moment of the machine falls on every kind alike
                work = Path(tmp) / f"{kind}-{round_no}"
                work.mkdir()
                started = time.perf_counter()
                out = subprocess.run(
                    [sys.executable, __file__, "--child", kind, "--data", str(data), "--work", str(work)],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
                run = {**json.loads(out.stdout.strip().splitlines()[-1]), "round": round_no,
                       "process_s": round(time.perf_counter() - started, 3), "load": os.getloadavg()[0]}  # fmt: skip
                runs.append(run)
                print(json.dumps(run), file=sys.stderr)
    summary = {
        kind: {
            figure: _median_and_spread([r[figure] for r in runs if r["kind"] == kind])
            for figure in (
                "process_s",
                "plan_s",
                "prepare_s",
                "rss_before_plan_mb",
                "peak_rss_plan_mb",
                "peak_rss_mb",
                "host_peak_rss_plan_mb",
                "host_peak_rss_mb",
            )
        }
        for kind in KINDS
    }
    result = {"rows": args.rows, "rounds": args.rounds, "summary": summary, "runs": runs}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


def _median_and_spread(values: list[Any]) -> dict[str, Any]:
    found = [v for v in values if v is not None]
    if not found:
        return {"median": None}
    return {"median": statistics.median(found), "min": min(found), "max": max(found)}


if __name__ == "__main__":
    main()
