"""Check, against the API your key reaches, what qsync's cache assumes of a Matryoshka model: the vector the API
answers at a smaller size is the full-size vector's first dimensions (qsync renormalises both). Run it once with a
real key before relying on `qsync compare`'s reuse of full-size vectors (pricing.json: nested_dimensions):

    GEMINI_API_KEY=... python benchmarks/check_nested_dimensions.py [--model gemini-embedding-001] [--sizes 768 128]

Costs a few hundred tokens. Prints, per size, the cosine between the API's vector at that size and the full-size
vector cut to it (1.0 when the assumption holds; qsync needs ≥ 0.9999), and exits 1 if any is below.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from qsync.embedders.gemini import GeminiEmbedder
from qsync.embedders.protocol import shortened

TEXTS = [
    "A violin is a wooden string instrument played with a bow.",
    "The river overflowed its banks after a week of rain.",
    "Quarterly revenue grew 12% on higher subscription sales.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gemini-embedding-001")
    parser.add_argument("--sizes", nargs="+", type=int, default=[1536, 768, 256, 128])
    args = parser.parse_args()
    full = GeminiEmbedder(dimensions=3072, model=args.model)
    whole = full.embed(TEXTS).vectors
    worst = 1.0
    for size in args.sizes:
        answered = GeminiEmbedder(dimensions=size, model=args.model).embed(TEXTS).vectors
        cosines = np.sum(answered * shortened(whole, size), axis=1)
        worst = min(worst, float(cosines.min()))
        print(json.dumps({"model": args.model, "size": size, "cosines": [round(float(c), 6) for c in cosines]}))
    sys.exit(0 if worst >= 0.9999 else 1)


if __name__ == "__main__":
    main()
