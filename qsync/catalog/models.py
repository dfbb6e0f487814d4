"""Prices and limits per model, read from configuration (`pricing.json`, or $QSYNC_PRICING_FILE), never code.

`price_per_million` is the one price rule: every figure in dollars (estimates, budgets, the ledger's costs,
the cost panel) is priced through it, Batch Mode and media included.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any, Final

from qsync.errors import ConfigError

DEFAULT_EMBEDDING_MODEL: Final = "gemini-embedding-001"
MEDIA_MODEL: Final = "gemini-embedding-2"  # the multimodal model: its figures apply when none is named
RETRIEVAL_DOCUMENT: Final = "RETRIEVAL_DOCUMENT"  # -001's record-side task type
RETRIEVAL_QUERY: Final = "RETRIEVAL_QUERY"


@cache
def table() -> dict[str, Any]:
    """The whole pricing table (cached for the process: it is configuration, not state)."""
    path = Path(os.environ.get("QSYNC_PRICING_FILE") or Path(__file__).with_name("pricing.json"))
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read prices from {path}: {exc}") from exc
    return data


def model_info(model: str) -> dict[str, Any]:
    """The table's entry for `model` (with or without the `models/` prefix); {} for a model it lacks."""
    info: dict[str, Any] = table().get("models", {}).get(model.removeprefix("models/"), {})
    return info


def price_per_million(
    model: str, *, batch_mode: bool = False, media: bool = False, override: float | None = None
) -> float:
    """USD per 1M input tokens of `model`: text or media (images, PDF pages), standard or Batch Mode.

    `override` is a text price the user gave (--price-per-million): it replaces the table's text price,
    Batch Mode is half of it, and media is billed as text. A model without its own media price bills media
    as text."""
    if override is not None:
        return override / 2 if batch_mode else override
    info = model_info(model)
    if media:
        key = "batch_usd_per_million_media_tokens" if batch_mode else "usd_per_million_media_tokens"
        if key in info:
            return float(info[key])
    key = "batch_usd_per_million_tokens" if batch_mode else "usd_per_million_tokens"
    if key not in info:
        raise ConfigError(f"no price for {model!r} in the pricing table; pass --price-per-million")
    return float(info[key])


def output_price_per_million(model: str) -> float:
    """USD per 1M answer tokens of a generative model (enrichment); its input price when none is listed."""
    info = model_info(model)
    return float(info.get("usd_per_million_output_tokens", price_per_million(model)))


def default_limits() -> tuple[int, int]:
    """(texts, tokens) per minute a Gemini run paces itself to when none are given (tier 1)."""
    limits = table().get("limits", {})
    return int(limits.get("texts_per_minute", 3000)), int(limits.get("tokens_per_minute", 1_000_000))


def embedding_models() -> list[str]:
    """The embedding models the table prices, standard and Batch Mode (-001 and -2)."""
    models: dict[str, Any] = table().get("models", {})
    return [m for m, info in models.items() if "batch_usd_per_million_tokens" in info and "embedding" in m]


def multimodal(model: str) -> bool:
    return bool(model_info(model).get("multimodal"))


def max_batch_texts(model: str) -> int:
    return int(model_info(model).get("max_batch_texts", 100))


def max_request_bytes(model: str) -> int:
    return int(model_info(model).get("max_request_bytes", 4 * 1024 * 1024))


def full_dimensions(model: str) -> int:
    return int(model_info(model).get("full_dimensions", 3072))


def nested_dimensions(model: str) -> bool:
    """Whether a smaller size of the model's vectors is the full vector's first dimensions (Matryoshka-trained)."""
    return bool(model_info(model).get("nested_dimensions"))


def input_token_limit(model: str) -> int:
    """Tokens one input may have, whole (a text with its instruction, or a media record's parts)."""
    return int(model_info(model).get("max_text_tokens", 2048))
