"""What reading one embedding answer costs the runner: the standard library's JSON against orjson.

    python benchmarks/answer_decoding.py [--texts 100] [--dimensions 768] [--rounds 200]

The answer is the emulator's (as Google's batchEmbedContents answers: `{"embeddings": [{"values": [...]}, ...]}`,
7 decimals a value), decoded and made into the float32 matrix a run keeps: `json.loads` (what the SDK's public
`embed_content` does before it builds pydantic models, which this leaves out) against `orjson.loads` (what qsync does
since it reads the answer from the SDK's transport, embedders/gemini_client.post_paid). Alternating, median and
p10 - p90 per answer, in ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from qsync.testing.gemini_model import answer_values


def matrix(decode: Callable[[str], Any], body: str) -> np.ndarray:
    return np.asarray([e["values"] for e in decode(body)["embeddings"]], dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=100)
    parser.add_argument("--dimensions", type=int, default=768)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    values = [answer_values("gemini-embedding-001", f"text {i}", args.dimensions) for i in range(args.texts)]
    body = json.dumps({"embeddings": [{"values": v} for v in values]})
    decoders: dict[str, Callable[[str], Any]] = {"json": json.loads, "orjson": orjson.loads}
    assert np.array_equal(matrix(json.loads, body), matrix(orjson.loads, body))
    times: dict[str, list[float]] = {name: [] for name in decoders}
    for _ in range(args.rounds):
        for name, decode in decoders.items():
            started = time.perf_counter()
            matrix(decode, body)
            times[name].append((time.perf_counter() - started) * 1000)
    result: dict[str, Any] = {"texts": args.texts, "dimensions": args.dimensions, "bytes": len(body)}
    for name, ms in times.items():
        cut = statistics.quantiles(ms, n=10)
        result[name] = {"median_ms": round(statistics.median(ms), 2), "p10_ms": round(cut[0], 2),
                        "p90_ms": round(cut[-1], 2)}  # fmt: skip
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
