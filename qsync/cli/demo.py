"""`qsync demo`: the failure qsync exists for, acted out offline.

A real `qsync run` process loads the WordNet sample into Qdrant Edge (in-process); the demo SIGKILLs it part-way
(no flag, no clean shutdown), shows the job as stale, resumes it, and reports what the resume did not
redo and what it did not pay for again.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from qsync.app import jobs, reading
from qsync.cli.progress import ProgressBar
from qsync.errors import QsyncError
from qsync.formatting import score
from qsync.sink.factory import open_sink
from qsync.spec.defaults import default_qdrant_path
from qsync.spec.target import SinkSpec

SAMPLE = "wordnet_sample.jsonl"
JOB = "demo"
COLLECTION = "wordnet"
# The hashing embedder is instant; a little latency per call stands in for Gemini so the kill lands
# mid-run and the progress bar has something to show.
LATENCY_S = 0.05
GEMINI_PRICE_PER_M = 0.15


def find_sample(explicit: str | None) -> Path:
    candidates = (
        [Path(explicit)]
        if explicit
        else [
            Path.cwd() / "data" / SAMPLE,
            Path(__file__).resolve().parents[2] / "data" / SAMPLE,
        ]
    )
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    raise QsyncError(f"cannot find the demo data ({SAMPLE}); run from the qsync checkout or pass --source")


def run_demo(directory: str, source: str | None, kill_at: float) -> int:
    sample = find_sample(source)
    workdir = Path(directory).resolve()
    if workdir.exists():
        if not (workdir / "qsync.duckdb").exists() and any(workdir.iterdir()):
            raise QsyncError(f"{workdir} exists and is not a qsync demo folder; pass another --dir")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    db = workdir / "qsync.duckdb"
    log_path = workdir / "killed-run.log"
    print(f"qsync demo: {sample.name} -> Qdrant collection '{COLLECTION}' (Qdrant Edge, {workdir / 'qsync.qdrant'})")
    print(f"1. starting `qsync run` as a separate process; it will be killed with SIGKILL at ~{kill_at:.0%}")
    command = [
        sys.executable, "-m", "qsync", "run", "--source", str(sample), "--collection", COLLECTION,
        "--payload-columns", "lemmas,pos", "--db", str(db), "--job", JOB, "--concurrency", "2",
        "--simulate-latency", str(LATENCY_S), "--quiet", "--embedder", "hash",  # offline even with a key set
    ]  # fmt: skip
    with log_path.open("w") as log:
        worker = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    killed_at = _kill_part_way(worker, db, kill_at)
    if killed_at is None:
        print("   the run finished before the kill point; nothing to resume (try a larger --kill-at)")
        return 0
    before = reading.status(JOB, db=db)
    print(f"2. killed pid {worker.pid} with SIGKILL after {killed_at:,} records were checkpointed")
    print(
        f"   `qsync status` now says: status={before['status']!r}, processed {before['processed_records']:,} "
        f"of {before['total_records']:,}, {before['embedded_texts']:,} texts embedded and paid for so far"
    )
    print("3. resuming in this process:")
    result = jobs.run_job(JOB, db=db, concurrency=2, listeners=[ProgressBar()])
    after = reading.status(JOB, db=db)
    resumed_embedded = after["embedded_texts"] - before["embedded_texts"]
    restart_cost = after["total_records"] - after["skipped_records"]
    print(
        f"4. {JOB}: {result.status}; {after['loaded_records']:,} records in Qdrant, {after['skipped_records']} skipped"
    )
    print(
        f"   the resume skipped {before['processed_records']:,} records already done "
        f"({before['batches_done']} of {before['batches_total']} batches)"
    )
    print(
        f"   it embedded {resumed_embedded:,} texts; {after['cache_hits']:,} vectors came from the cache "
        f"(paid for before the kill, not yet in Qdrant)"
    )
    wasted = after["embedded_texts"] - restart_cost
    print(f"   texts embedded twice because of the kill: {wasted} (only those in flight at the kill)")
    saved = before["embedded_texts"]
    tokens_saved = before["tokens"]
    print(
        f"   a restart from record 0 would have paid again for {saved:,} texts "
        f"(~{tokens_saved:,} tokens, ${tokens_saved * GEMINI_PRICE_PER_M / 1e6:.4f} at Gemini's price)"
    )
    _show_search(reading.status(JOB, db=db)["collection"], db)
    qsync = _command()
    print(f"Try: {qsync} status {JOB} --db {db}   |   {qsync} batches {JOB} --db {db}")
    return 0 if result.ok else 1


def _command() -> str:
    """How to call qsync from this shell: `qsync` when it is on PATH, else this interpreter's own (the README's
    `.venv/bin/qsync demo` runs before any venv is activated, and a bare `qsync` was "command not found")."""
    mine = Path(sys.executable).parent / "qsync"
    found = shutil.which("qsync")
    if not mine.exists() or (found and Path(found).resolve() == mine.resolve()):
        return "qsync"
    return os.path.relpath(mine) if mine.is_relative_to(Path.cwd()) else str(mine)


def _kill_part_way(worker: subprocess.Popen[bytes], db: Path, kill_at: float) -> int | None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            return None
        try:
            info = reading.status(JOB, db=db)
        except QsyncError:
            time.sleep(0.1)  # not planned yet
            continue
        total = info["total_records"]
        if total and info["processed_records"] >= kill_at * total:
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait()
            return int(reading.status(JOB, db=db)["processed_records"])
        time.sleep(0.05)
    worker.kill()
    raise QsyncError("the demo run made no progress in 120 s; see killed-run.log in the demo folder")


def _show_search(collection: str, db: Path) -> None:
    from qsync.embedders.hashing import HashingEmbedder

    query = "a domesticated animal kept as a pet"
    vector = HashingEmbedder().embed([query]).vectors[0]
    sink = open_sink(SinkSpec(path=str(default_qdrant_path(db))), collection, len(vector))
    try:
        hits = sink.query(vector, limit=3)
    finally:
        sink.close()
    print(f"5. search {query!r} (hashing embedder: shared words, not meaning):")
    for hit in hits:
        print(f"   {score(hit.score)}  {hit.payload.get('id')}  {hit.payload.get('lemmas')}")
