"""qsync side by side with LangChain's indexing API, on the same data, embedder and emulator.

    pip install -r benchmarks/requirements-langchain.txt
    python benchmarks/langchain_indexer.py --records 3000 --speed-rounds 4      # speed: both into :memory:
    python benchmarks/langchain_indexer.py --records 3000 --speed-rounds 4 --tree before=../main-abc --tree now=.
    python benchmarks/langchain_indexer.py [--records 5000] [--latency 0.3] [--kill-at 0.25]   # kills

Both tools embed with gemini-embedding-001 (768 dimensions, RETRIEVAL_DOCUMENT) through the real
google-genai SDK, against one Gemini emulator running in its own process (answering after `--latency`
seconds, no rate limits; embed answers without usageMetadata, as Google's Developer API answers
batchEmbedContents, unless `--usage-metadata`).

Where they write: for speed (`--speed-rounds`), both into qdrant-client's in-memory Qdrant (`:memory:`), the one
kind both can use (LangChain's QdrantVectorStore takes a qdrant-client; qsync's embedded default, Qdrant Edge, has
no LangChain store, and qsync does not write to qdrant-client's local folder, which commits SQLite once per point
and would make the comparison one of stores). For kills, the points must outlive the killed process: LangChain
writes to qdrant-client's local folder, qsync to Qdrant Edge (what is counted there is texts paid twice and records
present at the end, not speed).

- LangChain: `index(docs, SQLRecordManager(sqlite), QdrantVectorStore, batch_size=100)` with
  `GoogleGenerativeAIEmbeddings(base_url=emulator)`, the setup its docs recommend for re-runnable loads;
- qsync: `qsync run` with its defaults (concurrency 4), and again with `--concurrency 1`; client-side
  rate limits lifted, as the emulator has none.

For each tool, in fresh folders:
1. a full run: records/s;
2. `--trials` times: a run SIGKILLed at a random moment within a second after the emulator has
   embedded `--kill-at` of the texts, then the same command again, to completion: texts the emulator
   embedded more than once (paid twice), and the records in Qdrant at the end.

A call in flight when the process dies is lost to any client (the API charged for an answer nobody
read); a tool that checkpoints well loses nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from emulator_process import KEY, EmulatorProcess

REPO = Path(__file__).resolve().parents[1]
MODEL, DIMENSIONS = "gemini-embedding-001", 768


def make_records(path: Path, n: int) -> None:
    base = pd.read_json(REPO / "data" / "wordnet_sample.jsonl", lines=True)
    texts = base["text"].tolist()
    frame = pd.DataFrame(
        {"id": [f"r{i}" for i in range(n)], "text": [f"{texts[i % len(texts)]} [{i}]" for i in range(n)]}
    )
    frame.to_parquet(path)


# -- the LangChain side (runs in a child process, so that it can be killed) ----------------------------


def langchain_index(source: Path, work: Path, url: str, in_memory: bool) -> None:
    from langchain_classic.indexes import SQLRecordManager
    from langchain_core.documents import Document
    from langchain_core.indexing import index
    from langchain_google_genai import GoogleGenerativeAIEmbeddings
    from langchain_qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient, models

    embeddings = GoogleGenerativeAIEmbeddings(
        model=MODEL, google_api_key=KEY, base_url=url,  # type: ignore[arg-type]
        task_type="RETRIEVAL_DOCUMENT", output_dimensionality=DIMENSIONS,
    )  # fmt: skip
    client = QdrantClient(":memory:") if in_memory else QdrantClient(path=str(work / "qdrant"))
    if not client.collection_exists("c"):
        client.create_collection(
            "c", vectors_config=models.VectorParams(size=DIMENSIONS, distance=models.Distance.COSINE)
        )
    store = QdrantVectorStore(client=client, collection_name="c", embedding=embeddings)
    manager = SQLRecordManager("qdrant/c", db_url=f"sqlite:///{work / 'records.sqlite'}")
    manager.create_schema()
    frame = pd.read_parquet(source)
    docs = (Document(page_content=t, metadata={"id": i}) for i, t in zip(frame["id"], frame["text"], strict=True))
    result = index(docs, manager, store, batch_size=100, cleanup="incremental", source_id_key="id")
    print(json.dumps(dict(result)), flush=True)
    if in_memory and client.count("c", exact=True).count != len(frame):  # in memory: counted before it is gone
        raise SystemExit(f"LangChain left {client.count('c', exact=True).count} of {len(frame)} points")
    client.close()


def langchain_points(work: Path) -> int:
    from qdrant_client import QdrantClient

    client = QdrantClient(path=str(work / "qdrant"))
    try:
        return client.count("c", exact=True).count
    finally:
        client.close()


# -- the qsync side -------------------------------------------------------------------------------------


def qsync_command(source: Path, work: Path, concurrency: int, in_memory: bool = False) -> list[str]:
    qdrant = ":memory:" if in_memory else str(work / "qsync.qdrant")
    return [
        sys.executable, "-m", "qsync", "run", "--source", str(source), "--collection", "c", "--job", "bench",
        "--db", str(work / "qsync.duckdb"), "--qdrant-path", qdrant, "--embedder", "gemini",
        "--dimensions", str(DIMENSIONS), "--texts-per-minute", str(10**9), "--tokens-per-minute", str(10**12),
        "--concurrency", str(concurrency), "--quiet",
    ]  # fmt: skip


def qsync_points(work: Path) -> int:
    import qsync

    return int(qsync.status("bench", db=work / "qsync.duckdb")["processed_records"])


# -- the harness ----------------------------------------------------------------------------------------


def run(
    command: list[str],
    env: dict[str, str],
    emulator: EmulatorProcess,
    kill_at_texts: int | None,
    delay_s: float = 0,
    cwd: Path | None = None,
) -> tuple[float, dict[str, Any]]:
    """Run `command` to its end, or SIGKILL it `delay_s` after the emulator has embedded `kill_at_texts`.
    Returns the time taken and the emulator's counters right after the kill (or the end)."""
    started = time.perf_counter()
    stats: dict[str, Any] = {}
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=cwd)
    reached: float | None = None
    while child.poll() is None:
        if kill_at_texts is not None and reached is None and emulator.stats()["texts_embedded"] >= kill_at_texts:
            reached = time.perf_counter()
        if reached is not None and time.perf_counter() - reached >= delay_s:
            os.kill(child.pid, signal.SIGKILL)
            stats = emulator.stats()  # the calls still in progress now: their answers can reach nobody
            break
        time.sleep(0.01)
    _, err = child.communicate()
    if kill_at_texts is None and child.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed ({child.returncode}):\n{err[-3000:]}")
    return time.perf_counter() - started, stats or emulator.stats()


