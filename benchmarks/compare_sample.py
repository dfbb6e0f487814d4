"""What choosing the model and size costs a user, whole processes as they meet them (issue 23):

1. `qsync compare --dry-run`: the sample's cost, said before anything is paid;
2. `qsync compare`: the sample embedded once per model at full size, and the table;
3. `qsync compare` again: the same sample, found in the cache;
4. `qsync run --dimensions 768`: the backfill that follows, its sample's texts cut from the full-size cache.

Against the emulator in a process of its own ("words" vectors, usage metadata as Google's batchEmbedContents sends
none: --no-usage-metadata), at the default tier-1 limits qsync paces itself to.

    python benchmarks/compare_sample.py --rounds 3 --sample 300

Prints a JSON line per round and one with the medians and ranges.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from emulator_process import KEY

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "data" / "wordnet_sample.jsonl"


def _qsync(env: dict[str, str], *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "qsync", *args], env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, out.stdout


def _round(sample: int) -> dict[str, object]:
    emulator = subprocess.Popen(
        [sys.executable, "-m", "qsync.testing", "--port", "0", "--api-key", KEY, "--vectors", "words",
         "--no-usage-metadata"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = emulator.stdout.readline() if emulator.stdout else ""
        url = line.split()[0].split("=", 1)[1]
        env = {**os.environ, "GOOGLE_GEMINI_BASE_URL": url, "GEMINI_API_KEY": KEY}
        with tempfile.TemporaryDirectory() as tmp:
            db = str(Path(tmp) / "q.duckdb")
            common = ["--source", str(SOURCE), "--db", db, "--sample", str(sample)]
            dry_s, dry = _qsync(env, "compare", *common, "--dry-run")
            first_s, first = _qsync(env, "compare", *common, "--json")
            again_s, _ = _qsync(env, "compare", *common, "--json")
            run_s, _ = _qsync(env, "run", "--source", str(SOURCE), "--collection", "w", "--dimensions", "768",
                              "--db", db, "--quiet")  # fmt: skip
            _, cost = _qsync(env, "cost", "w:wordnet_sample", "--db", db, "--json")
            _, jobs = _qsync(env, "jobs", "--db", db, "--json")
        spent = sum(j["cost_usd"] for j in json.loads(jobs) if j["job"].startswith("compare:"))
        run_cost = json.loads(cost)
        rows = json.loads(first)
        kept = {f"{r['model']}@{r['dimensions']}": round(r["neighbours_kept"], 3) for r in rows}
        return {
            "dry_run_s": round(dry_s, 2), "compare_s": round(first_s, 2), "compare_again_s": round(again_s, 2),
            "run_768_s": round(run_s, 2), "sample_cost_said": dry.split(": ", 1)[1].split(" (")[0],
            "sample_spent_usd": round(spent, 6), "run_cache_hits": run_cost["cache_hits"],
            "run_texts_embedded": run_cost["texts_embedded"], "neighbours_kept": kept,
        }  # fmt: skip
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sample", type=int, default=300)
    args = parser.parse_args()
    rounds = []
    for _ in range(args.rounds):
        rounds.append(_round(args.sample))
        print(json.dumps(rounds[-1]), flush=True)
    summary = {}
    for key in ("dry_run_s", "compare_s", "compare_again_s", "run_768_s"):
        values = [float(r[key]) for r in rounds]  # type: ignore[arg-type]
        summary[key] = {"median": statistics.median(values), "range": [min(values), max(values)]}
    summary["load"] = os.getloadavg()[0]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
