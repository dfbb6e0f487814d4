"""How close an enrichment job spends to its cap (issue 22): a `gemini-2.5-flash-lite` enrichment job with a
$0.002 cap, run and then resumed five times, each a whole `qsync` process against the emulator in its own
process. Prints JSON: per trial, each run's exit code and the job's spend (confirmed + unconfirmed) as a share of
the cap; then the median and spread of the final share. Goal: >= 0.90, never above 1.0.

    python benchmarks/enrich_cap.py --trials 3 [--max-output-tokens 256] [--records 2000]
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
from typing import Any

from emulator_process import EmulatorProcess

REPO = Path(__file__).resolve().parents[1]


def qsync(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qsync", *args], env=env, capture_output=True, text=True, check=False)


def trial(records: int, cap: float, max_output_tokens: int, resumes: int) -> dict[str, Any]:
    with EmulatorProcess(latency_s=0.05) as emulator, tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, **emulator.env()}
        env.pop("GOOGLE_API_KEY", None)
        src, db = Path(tmp) / "w.jsonl", Path(tmp) / "q.duckdb"
        lines = (REPO / "data" / "wordnet_sample.jsonl").read_text().splitlines()[:records]
        src.write_text("\n".join(lines) + "\n")
        first = ["run", "--source", str(src), "--collection", "c", "--db", str(db), "--job", "e", "--dimensions",
                 "64", "--enrich-prompt", "Summarise in one sentence: {text}", "--enrich-max-output-tokens",
                 str(max_output_tokens), "--max-cost-usd", str(cap), "--quiet"]  # fmt: skip
        runs = []
        for n in range(1 + resumes):
            out = qsync(*(first if n == 0 else ["resume", "e", "--db", str(db)]), env=env)
            status = json.loads(qsync("status", "e", "--db", str(db), "--json", env=env).stdout)
            spent = float(status["cost_usd"]) + float(status["unconfirmed_cost_usd"])
            runs.append({"exit": out.returncode, "spent_usd": spent, "share_of_cap": round(spent / cap, 4),
                         "processed_records": status["processed_records"]})  # fmt: skip
        return {"runs": runs, "emulator_tokens": emulator.stats()["tokens_metered"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--cap", type=float, default=0.002)
    parser.add_argument("--max-output-tokens", type=int, default=256)
    parser.add_argument("--resumes", type=int, default=5)
    args = parser.parse_args()
    trials = [trial(args.records, args.cap, args.max_output_tokens, args.resumes) for _ in range(args.trials)]
    finals = [t["runs"][-1]["share_of_cap"] for t in trials]
    print(json.dumps({
        "cap_usd": args.cap, "records": args.records, "max_output_tokens": args.max_output_tokens,
        "final_share_of_cap": {"median": statistics.median(finals), "min": min(finals), "max": max(finals)},
        "trials": trials,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
