"""What cutting long records into chunks costs a run: `qsync run` (a whole process, as a user meets it) over long
documents, chunked by qsync, beside the same run over the same chunks given as records (pre-split), alternating;
and how close the chunks come to the model's limit, in the emulator's tokens.

    python benchmarks/chunking_overhead.py [--copies 10] [--rounds 5] [--embedder hash]

Documents: Python's reference topics (data/python_reference.jsonl: 79 real documents, 200-62,000 characters),
`--copies` times, each copy's texts made distinct (a numbered first line), so every chunk is paid once.
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

import pandas as pd

from qsync.catalog.models import input_token_limit
from qsync.catalog.tokens import upper_tokens
from qsync.input.chunks import chunker, split
from qsync.testing.gemini_model import count_tokens

DATA = Path(__file__).resolve().parent.parent / "data" / "python_reference.jsonl"


def documents(copies: int) -> pd.DataFrame:
    base = pd.read_json(DATA, lines=True)
    frames = [base.assign(id=base["id"] + f"-{k}", text=f"Copy {k}.\n\n" + base["text"]) for k in range(copies)]
    return pd.concat(frames, ignore_index=True)[["id", "text"]]


def presplit(docs: pd.DataFrame, budget: int) -> pd.DataFrame:
    split_with = chunker(budget)
    rows = []
    for doc_id, text in zip(docs["id"], docs["text"], strict=True):
        offsets = split(split_with, text) if upper_tokens(text) > budget else [(0, len(text))]
        rows += [{"id": f"{doc_id}/{n}", "text": text[a:b]} for n, (a, b) in enumerate(offsets)]
    return pd.DataFrame(rows)


def timed_run(source: Path, work: Path, embedder: str) -> float:
    db = work / "q.duckdb"
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "qsync", "run", "--source", str(source), "--collection", "c", "--db", str(db),
         "--embedder", embedder, "--quiet"],
        check=True, cwd=work, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--embedder", default="hash")
    parser.add_argument("--model", default="gemini-embedding-001", help="whose limit the chunks are cut to")
    args = parser.parse_args()
    limit = input_token_limit(args.model)
    docs = documents(args.copies)
    pieces = presplit(docs, limit)
    fills = sorted(count_tokens(t) / limit for t in pieces["text"] if upper_tokens(t) > limit // 4)
    print(json.dumps({
        "documents": len(docs), "characters": int(docs["text"].str.len().sum()), "chunks": len(pieces),
        "limit": limit,
        "chunk_tokens_of_limit (emulator tokenizer, chunks over a quarter of the limit)": {
            "median": round(statistics.median(fills), 3), "p90": round(fills[int(len(fills) * 0.9)], 3),
            "max": round(fills[-1], 3),
        },
    }))  # fmt: skip
    times: dict[str, list[float]] = {"chunked by qsync": [], "pre-split": []}
    with tempfile.TemporaryDirectory(prefix="qsync-chunking-") as tmp:
        sources = {"chunked by qsync": Path(tmp) / "long.parquet", "pre-split": Path(tmp) / "pieces.parquet"}
        docs.to_parquet(sources["chunked by qsync"])
        pieces.to_parquet(sources["pre-split"])
        for r in range(args.rounds):  # alternating, each run in a fresh folder
            for name, source in sources.items():
                work = Path(tmp) / f"{name.replace(' ', '-')}-{r}"
                work.mkdir()
                times[name].append(timed_run(source, work, args.embedder))
    for name, values in times.items():
        print(json.dumps({
            "run": name, "embedder": args.embedder, "rounds": args.rounds,
            "seconds_median": round(statistics.median(values), 2), "seconds_range": [round(min(values), 2),
            round(max(values), 2)], "load": os.getloadavg()[0],
        }))  # fmt: skip
    ratio = [a / b for a, b in zip(times["chunked by qsync"], times["pre-split"], strict=True)]
    print(json.dumps({"chunked / pre-split": round(statistics.median(ratio), 3),
                      "range": [round(min(ratio), 3), round(max(ratio), 3)]}))  # fmt: skip


if __name__ == "__main__":
    main()
