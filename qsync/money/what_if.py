"""The same records with another model, size or mode: dollars, minutes and Qdrant storage for each."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from qsync.catalog.instructions import default_task
from qsync.catalog.models import default_limits, embedding_models, full_dimensions, multimodal
from qsync.catalog.tokens import instruction_tokens, text_token_limit
from qsync.engine.ratelimit import SAFETY
from qsync.formatting import duration, gigabytes
from qsync.money.estimate import TextsEstimate

# Qdrant's sizing rule of thumb: float32 vectors times 1.5 for the index, payload and overhead.
_BYTES_PER_DIMENSION = 4 * 1.5
WHAT_IF_DIMENSIONS = (128, 256, 768, 1536, 3072)


def storage_gb(points: int, dimensions: int) -> float:
    return points * dimensions * _BYTES_PER_DIMENSION / 1024**3


def what_if(
    tokens: int,
    texts: int,
    points: int,
    *,
    job_model: str | None = None,
    text_tokens: Sequence[int] = (),
    media_tokens: int = 0,
    chunking: bool = True,
) -> pd.DataFrame:
    """Dollars, minutes and Qdrant storage of embedding `texts` texts of `tokens` tokens into `points` points, for
    each priced model, a few dimensions, standard and Batch Mode.

    The models differ in more than price. With `text_tokens` (each distinct text's ~4-bytes estimate), a model
    whose text limit a text exceeds leaves it out: `too_long` counts those, and its tokens are not priced. And a
    model that takes its task as an instruction pays for it on every text: `tokens` (as the job's own model,
    `job_model`, counts them) is adjusted by the difference. With `media_tokens` (the images' and PDF pages' part
    of `tokens`), only the models that embed media are listed, that part at their media price, and no Batch Mode:
    qsync submits only texts to it. With `chunking` (the job cuts long texts), a text over a model's limit is not
    left out but cut again: the same tokens, in more texts and points (`too_long` then counts the texts cut)."""
    own_instruction = instruction_tokens(job_model, default_task(job_model)) if job_model else 0
    estimated = sum(text_tokens)
    rows = []
    for model in embedding_models():
        if media_tokens and not multimodal(model):
            continue
        limit = text_token_limit(model, default_task(model))
        too_long = [t for t in text_tokens if t > limit]
        extra = sum(-(-t // limit) - 1 for t in too_long) if chunking else 0  # more chunks, each a text and point
        kept = texts + extra if chunking else texts - len(too_long)
        # The job's measured tokens, less the share of texts this model would skip, with its instruction.
        share = 1 - sum(too_long) / estimated if estimated and not chunking else 1.0
        own_text = tokens - media_tokens - own_instruction * texts
        model_tokens = round(own_text * share) + instruction_tokens(model, default_task(model)) * kept
        texts_limit, tokens_limit = (x * SAFETY for x in default_limits())
        minutes = max(kept / texts_limit, (model_tokens + media_tokens) / tokens_limit) if kept else 0.0
        modes = ["standard"] if media_tokens else ["standard", "Batch Mode"]
        priced = TextsEstimate(kept, model_tokens, media_tokens, "")  # text and media at their own prices
        for dims in WHAT_IF_DIMENSIONS:
            if dims > full_dimensions(model):
                continue
            for mode in modes:
                rows.append({
                    "model": model, "dimensions": dims, "mode": mode, "too_long": len(too_long),
                    "cost_usd": priced.cost_usd(model, batch_mode=mode == "Batch Mode"),
                    "time": duration(minutes * 60) if mode == "standard" else "within 24 h",
                    "qdrant_storage": gigabytes(storage_gb(points + extra, dims)),
                })  # fmt: skip
    return pd.DataFrame(rows)