def command_for(tool: str, source: Path, work: Path, in_memory: bool = False) -> list[str]:
    if tool == "langchain":
        return [
            sys.executable,
            str(Path(__file__).resolve()),
            "--langchain-child",
            str(source),
            str(work),
            "memory" if in_memory else "folder",
        ]
    return qsync_command(source, work, qsync_tool(tool)[0], in_memory)


def qsync_tool(tool: str) -> tuple[int, str]:
    """`qsync-cN` or `qsync-cN@TREE` (qsync from the source tree named TREE): (N, TREE or "")."""
    concurrency, _, tree = tool.removeprefix("qsync-c").partition("@")
    return int(concurrency), tree


def measure(tool: str, n: int, latency_s: float, kill_at: float, trials: int, seed: int, usage: bool) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"qsync-vs-{tool}-"))
    source = root / "records.parquet"
    make_records(source, n)
    (root / "full").mkdir()
    with EmulatorProcess(latency_s=latency_s, usage_metadata=usage) as emulator:
        env = {**os.environ, **emulator.env(), "EMULATOR_URL": emulator.url}
        elapsed, _ = run(command_for(tool, source, root / "full"), env, emulator, None)
    report: dict[str, Any] = {"tool": tool, "records_per_s": round(n / elapsed, 1), "full_run_s": round(elapsed, 1)}
    # A crash comes at any moment: kill at a random delay (within one second) after the threshold.
    delays = random.Random(seed).sample(range(1000), trials)
    kills = []
    for trial, delay_ms in enumerate(delays):
        work = root / f"trial-{trial}"
        work.mkdir()
        with EmulatorProcess(latency_s=latency_s, usage_metadata=usage) as emulator:  # counters: this trial's
            env = {**os.environ, **emulator.env(), "EMULATOR_URL": emulator.url}
            _, at_kill = run(command_for(tool, source, work), env, emulator, int(n * kill_at), delay_ms / 1000)
            time.sleep(latency_s + 0.5)  # let the calls in flight finish, so that they count before the re-run
            before_rerun = emulator.stats()
            rerun_s, final = run(command_for(tool, source, work), env, emulator, None)
        kills.append(
            {
                "kill_delay_s": delay_ms / 1000,
                "texts_embedded_by_killed_run": before_rerun["texts_embedded"],
                "embed_calls_in_flight_at_kill": at_kill["in_progress"].get("batchEmbedContents", 0),
                "texts_embedded_by_rerun": final["texts_embedded"] - before_rerun["texts_embedded"],
                "texts_embedded_twice": final["texts_embedded_twice"],
                "rerun_s": round(rerun_s, 1),
                "records_in_qdrant_at_end": langchain_points(work) if tool == "langchain" else qsync_points(work),
            }
        )
    twice = [k["texts_embedded_twice"] for k in kills]
    in_flight = [k["embed_calls_in_flight_at_kill"] for k in kills]
    report.update(
        texts_embedded_twice_mean=round(sum(twice) / len(twice), 1),
        texts_embedded_twice_max=max(twice),
        embed_calls_in_flight_at_kill_mean=round(sum(in_flight) / len(in_flight), 1),
        all_records_in_qdrant=all(k["records_in_qdrant_at_end"] == n for k in kills),
        kills=kills,
    )
    return report


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--langchain-child":
        langchain_index(Path(sys.argv[2]), Path(sys.argv[3]), os.environ["EMULATOR_URL"], sys.argv[4] == "memory")
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--latency", type=float, default=0.3, help="seconds the emulator takes per call")
    parser.add_argument("--kill-at", type=float, default=0.25, help="share of texts embedded before the SIGKILL")
    parser.add_argument("--trials", type=int, default=5, help="kills per tool, each at a random moment")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--qsync-concurrency", default="4,1", help="qsync runs to measure, by --concurrency")
    parser.add_argument(
        "--speed-rounds", type=int, default=0,
        help="instead of kills: this many rounds of one full run per tool, tools alternating within a round",
    )  # fmt: skip
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        help="speed: NAME=PATH of a qsync source tree to run qsync from (repeat to compare trees)",
    )
    parser.add_argument("--usage-metadata", action="store_true",
                        help="the emulator's embed answers carry usageMetadata (Google's Developer API's do not)")  # fmt: skip
    args = parser.parse_args()
    tools = ["langchain", *(f"qsync-c{c}" for c in args.qsync_concurrency.split(","))]
    if args.speed_rounds:
        # qsync-cN@NAME: qsync from the tree NAME (PYTHONPATH), alternating with the others in every round
        trees = dict(t.split("=", 1) for t in args.tree)
        if trees:
            tools = ["langchain", *(f"{t}@{name}" for t in tools[1:] for name in trees)]
        result = speed(tools, args.records, args.latency, args.speed_rounds, args.usage_metadata, trees)
        print(json.dumps(result, indent=2))
        return
    results = [measure(tool, args.records, args.latency, args.kill_at, args.trials, args.seed, args.usage_metadata)
               for tool in tools]  # fmt: skip
    print(json.dumps({"records": args.records, "emulator_latency_s": args.latency,
                      "usage_metadata": args.usage_metadata, "results": results}, indent=2))  # fmt: skip


