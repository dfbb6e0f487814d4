"""The narrow interface every embedder implements, and how a job's spec builds one."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..spec import EmbedderSpec

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EmbedResult:
    vectors: Vectors  # (len(texts), dimensions), float32, in the order of the texts
    tokens_per_text: list[int]  # what each text cost; a per-request total is split by length
    tokens_estimated: bool = False  # True when the API reported no usage and we counted ourselves
    # Tokens per modality (TEXT, IMAGE, DOCUMENT) of the whole call, for multimodal calls; None for text.
    tokens_by_modality: dict[str, int] | None = None
    modality_estimated: bool = False  # True when the API's answer did not split them and we did


class Embedder(Protocol):
    """Turns texts into vectors, one API call per `embed`, no retries of its own: the run's one retry
    layer decides (retry.py). Raises TransientError (worth retrying), RateLimited (a 429), InvalidInput
    (the request's content was refused), PermanentError, PauseJob or StopJob."""

    model: str  # part of the cache key: a different model never reuses another's vectors
    dimensions: int
    task_type: str
    max_batch_texts: int  # texts per API call
    max_text_tokens: int  # longer texts are skipped at plan time
    price_per_million_tokens: float

    def embed(self, texts: list[str]) -> EmbedResult: ...


def request_chunks(embedder: Embedder, texts: list[str]) -> list[list[int]]:
    """Indices of `texts` cut into API calls: the embedder's own `request_chunks` when it has one (a
    byte limit, say), else runs of at most max_batch_texts."""
    own = getattr(embedder, "request_chunks", None)
    if own is not None:
        chunks: list[list[int]] = own(texts)
        return chunks
    size = max(1, embedder.max_batch_texts)
    return [list(range(i, min(i + size, len(texts)))) for i in range(0, len(texts), size)]


def default_limits(embedder: Embedder) -> tuple[float | None, float | None]:
    """(texts, tokens) per minute a run paces itself to when the settings name none."""
    limits: tuple[float | None, float | None] = getattr(embedder, "default_limits", (None, None))
    return limits


def build_embedder(spec: EmbedderSpec) -> Embedder:
    try:
        return _build(spec)
    except TypeError as exc:  # an option the embedder does not take
        raise ConfigError(f"embedder {spec.kind!r} cannot take the options {sorted(spec.options)}: {exc}") from exc


def _build(spec: EmbedderSpec) -> Embedder:
    kwargs = spec.factory_kwargs()
    if spec.kind == "hash":
        from .hashing import HashingEmbedder

        return HashingEmbedder(**kwargs)
    if spec.kind == "gemini":
        from .gemini import GeminiEmbedder

        return GeminiEmbedder(**kwargs)
    module_name, _, attr = spec.kind.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load embedder {spec.kind!r}: {exc}") from exc
    embedder: Embedder = factory(**kwargs)
    return embedder
