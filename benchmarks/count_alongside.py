"""What pricing a call costs when the answer carries no usageMetadata (as batchEmbedContents's does not).

    python benchmarks/count_alongside.py [--calls 12] [--latency 0.3]

One GeminiEmbedder calls the emulator (no usageMetadata, `--latency` per request) one call at a time,
alternating two ways of learning each call's tokens: countTokens after the answer (a second round trip
on the call's path, as before) and countTokens sent alongside the embed request. Reported: wall time per
call, median and spread, and whether the tokens recorded equal what the emulator metered.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from qsync.embedders.gemini import GeminiEmbedder
from qsync.testing.emulator import GeminiEmulator

KEY = "bench-key"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=12)
    parser.add_argument("--latency", type=float, default=0.3)
    args = parser.parse_args()
    emulator = GeminiEmulator(api_key=KEY, latency_s=args.latency, usage_metadata=False).start()
    os.environ.update(GOOGLE_GEMINI_BASE_URL=emulator.url, GEMINI_API_KEY=KEY)
    embedder = GeminiEmbedder(dimensions=768)
    embedder.embed(["warm up the connection"])  # learns that answers carry no usage
    times: dict[str, list[float]] = {"after": [], "alongside": []}
    recorded = 0
    metered_before = emulator.tokens_metered
    for i in range(args.calls * 2):
        way = "after" if i % 2 == 0 else "alongside"
        embedder.counts_alongside = way == "alongside"
        texts = [f"call {i} text {j}: a record of some length, as a catalogue might hold" for j in range(100)]
        started = time.perf_counter()
        result = embedder.embed(texts)
        times[way].append(time.perf_counter() - started)
        recorded += sum(result.tokens_per_text)
    emulator.stop()
    report = {
        "calls_each": args.calls,
        "latency_s": args.latency,
        **{
            f"ms_per_call_{way}": {
                "median": round(1000 * statistics.median(t), 1),
                "min": round(1000 * min(t), 1),
                "max": round(1000 * max(t), 1),
            }
            for way, t in times.items()
        },
        "tokens_recorded": recorded,
        "tokens_metered": emulator.tokens_metered - metered_before,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
