"""An offline embedder: feature hashing of word tokens, L2-normalised, deterministic.

It needs no key and no network, so the demo and the tests run anywhere, and the same text always gives
the same vector in every process (zlib.crc32, unlike hash(), is not salted per process). Similar texts
share words and so land near each other, which is enough to try search on the demo collection.
"""

from __future__ import annotations

import re
import time
import zlib

import numpy as np

from qsync.catalog.tokens import estimate_tokens
from qsync.embedders.protocol import EmbedResult, Vectors
from qsync.spec.defaults import DEFAULT_DIMENSIONS, HASH_MODEL

_WORD = re.compile(r"\w+")
MODEL = HASH_MODEL  # v2 ignores stop words, so that texts sharing content words land near each other
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "was",
        "were",
        "which",
        "with",
    ]
)


def tokenize(text: str) -> list[str]:
    words = [w for w in _WORD.findall(text.lower()) if w not in _STOP]
    return words or [text.strip()]


def hash_vector(text: str, dimensions: int) -> Vectors:
    vector = np.zeros(dimensions, dtype=np.float32)
    for word in tokenize(text):
        h = zlib.crc32(word.encode("utf-8"))
        vector[h % dimensions] += 1.0 if h & 0x80000000 else -1.0
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:  # every word cancelled out: fall back to a stable unit vector
        vector[zlib.crc32(text.encode("utf-8")) % dimensions] = 1.0
        return vector
    return vector / norm


class HashingEmbedder:
    model = MODEL
    task_type = ""
    max_batch_texts = 100
    max_text_tokens = 2048  # the same limit as gemini-embedding-001, so plans agree across embedders
    price_per_million_tokens = 0.0

    def __init__(
        self, dimensions: int = DEFAULT_DIMENSIONS, latency_s: float = 0.0, price_per_million_tokens: float = 0.0
    ) -> None:
        if dimensions < 1:
            raise ValueError("dimensions must be positive")
        self.dimensions = dimensions
        # Sleeps this long per call to stand in for a remote API in demos and tests.
        self.latency_s = latency_s
        # Free, but a rehearsal may price its tokens (--price-per-million) to see what a paid run costs.
        self.price_per_million_tokens = price_per_million_tokens

    # Tokens are counted as the plan estimates them (~4 bytes a token), not as words: a rehearsal's spend, its
    # estimate beside the actual and what it would cost with Gemini then tell one story.
    def count_tokens(self, texts: list[str]) -> int:
        return sum(estimate_tokens(t) for t in texts)

    def embed(self, texts: list[str]) -> EmbedResult:
        if self.latency_s:
            time.sleep(self.latency_s)
        vectors = (
            np.stack([hash_vector(t, self.dimensions) for t in texts])
            if texts
            else np.zeros((0, self.dimensions), dtype=np.float32)
        )
        return EmbedResult(vectors=vectors, tokens_per_text=[estimate_tokens(t) for t in texts])
