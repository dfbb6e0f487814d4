"""Two million records, whole `qsync run` processes: throughput over the run, memory, time to the first batch, and a
re-sync of 1% changed + 1% new records.

    python benchmarks/two_million.py data --rows 2000000 --data /tmp/2m              # records.parquet, once
    python benchmarks/two_million.py full --data /tmp/2m --work /tmp/2m/a [--on-disk] [--root R] [--out F]
    python benchmarks/two_million.py first-batch --data /tmp/2m --rounds 3 --roots R1,R2 [--out F]
    python benchmarks/two_million.py resync --data /tmp/2m --works W1,W2 --roots R1,R2 --rounds 3 [--extras "A;B"] [--out F]

Hashing embedder, 128 dimensions, Qdrant Edge in the work folder, default settings. `--root` (`--roots`, one per
version, alternating) is a checkout of qsync to run (its .venv's python), so that a worktree of main can be measured beside
the change with the same data. Every figure is a whole process, start-up and exit included.

- full: a new job over all records. From the ledger afterwards (batches.started_at / finished_at, UTC): records/s in
  each fifth of the run, the time from the process's start to the first batch's start and end; sampled every second
  from /proc: the RSS of the runner, of its Qdrant Edge host (sink/edge_host.py, the shard's memory maps) and of the
  checkpoint file's host (ledger/host.py, DuckDB).
- first-batch: a new job in a fresh folder, stopped (SIGINT: a clean pause) once its first batch is done: the time
  from the process's start to the first batch, and the phases before it, from the ledger's timestamps.
- resync: on a folder a `full` run completed, round k rewrites the source with 1% of its texts changed and 1% new
  records (20,000 + 20,000 at 2M) and runs the same command: a re-sync job NAME#n; its whole time and phases.

Phases (ledger timestamps against the process's start): `to_plan` (start-up: imports, the source guessed, the
ledger host) → `plan_to_lease` (planning, the recorded estimate, the collection checked, the runner built, the
integrity check, the lease) → `lease_to_batch` (the collection opened and ensured, the first claim) → batches → exit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

JOB = "bench"


def make_data(folder: Path, rows: int, changed_round: int = 0) -> None:
    """records.parquet: id (int64), text (~45 bytes, distinct). Round k > 0 is a source after k re-syncs: rows/100 new
    ids per round after the first `rows`, and the texts of ids < rows with id % 100 < k changed; so going from round
    k-1 to round k changes 1% of the texts and adds 1% new records."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    total = rows + (rows // 100) * changed_round
    ids = pa.array(range(total), pa.int64())
    text = pc.binary_join_element_wise("record ", pc.cast(ids, pa.string()), " of the benchmark: a few words", "")
    if changed_round:
        at = np.arange(total)
        changed = pa.array((at < rows) & (at % 100 < changed_round))
        text = pc.if_else(changed, pc.binary_join_element_wise(text, " (changed)", ""), text)
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "text": text}), folder / "tmp.parquet")
    (folder / "tmp.parquet").replace(folder / "records.parquet")
    (folder / "round").write_text(str(changed_round))


def command(data: Path, work: Path, on_disk: bool, root: str | None, extra: str = "") -> list[str]:
    python = str(Path(root).resolve() / ".venv" / "bin" / "python") if root else sys.executable
    args = [python, "-m", "qsync", "run", "--source", str(data / "records.parquet"), "--collection", "c",
            "--job", JOB, "--db", str(work / "q.duckdb"), "--qdrant-path", str(work / "qdrant"), "--embedder", "hash",
            "--dimensions", "128", "--quiet"]  # fmt: skip
    return args + (["--on-disk"] if on_disk else []) + extra.split()


def _rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    """Resident memory; RssAnon: the process's own (heap), RssFile: pages of mapped files (Edge's mmaps)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _edge_host(runner: int) -> int | None:
    """The runner's child holding the Qdrant Edge shard (sink/shards.py starts it)."""
    try:
        children = Path(f"/proc/{runner}/task/{runner}/children").read_text().split()
        for pid in children:
            if b"qsync.sink.edge_host" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return int(pid)
    except OSError:
        pass
    return None