def speed(
    tools: list[str], n: int, latency_s: float, rounds: int, usage: bool, trees: dict[str, str] | None = None
) -> dict[str, Any]:
    """Full runs only, both tools into in-memory Qdrant, tools alternating in every round (the machine's noise falls
    on each alike); records/s, the process CPU each run used, and the API calls it made."""
    root = Path(tempfile.mkdtemp(prefix="qsync-vs-speed-"))
    source = root / "records.parquet"
    make_records(source, n)
    rates: dict[str, list[float]] = {tool: [] for tool in tools}
    cpu: dict[str, list[float]] = {tool: [] for tool in tools}
    calls: dict[str, dict[str, int]] = {}
    with EmulatorProcess(latency_s=latency_s, usage_metadata=usage) as emulator:
        env = {**os.environ, **emulator.env(), "EMULATOR_URL": emulator.url}
        # Round -1, untimed: the emulator keeps each text's answer, so that in the timed rounds its JSON encoding does
        # not compete with the tools for the machine's cores (Google's servers cost the client none).
        for round_no in range(-1, rounds):
            for tool in tools:
                work = root / f"{tool}-{round_no}"
                work.mkdir()
                before, requests = os.times(), emulator.stats()["requests"]
                tree = (trees or {}).get(qsync_tool(tool)[1]) if tool != "langchain" else None
                # cwd: not a source tree (`python -m` puts the cwd before PYTHONPATH on sys.path)
                tool_env = {**env, "PYTHONPATH": str(Path(tree).resolve())} if tree else env
                elapsed, stats = run(command_for(tool, source, work, in_memory=True), tool_env, emulator, None,
                                     cwd=work)  # fmt: skip
                after = os.times()
                if round_no < 0:
                    continue
                if tool != "langchain" and qsync_points(work) != n:
                    raise RuntimeError(f"{tool} processed {qsync_points(work)} of {n} records")
                calls[tool] = {
                    k: v - requests.get(k, 0) for k, v in stats["requests"].items() if v - requests.get(k, 0)
                }
                rates[tool].append(round(n / elapsed, 1))
                cpu[tool].append(round(after.children_user + after.children_system
                                       - before.children_user - before.children_system, 2))  # fmt: skip
    return {
        "records": n, "emulator_latency_s": latency_s, "usage_metadata": usage, "rounds": rounds, "qdrant": ":memory:",
        "trees": trees or {},
        "warm_emulator": True,
        "api_requests_per_run": calls,
        "ratio_to_langchain": {t: {"median": round(statistics.median(r) / statistics.median(rates["langchain"]), 2),
                                   "per_round": [round(a / b, 2) for a, b in zip(r, rates["langchain"], strict=True)]}
                               for t, r in rates.items() if t != "langchain"},
        "records_per_s": {t: {"median": statistics.median(r), "min": min(r), "max": max(r), "runs": r}
                          for t, r in rates.items()},
        "cpu_s_per_run": {t: {"median": statistics.median(c), "runs": c} for t, c in cpu.items()},
    }  # fmt: skip


if __name__ == "__main__":
    main()
