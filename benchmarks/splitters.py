"""Which text splitter cuts long records into chunks: semchunk, semantic-text-splitter, langchain-text-splitters,
side by side on the same long documents, alternating, with qsync's upper token estimate as every splitter's size.

    pip install -r benchmarks/requirements-splitters.txt
    python benchmarks/splitters.py [--rounds 5] [--budget 2048] [--budget 512]

Documents: Python's own reference topics (`pydoc_data.topics`, 79 real documents of 200-62,000 characters, PSF
licence; shipped with every CPython), prose with code, i.e. punctuation-dense text. Per splitter and budget:
seconds to split all documents (median and range of the rounds), chunks, how full chunks are (upper estimate /
budget), the largest chunk in the emulator's tokens, cuts inside a word, and whether the offsets reproduce each
chunk and together cover every non-space character. Then the worst case for a splitter, one run of characters
without whitespace (a blob pasted into a text column), of 1 and 4 MB.

Chosen: semchunk. semantic-text-splitter fills chunks a little fuller, but grows quadratically on a long run
without whitespace (a 50 MB field would take hours); langchain's splitter adds up the sizes of the pieces it
joins, so it exceeds the budget whenever the size is not additive (it did with an earlier bound).
"""

from __future__ import annotations

import argparse
import json
import pydoc_data.topics
import re
import statistics
import time
from collections.abc import Callable
from functools import partial

from qsync.catalog.tokens import upper_tokens
from qsync.testing.gemini_model import count_tokens

Chunks = list[tuple[int, int]]  # (start, end) character offsets


def with_semchunk(budget: int) -> Callable[[str], Chunks]:
    import semchunk

    chunker = semchunk.chunkerify(partial(upper_tokens), budget)  # a fresh memo

    def split(text: str) -> Chunks:
        _, offsets = chunker(text, offsets=True)
        return [(int(a), int(b)) for a, b in offsets]

    return split


def with_text_splitter(budget: int) -> Callable[[str], Chunks]:
    from semantic_text_splitter import TextSplitter

    splitter = TextSplitter.from_callback(upper_tokens, budget)
    return lambda text: [(start, start + len(chunk)) for start, chunk in splitter.chunk_indices(text)]


def with_langchain(budget: int) -> Callable[[str], Chunks]:
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(
        chunk_size=budget, chunk_overlap=0, length_function=upper_tokens, add_start_index=True
    )

    def split(text: str) -> Chunks:
        return [
            (doc.metadata["start_index"], doc.metadata["start_index"] + len(doc.page_content))
            for doc in splitter.create_documents([text])
        ]

    return split


SPLITTERS = {"semchunk": with_semchunk, "semantic-text-splitter": with_text_splitter, "langchain": with_langchain}
WORD = re.compile(r"\w")


def quality(docs: list[str], chunked: list[Chunks], budget: int) -> dict[str, object]:
    fills, largest, mid_word, bad_offsets, uncovered = [], 0, 0, 0, 0
    for text, chunks in zip(docs, chunked, strict=True):
        covered = bytearray(len(text))
        for start, end in chunks:
            piece = text[start:end]
            if not piece.strip():
                bad_offsets += 1
            fills.append(upper_tokens(piece) / budget)
            largest = max(largest, count_tokens(piece))
            covered[start:end] = b"\x01" * (end - start)
            if 0 < start < len(text) and WORD.match(text[start - 1]) and WORD.match(text[start]):
                mid_word += 1
        uncovered += sum(1 for i, c in enumerate(text) if not covered[i] and not c.isspace())
    return {
        "chunks": sum(map(len, chunked)),
        "fill_median": round(statistics.median(fills), 3),
        "fill_min": round(min(fills), 3),
        "over_budget": sum(f > 1 for f in fills),
        "largest_emulator_tokens": largest,
        "mid_word_cuts": mid_word,
        "empty_chunks": bad_offsets,
        "uncovered_chars": uncovered,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=int, action="append")
    args = parser.parse_args()
    docs = sorted(pydoc_data.topics.topics.values(), key=len)
    print(f"{len(docs)} documents, {sum(map(len, docs)):,} characters, {sum(map(upper_tokens, docs)):,} upper tokens")
    for budget in args.budget or [2048, 512]:
        long_docs = [d for d in docs if upper_tokens(d) > budget]
        times: dict[str, list[float]] = {name: [] for name in SPLITTERS}
        results: dict[str, list[Chunks]] = {}
        for _ in range(args.rounds):  # alternating: each round runs every splitter once
            for name, make in SPLITTERS.items():
                split = make(budget)  # a fresh splitter each round: no memo carried over
                started = time.perf_counter()
                results[name] = [split(d) for d in long_docs]
                times[name].append(time.perf_counter() - started)
        for name in SPLITTERS:
            line = {
                "splitter": name, "budget": budget, "documents": len(long_docs),
                "seconds_median": round(statistics.median(times[name]), 3),
                "seconds_range": [round(min(times[name]), 3), round(max(times[name]), 3)],
                **quality(long_docs, results[name], budget),
            }  # fmt: skip
            print(json.dumps(line))
    for size in (1_000_000, 4_000_000):  # the worst case: no paragraph, sentence or word to cut at
        blob = "x" * size
        for name, make in SPLITTERS.items():
            started = time.perf_counter()
            pieces = make(2048)(blob)
            print(json.dumps({"splitter": name, "no_whitespace_chars": size, "chunks": len(pieces),
                              "seconds": round(time.perf_counter() - started, 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
