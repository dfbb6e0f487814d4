"""Gemini throughput against the local emulator (no network, no key, no cost).

    python benchmarks/gemini_throughput.py ceiling [--minutes 3.3]
    python benchmarks/gemini_throughput.py loop [--records 3000]
    python benchmarks/gemini_throughput.py overhead [--records 10000] [--concurrency 4] [--latency 0]

ceiling: the emulator answers in 300 ms and enforces 3,000 texts/min and 1M tokens/min over a sliding
    minute, answering 429 RESOURCE_EXHAUSTED (with RetryInfo) beyond that. qsync runs with its defaults
    (the same limits, concurrency 4). Reported: texts per minute sustained over the whole run as a share
    of the limit, and the share of embed calls answered 429.
overhead: as loop, but the emulator answers at once (or after --latency seconds) and both write to
    in-memory Qdrant: the cost of qsync's checkpoints, exposed.
loop: the emulator answers in 300 ms with no limits. A plain sequential loop (the design qsync replaces:
    embed a batch with the same SDK call, upsert it with wait=True, next batch) against qsync on the same
    records, both into local-mode Qdrant on disk. Reported: records/s of each.

For loop and overhead the emulator runs in its own process, as the API runs on another machine: in
this one it would take the benchmark's GIL, and slow most the client that overlaps most.

    python benchmarks/gemini_throughput.py whole --records 8000 --latency 0 --rounds 3 [--concurrency 4]
        [--tree now=. --tree before=/path/to/another/worktree] [--out benchmarks/results/speed/x.jsonl]

    python benchmarks/gemini_throughput.py summary --out benchmarks/results/speed/x.jsonl

whole: both sides as a user meets them, each a whole process timed from its start to its exit: the plain loop
    (plain_loop.py, which imports nothing of qsync: reading the records file, embedding batch after batch,
    upserting into a Qdrant Edge shard) and `qsync run` on the same file (planning, the run, the exit; default settings except the rate
    limits, which the loop does not have either; --concurrency omitted: qsync's default). The emulator answers
    as Google's batchEmbedContents does, without usageMetadata. Each --tree is a qsync source tree run with this
    Python (PYTHONPATH), alternating with the loop in every round. One JSON line per process. An untimed round
    first has the emulator keep every text's answer, so that its JSON encoding (~25 ms of CPU a call of 100) does
    not compete with the tools for the machine's cores while timed (Google's servers cost the client no CPU);
    --cold leaves it out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from emulator_process import KEY, EmulatorProcess
from plain_loop import plain_loop

import qsync
from qsync.app.jobs import create_job
from qsync.spec.settings import RunSettings
from qsync.testing.emulator import GeminiEmulator

REPO = Path(__file__).resolve().parents[1]


def records(n: int) -> pd.DataFrame:
    base = pd.read_json(REPO / "data" / "wordnet_sample.jsonl", lines=True)
    texts = base["text"].tolist()
    return pd.DataFrame(
        {"id": [f"r{i}" for i in range(n)], "text": [f"{texts[i % len(texts)]} [{i}]" for i in range(n)]}
    )


def _environment(emulator: GeminiEmulator) -> None:
    os.environ["GOOGLE_GEMINI_BASE_URL"] = emulator.url
    os.environ["GEMINI_API_KEY"] = KEY


def ceiling(minutes: float) -> dict[str, Any]:
    texts_limit, tokens_limit = 3000, 1_000_000
    n = int(texts_limit * minutes)
    emulator = GeminiEmulator(api_key=KEY, latency_s=0.3, texts_per_minute=texts_limit,
                              tokens_per_minute=tokens_limit).start()  # fmt: skip
    _environment(emulator)
    work = Path(tempfile.mkdtemp(prefix="qsync-ceiling-"))
    create_job(records(n), collection="c", job="ceiling", db=work / "q.duckdb", qdrant_path=":memory:",
                     embedder="gemini", dimensions=768)  # fmt: skip
    started = time.perf_counter()
    result = qsync.resume("ceiling", db=work / "q.duckdb", concurrency=4)
    elapsed = time.perf_counter() - started
    emulator.stop()
    calls = emulator.requests["batchEmbedContents"]
    embedded = sum(emulator.texts_embedded.values())
    return {
        "status": result.status,
        "texts": n,
        "elapsed_s": round(elapsed, 1),
        "texts_per_minute": round(embedded / elapsed * 60),
        "share_of_limit": round(embedded / elapsed * 60 / texts_limit, 3),
        "tokens_per_minute": round(emulator.tokens_metered / elapsed * 60),
        "embed_calls": calls,
        "calls_answered_429": emulator.requests["429"],
        "share_429": round(emulator.requests["429"] / max(1, calls), 4),
        "texts_embedded_twice": sum(c - 1 for c in emulator.texts_embedded.values() if c > 1),
    }


def loop(n: int, concurrency: int, latency_s: float = 0.3, in_memory: bool = False) -> dict[str, Any]:
    with EmulatorProcess(latency_s=latency_s) as emulator:  # its own process: it must not share our GIL
        os.environ.update(emulator.env())
        frame = records(n)
        work = Path(tempfile.mkdtemp(prefix="qsync-loop-"))
        loop_rate = plain_loop(frame, ":memory:" if in_memory else work / "loop-shard")
        qdrant_path: Any = ":memory:" if in_memory else work / "qsync.qdrant"
        create_job(frame, collection="c", job="loop", db=work / "q.duckdb", qdrant_path=qdrant_path,
                         embedder="gemini", dimensions=768)  # fmt: skip
        started = time.perf_counter()
        unlimited = RunSettings(concurrency=concurrency, texts_per_minute=10**9, tokens_per_minute=10**12)
        result = qsync.resume("loop", db=work / "q.duckdb", settings=unlimited)
        qsync_rate = n / (time.perf_counter() - started)
    return {
        "records": n,
        "emulator_latency_s": latency_s,
        "qdrant": ":memory:" if in_memory else "Qdrant Edge shard",
        "status": result.status,
        "plain_loop_records_per_s": round(loop_rate, 1),
        "qsync_records_per_s": round(qsync_rate, 1),
        "qsync_concurrency": concurrency,
        "speedup": round(qsync_rate / loop_rate, 2),
    }


def whole(
    n: int,
    latency_s: float,
    rounds: int,
    concurrency: int | None,
    trees: list[str],
    out: Path | None,
    warm: bool = True,
) -> None:
    """Alternating whole processes: the plain loop, then `qsync run` from each tree, `rounds` times (the order of
    the trees turns each round)."""
    work = Path(tempfile.mkdtemp(prefix="qsync-whole-"))
    source = work / "records.parquet"
    records(n).to_parquet(source)
    named = [tuple(t.split("=", 1)) if "=" in t else (t, t) for t in trees]
    with EmulatorProcess(latency_s=latency_s) as emulator:  # without usageMetadata, as the real API
        # Round -1, untimed: the emulator keeps each text's answer (gemini_model.answer_json), so that in the timed
        # rounds it spends next to no CPU on the 2 cores the tools share with it, as Google's servers spend none.
        for round_no in range(-1 if warm else 0, rounds):
            turn = named[round_no % len(named) :] + named[: round_no % len(named)]
            for name, tree in [("loop", ""), *turn]:
                folder = work / f"{round_no}-{name}"
                if name == "loop":
                    cmd = [
                        sys.executable,
                        str(Path(__file__).with_name("plain_loop.py")),
                        str(source),
                        str(folder / "shard"),
                    ]
                    env = {**os.environ, **emulator.env()}
                else:
                    cmd = [sys.executable, "-m", "qsync", "run", "--source", str(source), "--collection", "c",
                           "--db", str(folder / "q.duckdb"), "--dimensions", "768", "--texts-per-minute", "1000000000",
                           "--tokens-per-minute", "1000000000000", "--quiet"]  # fmt: skip
                    cmd += ["--concurrency", str(concurrency)] if concurrency else []
                    env = {**os.environ, **emulator.env(), "PYTHONPATH": str(Path(tree).resolve())}
                folder.mkdir(parents=True)
                before = emulator.stats()["requests"]
                started = time.perf_counter()
                # cwd: not a source tree (`python -m` puts the cwd before PYTHONPATH on sys.path)
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, cwd=folder)
                wall = time.perf_counter() - started
                after = emulator.stats()["requests"]
                line = {
                    "round": round_no, "side": name, "records": n, "latency_s": latency_s,
                    "concurrency": concurrency or "default", "exit": done.returncode, "wall_s": round(wall, 3),
                    "records_per_s": round(n / wall, 1), "usage_metadata": False,
                    "embed_calls": after.get("batchEmbedContents", 0) - before.get("batchEmbedContents", 0),
                    "count_calls": after.get("countTokens", 0) - before.get("countTokens", 0),
                    "load": round(os.getloadavg()[0], 2),
                }  # fmt: skip
                if done.returncode:
                    line["stderr"] = done.stderr[-2000:]
                shutil.rmtree(folder, ignore_errors=True)  # ~90 MB a qsync run: hundreds of runs fill a disk
                if round_no < 0:
                    continue  # the warm-up
                line["warm_emulator"] = warm
                print(json.dumps(line), flush=True)
                if out is not None:
                    with out.open("a") as f:
                        f.write(json.dumps(line) + "\n")
    shutil.rmtree(work, ignore_errors=True)


def summary(path: Path) -> dict[str, Any]:
    """Per side of a `whole` file: wall time and its ratio to the plain loop of the same round (the loop's wall over
    the side's: above 1, qsync is faster), median and range over the rounds."""
    import statistics

    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    loops = {line["round"]: line["wall_s"] for line in lines if line["side"] == "loop"}
    report: dict[str, Any] = {}
    for side in dict.fromkeys(line["side"] for line in lines):
        mine = [line for line in lines if line["side"] == side]
        walls = [line["wall_s"] for line in mine]
        ratios = [loops[line["round"]] / line["wall_s"] for line in mine]
        report[side] = {
            "runs": len(mine), "wall_s_median": round(statistics.median(walls), 2),
            "wall_s_range": [min(walls), max(walls)], "vs_loop_median": round(statistics.median(ratios), 2),
            "vs_loop_range": [round(min(ratios), 2), round(max(ratios), 2)],
            "count_calls": sorted({line["count_calls"] for line in mine}), "load": [line["load"] for line in mine],
        }  # fmt: skip
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("which", choices=["ceiling", "loop", "overhead", "whole", "summary"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", action="append", default=[], help="whole: NAME=PATH of a qsync source tree")
    parser.add_argument("--out", type=Path, help="whole: append the JSON lines to this file too")
    parser.add_argument("--minutes", type=float, default=3.3)
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument(
        "--concurrency", type=int, help="qsync's concurrency (loop, overhead: 8; whole: qsync's default)"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="overhead: seconds the emulator takes per call")
    parser.add_argument("--cold", action="store_true",
                        help="whole: no untimed warm-up round (the emulator encodes every answer while timed)")  # fmt: skip
    args = parser.parse_args()
    if args.which == "summary":  # of a `whole` file: --out's
        for side, figures in summary(args.out).items():
            print(json.dumps({"side": side, **figures}))
        return
    if args.which == "whole":
        whole(
            args.records, args.latency, args.rounds, args.concurrency, args.tree or ["now=."], args.out, not args.cold
        )
        return
    if args.which == "ceiling":
        report = ceiling(args.minutes)
    elif args.which == "loop":
        report = loop(args.records, args.concurrency or 8)
    else:  # no latency, no limits, both into Qdrant Edge: what qsync's checkpoints cost against the bare loop
        report = loop(args.records, args.concurrency or 8, latency_s=args.latency)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
