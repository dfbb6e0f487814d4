"""Two `qsync run` on one checkpoint file, again and again: does the file survive, and is any text paid twice?

    python benchmarks/ledger_pairs.py --pairs 50 [--rows 20000] [--arm NAME=PYTHON[:PYTHONPATH] ...] [--out DIR]

Issue 25's finding 1, in a loop. Each pair: two jobs into two collections of one `--db`, started together, the
shipped Gemini emulator (its own process) behind both, 60,000 texts a minute. Conditions cycle: different
sources; the same source (both pay for the same texts unless one waits for the other); different sources with
one runner SIGKILLed at a random moment and resumed; different sources with `qsync status` polled five times a
second from a third process. Arms (qsync versions: a Python interpreter, and a folder put first on its path)
alternate pair by pair, so that the machine's load falls on all alike.

After each pair: every table of the file read in full by a fresh process with plain DuckDB (which checks every
block's checksum), and the runners' output searched for DuckDB's corruption messages (a runner may meet a
damaged block that a later checkpoint rewrites). Reported per arm: pairs, pairs with corruption, texts paid
twice (same-source pairs: embedded_texts of both jobs minus the distinct texts), exits other than 0 (and the
SIGKILL). Raw rows go to OUT/pairs.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emulator_process import KEY, EmulatorProcess

CONDITIONS = ("distinct", "same", "distinct+kill", "distinct+poll")
CORRUPTION = ("Corrupt", "Could not read enough bytes", "INTERNAL Error", "FATAL Error", "Failed to scan")
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "embedding",
    "vector",
    "search",
    "qdrant",
    "duckdb",
    "checkpoint",
    "batch",
    "record",
    "token",
    "model",
    "gemini",
    "index",
    "shard",
    "collection",
    "payload",
    "text",
    "sentence",
    "random",
    "word",
    "river",
    "mountain",
    "city",
    "forest",
    "ocean",
    "light",
    "music",
    "story",
    "data",
]

# Reads every table of the file in full, in a process of its own (plain DuckDB: no qsync involved).
_CHECK = """
import sys, time, duckdb
for wait in range(300):  # a qsync process may still hold the file a moment (the ledger host lingers 2 s)
    try:
        con = duckdb.connect(sys.argv[1], read_only=True)
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        break
    except Exception as exc:
        if "lock" in str(exc) and wait < 299:
            time.sleep(0.1)
            continue
        print(f"cannot open: {exc}"); sys.exit(1)
bad = []
for table in tables:
    try:
        con.execute(f'SELECT count(*), sum(length(CAST(COLUMNS(*) AS VARCHAR))) FROM "{table}"').fetchall()
    except Exception as exc:
        bad.append(f"{table}: {str(exc).splitlines()[0][:200]}")
