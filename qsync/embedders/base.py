"""The narrow interface every embedder implements, and how a job's config rebuilds one."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EmbedResult:
    vectors: Vectors  # (len(texts), dimensions), float32, in the order of the texts
    tokens_per_text: list[int]  # what each text cost; a per-request total is split by length
    tokens_estimated: bool = False  # True when the API reported no usage and we counted ourselves


class Embedder(Protocol):
    """Turns texts into vectors. Raises TransientError (retry) or PermanentError (give up)."""

    model: str  # part of the cache key: a different model never reuses another's vectors
    dimensions: int
    task_type: str
    max_batch_texts: int  # texts per API request
    max_text_tokens: int  # longer texts are skipped at plan time
    price_per_million_tokens: float

    def embed(self, texts: list[str]) -> EmbedResult: ...


@dataclass(frozen=True)
class EmbedderSpec:
    """What a job stores to rebuild its embedder on resume. Never holds a secret."""

    kind: str  # "hash", "gemini", or "package.module:factory" for your own
    dimensions: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "dimensions": self.dimensions, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbedderSpec:
        return cls(data["kind"], data.get("dimensions"), dict(data.get("options") or {}))


def build_embedder(spec: EmbedderSpec) -> Embedder:
    try:
        return _build(spec)
    except TypeError as exc:  # an option the embedder does not take
        raise ConfigError(f"embedder {spec.kind!r} cannot take the options {sorted(spec.options)}: {exc}") from exc


def _build(spec: EmbedderSpec) -> Embedder:
    if spec.kind == "hash":
        from .hashing import HashingEmbedder

        return HashingEmbedder(dimensions=spec.dimensions or 768, **spec.options)
    if spec.kind == "gemini":
        from .gemini import GeminiEmbedder

        return GeminiEmbedder(dimensions=spec.dimensions or 768, **spec.options)
    if ":" in spec.kind:
        module_name, _, attr = spec.kind.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"cannot load embedder {spec.kind!r}: {exc}") from exc
        embedder: Embedder = factory(dimensions=spec.dimensions, **spec.options)
        return embedder
    raise ConfigError(f"unknown embedder {spec.kind!r}: use 'hash', 'gemini' or 'package.module:factory'")
