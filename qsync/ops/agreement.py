"""How much of a full-size embedding's neighbourhood a smaller size keeps: recall@k of the nearest neighbours.

Gemini's embedding models are Matryoshka-trained: a smaller size is the full vector's first dimensions,
renormalised (`shortened`). So one full-size embedding of a sample answers, for every smaller size,
"which of each item's k nearest neighbours at full size are still among its k nearest": neighbour agreement, a
measure of what the size loses against the model's own best, not of relevance (it cannot say whether either
neighbourhood is what a person would want).
"""

from __future__ import annotations

import numpy as np

from qsync.embedders.protocol import Vectors, shortened


def nearest(items: Vectors, queries: Vectors, k: int, *, leave_out_self: bool) -> np.ndarray:
    """The indices of each query's `k` nearest items by cosine (rows are unit length), nearest first.
    `leave_out_self`: the queries are the items themselves, and an item is not its own neighbour."""
    scores = queries @ items.T
    if leave_out_self:
        np.fill_diagonal(scores, -np.inf)
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, axis=1)


def recall_at_k(full_items: Vectors, full_queries: Vectors | None, dimensions: int, k: int = 10) -> float:
    """The share of each query's k nearest items at full size that are also among its k nearest at `dimensions`,
    averaged over the queries. `full_queries` None: every item is a query (its neighbours among the others)."""
    own = full_queries is None
    queries = full_items if full_queries is None else full_queries
    k = min(k, len(full_items) - (1 if own else 0))
    if k <= 0 or not len(queries):
        return float("nan")
    truth = nearest(full_items, queries, k, leave_out_self=own)
    small = nearest(shortened(full_items, dimensions), shortened(queries, dimensions), k, leave_out_self=own)
    kept = [len(set(a) & set(b)) for a, b in zip(truth.tolist(), small.tolist(), strict=True)]
    return float(np.mean(kept)) / k