print("; ".join(bad) or "ok")
sys.exit(1 if bad else 0)
"""


def make_source(path: Path, rows: int, seed: int, prefix: str) -> None:
    rng = random.Random(seed)
    texts = [f"{prefix} {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 50))) for i in range(rows)]
    pd.DataFrame({"id": [f"{prefix}-{i}" for i in range(rows)], "text": texts}).to_parquet(path)


def arm_env(arm: tuple[str, str, str], emulator_url: str) -> dict[str, str]:
    _, _, path = arm
    env = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_API_KEY", "QDRANT_URL", "QSYNC_DB")}
    env.update(GEMINI_API_KEY=KEY, GOOGLE_GEMINI_BASE_URL=emulator_url)
    if path:
        env["PYTHONPATH"] = path
    return env


def run_pair(arm: tuple[str, str, str], condition: str, sources: dict[str, Path], rows: int, work: Path,
             rng: random.Random, url: str) -> dict[str, Any]:  # fmt: skip
    name, python, _ = arm
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)  # also every process's working directory: `python -m` puts it first on the path
    db = work / "q.duckdb"
    env = arm_env(arm, url)
    src = [sources["a"], sources["a" if condition == "same" else "b"]]
    jobs = ["j1", "j2"]

    def qsync(*args: str) -> list[str]:
        return [python, "-m", "qsync", *args]

    def run(i: int, *extra: str) -> subprocess.Popen[bytes]:
        args = qsync("run", "--source", str(src[i]), "--collection", f"c{i + 1}", "--db", str(db), "--job", jobs[i],
                     "--embedder", "gemini", "--texts-per-minute", "60000", "--quiet", *extra)  # fmt: skip
        with (work / f"r{i}.out").open("ab") as out:
            return subprocess.Popen(args, env=env, cwd=work, stdout=out, stderr=subprocess.STDOUT)

    started = time.monotonic()
    procs = [run(0), run(1)]
    poller = None
    if condition == "distinct+poll":
        loop = f"while [ ! -f {work}/stop ]; do {' '.join(qsync('status', '--db', str(db), '--json'))} >/dev/null 2>>{work}/poll.out; sleep 0.2; done"
        poller = subprocess.Popen(["bash", "-c", loop], env=env, cwd=work)
    codes: dict[str, int] = {}
    killed = None
    if condition == "distinct+kill":
        victim = rng.randrange(2)
        deadline = time.monotonic() + rng.uniform(5, 30)
        while time.monotonic() < deadline and procs[victim].poll() is None:
            time.sleep(0.05)
        if procs[victim].poll() is None:
            procs[victim].send_signal(signal.SIGKILL)
            codes[f"r{victim}"] = procs[victim].wait()
            killed = victim
            time.sleep(rng.uniform(0.2, 2))
            with (work / f"r{victim}.out").open("ab") as out:
                procs[victim] = subprocess.Popen(qsync("resume", jobs[victim], "--db", str(db), "--texts-per-minute", "60000", "--quiet"), env=env,
                                                 cwd=work, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    for i, proc in enumerate(procs):
        codes[f"{'resume' if killed == i else 'r'}{i}"] = proc.wait()
    if poller is not None:
        (work / "stop").touch()
        poller.wait()
    elapsed = time.monotonic() - started
    check = subprocess.run(
        [python, "-c", _CHECK, str(db)], env=env, cwd=work, capture_output=True, text=True, check=False
    )
    outputs = "".join(p.read_text(errors="replace") for p in work.glob("*.out"))
    seen = sorted({marker for marker in CORRUPTION if marker in outputs})
    row: dict[str, Any] = {
        "arm": name, "condition": condition, "rows": rows, "killed": killed, "codes": codes,
        "elapsed_s": round(elapsed, 1), "file": check.stdout.strip()[:600], "file_ok": check.returncode == 0,
        "seen_in_output": seen, "corrupt": check.returncode != 0 or bool(seen),
        "unknown_failure": "last error: unknown" in outputs,
    }  # fmt: skip
    if condition == "same" and check.returncode == 0:
        embedded = 0
        for job in jobs:
            out = subprocess.run(
                qsync("status", job, "--db", str(db), "--json"),
                env=env,
                cwd=work,
                capture_output=True,
                text=True,
                check=True,
            )
            embedded += int(json.loads(out.stdout)["embedded_texts"])
        row["paid_twice"] = embedded - rows
    if not row["corrupt"] and all(c in (0, -signal.SIGKILL) for c in codes.values()):
        shutil.rmtree(work)  # keep only what went wrong
    return row


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        twice = [r["paid_twice"] for r in mine if "paid_twice" in r]
        out[arm] = {
            "pairs": len(mine),
            "corrupted": sum(r["corrupt"] for r in mine),
            "file_left_corrupt": sum(not r["file_ok"] for r in mine),
            "exits_not_0": sum(any(c not in (0, -signal.SIGKILL) for c in r["codes"].values()) for r in mine),
            "failed_with_unknown_error": sum(r["unknown_failure"] for r in mine),
            "paid_twice_same_source": twice,
            "paid_twice_median": statistics.median(twice) if twice else None,
            "median_pair_s": statistics.median(r["elapsed_s"] for r in mine),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=50, help="pairs per arm")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--arm", action="append", default=[], help="NAME=PYTHON[:PYTHONPATH] (default: this qsync)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    arms = []
    for spec in args.arm or [f"now={sys.executable}"]:
        name, _, rest = spec.partition("=")
        python, _, path = rest.partition(":")
        arms.append((name, python, path))
        where = subprocess.run([python, "-c", "import qsync; print(qsync.__file__)"], env=arm_env(arms[-1], ""),
                               cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True)  # fmt: skip
        print(f"arm {name}: {where.stdout.strip()}", file=sys.stderr)
    out = args.out or Path(tempfile.mkdtemp(prefix="qsync-pairs-"))
    out.mkdir(parents=True, exist_ok=True)
    sources = {"a": out / f"a{args.rows}.parquet", "b": out / f"b{args.rows}.parquet"}
    make_source(sources["a"], args.rows, 1, "alpha")
    make_source(sources["b"], args.rows, 2, "beta")
    rng = random.Random(args.seed)
    rows: list[dict[str, Any]] = []
    with EmulatorProcess() as emulator:
        for n in range(args.pairs):
            for arm in arms:  # alternating
                condition = CONDITIONS[n % len(CONDITIONS)]
                row = run_pair(arm, condition, sources, args.rows, out / f"{arm[0]}-{n}", rng, emulator.url)
                row["pair"] = n
                rows.append(row)
                with (out / "pairs.jsonl").open("a") as log:
                    log.write(json.dumps(row) + "\n")
                print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps(summary(rows), indent=2))


if __name__ == "__main__":
    main()