def _pids(marker: str, work: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in args and str(work) in args:
                found.append(int(entry.name))
    return found


class Sampler(threading.Thread):
    """RSS of the runner, its Edge host and the ledger host, once a second."""

    def __init__(self, pid: int, work: Path) -> None:
        super().__init__(daemon=True)
        self.pid, self.work, self.samples, self.done = pid, work, [], threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.done.wait(1.0):
            edge = _edge_host(self.pid)
            host = _pids("qsync.ledger.host", self.work)
            self.samples.append({"t": round(time.monotonic() - started, 1), "runner_mb": _rss_mb(self.pid),
                                 "edge_host_mb": _rss_mb(edge) if edge else None,
                                 "edge_host_anon_mb": _rss_mb(edge, "RssAnon") if edge else None,
                                 "edge_host_file_mb": _rss_mb(edge, "RssFile") if edge else None,
                                 "ledger_host_mb": _rss_mb(host[0]) if host else None})  # fmt: skip


def ledger_times(work: Path, job: str) -> dict[str, Any]:
    """The job's and its batches' timestamps, read once the file's host has let it go."""
    import duckdb

    for _ in range(100):
        try:
            con = duckdb.connect(str(work / "q.duckdb"), read_only=True)
            break
        except duckdb.Error:
            time.sleep(0.2)
    else:
        raise RuntimeError("the checkpoint file stayed locked")
    try:
        created, started, finished, status = con.execute(
            "SELECT created_at, started_at, finished_at, status FROM jobs WHERE job_id = ?", [job]
        ).fetchone()  # type: ignore[misc]
        batches = con.execute(
            "SELECT started_at, finished_at, records FROM batches WHERE job_id = ? AND status = 'done' "
            "ORDER BY finished_at", [job]
        ).fetchall()  # fmt: skip
        newest = con.execute("SELECT job_id FROM jobs ORDER BY created_at DESC LIMIT 1").fetchone()
    finally:
        con.close()
    return {"created": created, "started": started, "finished": finished, "status": status, "batches": batches,
            "newest_job": newest[0] if newest else None}  # fmt: skip


def _s(later: datetime | None, earlier: datetime | None) -> float | None:
    return None if later is None or earlier is None else round((later - earlier).total_seconds(), 2)


def phases(t0: datetime, times: dict[str, Any], exit_at: datetime) -> dict[str, Any]:
    batches = times["batches"]
    first_start = min((b[0] for b in batches if b[0]), default=None)
    first_done = batches[0][1] if batches else None
    last_done = batches[-1][1] if batches else None
    return {"status": times["status"], "to_plan_s": _s(times["created"], t0),
            "plan_to_lease_s": _s(times["started"], times["created"]),
            "lease_to_first_batch_s": _s(first_start, times["started"]),
            "to_first_batch_start_s": _s(first_start, t0), "to_first_batch_done_s": _s(first_done, t0),
            "batches_s": _s(last_done, first_start), "after_last_batch_s": _s(exit_at, last_done),
            "records_run": sum(b[2] for b in batches)}  # fmt: skip


def fifths(times: dict[str, Any]) -> list[float]:
    """Records/s over each fifth of the batches, by their finish times."""
    batches = times["batches"]
    if len(batches) < 100:
        return []
    start = min(b[0] for b in batches)
    edges = [start] + [batches[len(batches) * k // 5 - 1][1] for k in range(1, 6)]
    rates = []
    for k in range(5):
        part = batches[len(batches) * k // 5 : len(batches) * (k + 1) // 5]
        rates.append(round(sum(b[2] for b in part) / max(1e-9, (edges[k + 1] - edges[k]).total_seconds())))
    return rates


def one_process(cmd: list[str], env: dict[str, str], work: Path, stop_after_first: bool = False) -> dict[str, Any]:
    trace = work / f"trace-{time.time():.0f}.tsv"
    if env.get("PYTHONPATH", "").endswith("trace_host"):
        env = {**env, "QSYNC_TRACE_HOST": str(trace)}
    t0 = datetime.now(timezone.utc).replace(tzinfo=None)
    wall = time.perf_counter()
    # cwd: not a source tree (`python -m` puts the cwd before PYTHONPATH on sys.path: run from the repository, every
    # --root would run the repository's qsync)
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=work)
    sampler = Sampler(child.pid, work)
    sampler.start()
    if stop_after_first:
        import qsync

        while child.poll() is None:
            time.sleep(0.25)
            try:
                if qsync.status(JOB, db=work / "q.duckdb")["processed_records"] > 0:
                    child.send_signal(signal.SIGINT)
                    break
            except Exception:  # not planned yet
                continue
    _, err = child.communicate()
    elapsed = time.perf_counter() - wall
    exit_at = datetime.now(timezone.utc).replace(tzinfo=None)
    sampler.done.set()
    sampler.join()
    if child.returncode not in (0, 3, 130) and not stop_after_first:
        raise RuntimeError(f"qsync run failed ({child.returncode}):\n{err[-3000:]}")
    newest = ledger_times(work, JOB)["newest_job"]
    times = ledger_times(work, newest)
    samples = sampler.samples
    slowest = _slowest(trace, t0, times) if trace.exists() else []
    return {"slowest_statements_before_first_batch": slowest,"job": newest, "process_s": round(elapsed, 2), "exit_code": child.returncode, **phases(t0, times, exit_at),
            "fifths_records_per_s": fifths(times), "load": round(os.getloadavg()[0], 2),
            "rss_runner_mb": _spread([s["runner_mb"] for s in samples]),
            "rss_edge_host_mb": _spread([s["edge_host_mb"] for s in samples]),
            "rss_edge_host_anon_mb": _spread([s["edge_host_anon_mb"] for s in samples]),
            "rss_edge_host_file_mb": _spread([s["edge_host_file_mb"] for s in samples]),
            "rss_ledger_host_mb": _spread([s["ledger_host_mb"] for s in samples]),
            "rss_samples": samples if len(samples) < 4000 else samples[::10]}  # fmt: skip


def _slowest(trace: Path, t0: datetime, times: dict[str, Any], count: int = 16) -> list[str]:
    """The host's slowest statements between the process's start and its first batch: 'ended at s, took s, SQL'."""
    start = t0.replace(tzinfo=timezone.utc).timestamp()
    first = min((b[0] for b in times["batches"] if b[0]), default=None)
    until = first.replace(tzinfo=timezone.utc).timestamp() if first else float("inf")
    rows = []
    for line in trace.read_text().splitlines():
        ended, took, sql = line.split("\t", 2)
        if start <= float(ended) <= until:
            rows.append((float(took), float(ended) - start, sql))
    total = sum(r[0] for r in rows)
    top = sorted(rows, reverse=True)[:count]
    return [f"all {len(rows)} statements: {total:.2f} s"] + [
        f"{at:.2f} {took:.2f} {sql[:110]}" for took, at, sql in top
    ]


def _spread(values: list[Any]) -> dict[str, Any]:
    found = [v for v in values if v is not None]
    if not found:
        return {}
    tenth = max(1, len(found) // 10)
    return {"first_tenth_median": statistics.median(found[:tenth]), "last_tenth_median": statistics.median(found[-tenth:]),
            "max": max(found), "median": statistics.median(found)}  # fmt: skip


def _summary(runs: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for variant in sorted({r["variant"] for r in runs}):
        mine = [r for r in runs if r["variant"] == variant]
        out[variant] = {k: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                     for k in keys if (v := [r[k] for r in mine if r.get(k) is not None])}  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("data", "full", "first-batch", "resync"))
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--works", default="")
    parser.add_argument("--root")
    parser.add_argument("--roots", default="")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--on-disk", action="store_true")
    parser.add_argument("--extras", default="",
                        help="more options of `qsync run`, one set per root, separated by ';' (e.g. --roots .,. "
                        "--extras ';--concurrency 8': the same tree with and without)")  # fmt: skip
    parser.add_argument("--out", type=Path)
    parser.add_argument("--trace", action="store_true",
                        help="log every statement the checkpoint file's host runs (benchmarks/trace_host), and report "
                        "the slowest before the first batch")  # fmt: skip
    args = parser.parse_args()
    # Started in the background by a shell (`cmd &`), this process and its children would ignore SIGINT, and
    # first-batch's clean pause (SIGINT) would never land: the children run with Python's own handler again.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.trace:
        os.environ["PYTHONPATH"] = str(Path(__file__).resolve().parent / "trace_host")
    if args.mode == "data":
        make_data(args.data, args.rows)
        return
    result: dict[str, Any]
    if args.mode == "full":
        assert args.work is not None
        args.work.mkdir(parents=True, exist_ok=False)
        make_data(args.work / "source", args.rows)  # the work folder's own copy: re-syncs rewrite it
        run = one_process(
            command(args.work / "source", args.work, args.on_disk, args.root), dict(os.environ), args.work
        )
        result = {"mode": "full", "root": args.root, "on_disk": args.on_disk, **run}
    else:
        roots = args.roots.split(",")
        extras = args.extras.split(";") if args.extras else [""] * len(roots)
        assert len(extras) == len(roots), "--extras: one set of options per root"
        runs = []
        for round_no in range(args.rounds):
            for index, root in enumerate(roots):  # alternating: the machine's noise falls on each version alike
                if args.mode == "first-batch":
                    work = args.data / f"first-{index}-{round_no}"
                    work.mkdir()
                    run = one_process(
                        command(args.data, work, args.on_disk, root, extras[index]), dict(os.environ), work, True
                    )
                    for trace in work.glob("trace-*.tsv"):  # kept: the folder goes
                        trace.replace(args.data / f"{trace.stem}-{index}-{round_no}.tsv")
                    subprocess.run(["rm", "-rf", str(work)], check=True)
                else:
                    work = Path(args.works.split(",")[index])
                    source = work / "source"
                    make_data(source, args.rows, int((source / "round").read_text()) + 1)
                    run = one_process(command(source, work, args.on_disk, root, extras[index]), dict(os.environ), work)
                run.update(root=root, extra=extras[index], variant=f"{root} {extras[index]}".strip(), round=round_no)
                run.pop("rss_samples")
                runs.append(run)
                print(json.dumps(run), file=sys.stderr)
        keys = ["process_s", "to_plan_s", "plan_to_lease_s", "lease_to_first_batch_s", "to_first_batch_start_s",
                "to_first_batch_done_s", "batches_s", "after_last_batch_s"]  # fmt: skip
        result = {"mode": args.mode, "rows": args.rows, "summary": _summary(runs, keys), "runs": runs}
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
