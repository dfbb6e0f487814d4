"""How a job's spec becomes an embedder: the offline hashing one, Gemini, or your own `package.module:factory`
(called with the spec's keyword arguments: `dimensions`, plus its options)."""

from __future__ import annotations

import importlib

from qsync.embedders.protocol import Embedder
from qsync.errors import ConfigError
from qsync.spec.embedder import EmbedderSpec


def build_embedder(spec: EmbedderSpec) -> Embedder:
    try:
        embedder = _build(spec)
    except TypeError as exc:  # an option the embedder does not take
        raise ConfigError(f"embedder {spec.kind!r} cannot take the options {sorted(spec.options)}: {exc}") from exc
    if not isinstance(embedder, Embedder):
        raise ConfigError(
            f"embedder {spec.kind!r} lacks what qsync needs of an embedder (model, dimensions, task_type, "
            "max_batch_texts, max_text_tokens, price_per_million_tokens and embed(texts)); see the README"
        )
    return embedder


def _build(spec: EmbedderSpec) -> object:
    kwargs = spec.factory_kwargs()
    if spec.kind == "hash":
        from qsync.embedders.hashing import HashingEmbedder

        return HashingEmbedder(**kwargs)
    if spec.kind == "gemini":
        from qsync.embedders.gemini import GeminiEmbedder

        return GeminiEmbedder(**kwargs)
    module_name, _, attr = spec.kind.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load embedder {spec.kind!r}: {exc}") from exc
    return factory(**kwargs)
