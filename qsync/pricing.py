"""Prices and limits, read from configuration (qsync/pricing.json, or $QSYNC_PRICING_FILE), never code."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

from .errors import ConfigError


@cache
def _table() -> dict[str, Any]:
    path = Path(os.environ.get("QSYNC_PRICING_FILE") or Path(__file__).with_name("pricing.json"))
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read prices from {path}: {exc}") from exc
    return data


def model_info(model: str) -> dict[str, Any]:
    info: dict[str, Any] = _table().get("models", {}).get(model.removeprefix("models/"), {})
    return info


def price_per_million(model: str, *, batch_mode: bool = False) -> float:
    info = model_info(model)
    key = "batch_usd_per_million_tokens" if batch_mode else "usd_per_million_tokens"
    if key not in info:
        raise ConfigError(f"no price for {model!r} in the pricing table; pass --price-per-million")
    return float(info[key])


def media_price_per_million(model: str, *, batch_mode: bool = False) -> float:
    """USD per 1M image and PDF-page tokens (priced apart from text); a model without its own media price
    bills them as text."""
    info = model_info(model)
    key = "batch_usd_per_million_media_tokens" if batch_mode else "usd_per_million_media_tokens"
    return float(info[key]) if key in info else price_per_million(model, batch_mode=batch_mode)


def default_limits() -> tuple[int, int]:
    limits = _table().get("limits", {})
    return int(limits.get("texts_per_minute", 3000)), int(limits.get("tokens_per_minute", 1_000_000))
