"""Two jobs, one API key, one quota (issue 22): two `qsync run` processes started together with the same key
against an emulator (its own process) that enforces a texts-per-minute limit over a sliding minute and answers
429 beyond it. Each runner paces itself to the tier's limit; the two share that pace through the file under the
user's cache folder (qsync.engine.pace). Prints JSON per trial: each job's seconds and rate, the total throughput
as a share of the limit (over the whole processes, start-up included; and as the API saw it, from the first
admitted request to the last), and the share of embed calls answered 429. Goals: total >= 0.9 of the limit, 429s
< 2% of calls, neither job starved.

    python benchmarks/shared_quota.py --trials 3 [--limit 3000] [--records 3000] [--unshared]
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

from emulator_process import EmulatorProcess

REPO = Path(__file__).resolve().parents[1]


def trial(limit: int, records: int, latency_s: float, unshared: bool) -> dict[str, Any]:
    lines = (REPO / "data" / "wordnet_sample.jsonl").read_text().splitlines()
    with EmulatorProcess(latency_s=latency_s, texts_per_minute=limit) as emulator, tempfile.TemporaryDirectory() as tmp:
        # --unshared: a pace folder that cannot be made, so each process paces alone (as before the shared file).
        pace = "/proc/qsync-unshared" if unshared else str(Path(tmp) / "pace")
        env = {**os.environ, **emulator.env(), "QSYNC_PACE_DIR": pace}
        env.pop("GOOGLE_API_KEY", None)
        procs, started = [], time.perf_counter()
        for name in ("a", "b"):  # two sources, distinct texts: nothing one job embeds saves the other a call
            src = Path(tmp) / f"{name}.jsonl"
            rows = [json.loads(line) for line in lines[:records]]
            src.write_text("".join(json.dumps({"id": r["id"], "text": f"{name}: {r['text']}"}) + "\n" for r in rows))
            cmd = [sys.executable, "-m", "qsync", "run", "--source", str(src), "--collection", name, "--db",
                   str(Path(tmp) / f"{name}.duckdb"), "--job", name, "--dimensions", "64", "--quiet",
                   "--texts-per-minute", str(limit)]  # fmt: skip
            procs.append((name, subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
        jobs: dict[str, dict[str, Any]] = {}
        while len(jobs) < len(procs):  # each job's own finishing time
            for name, proc in procs:
                if name not in jobs and proc.poll() is not None:
                    err = proc.stderr.read() if proc.stderr else b""
                    jobs[name] = {"exit": proc.returncode, "seconds": round(time.perf_counter() - started, 1),
                                  "stderr": err.decode()[-300:]}  # fmt: skip
            time.sleep(0.1)
        stats = emulator.stats()
    both = min(j["seconds"] for j in jobs.values())  # both ran until the first finished
    total = max(j["seconds"] for j in jobs.values())
    calls = stats["requests"].get("batchEmbedContents", 0)
    for job in jobs.values():
        job["texts_per_minute"] = round(records / job["seconds"] * 60)
    return {
        "jobs": jobs,
        "texts_embedded": stats["texts_embedded"],
        "texts_embedded_twice": stats["texts_embedded_twice"],
        "total_share_of_limit": round(stats["texts_embedded"] / total * 60 / limit, 3),  # whole processes
        # as the API saw it: from the first admitted request to the last (process start-up and exit left out)
        "api_share_of_limit": round(stats["texts_before_last"] / max(1e-9, stats["admitted_span_s"]) * 60 / limit, 3),
        "embed_calls": calls,
        "calls_429": stats["requests"].get("429", 0),
        "share_429": round(stats["requests"].get("429", 0) / max(1, calls), 4),
        "slower_job_vs_faster": round(both / total, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--limit", type=int, default=3000, help="texts per minute the emulator allows")
    parser.add_argument("--records", type=int, default=3000, help="records per job")
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--unshared", action="store_true", help="each process paces alone (the behaviour before)")
    args = parser.parse_args()
    trials = [trial(args.limit, args.records, args.latency, args.unshared) for _ in range(args.trials)]
    shares = [t["total_share_of_limit"] for t in trials]
    api = [t["api_share_of_limit"] for t in trials]
    print(json.dumps({
        "limit_texts_per_minute": args.limit, "records_per_job": args.records, "unshared": args.unshared,
        "total_share_of_limit": {"median": statistics.median(shares), "min": min(shares), "max": max(shares)},
        "api_share_of_limit": {"median": statistics.median(api), "min": min(api), "max": max(api)},
        "share_429_max": max(t["share_429"] for t in trials),
        "trials": trials,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
