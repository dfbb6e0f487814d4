"""The narrow interface every embedder implements, and the optional capabilities an embedder may have.

An embedder is any object with the attributes and the `embed` method of `Embedder`; qsync finds what more it
can do by the capability protocols below (each checked with `isinstance`, so mypy checks them too, and a custom
`package.module:factory` embedder gains a capability by having its methods):

- `CountsTokens`: `count_tokens(texts)`, the API's own count, used to price answers that carry no usage and to
  count exactly what a crash left unconfirmed;
- `HasRequestLimits`: `request_chunks(texts)`, how texts are cut into calls (a byte limit per request, say);
- `HasRateLimits`: the per-minute limits a run paces itself to when none are given, and the key of the quota
  they belong to (runs of one process that share a key share one limiter);
- `EmbedsMedia`: `embed_media(items)`, one vector per image or document (with its caption);
- `SubmitsBatches`: Gemini Batch Mode (submit, poll, count), half price, answered within hours.

Embedders make exactly one attempt per call (the run's one retry layer decides about retries) and raise
qsync's errors: TransientError (worth retrying), RateLimited (a 429), InvalidInput (the request's content was
refused), PermanentError, PauseJob or StopJob.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EmbedResult:
    vectors: Vectors  # (len(texts), dimensions), float32, in the order of the texts
    tokens_per_text: list[int]  # what each text cost; a per-request total is split by length
    tokens_estimated: bool = False  # True when the API reported no usage: qsync's estimates (a run counts them later)
    # Tokens per modality (TEXT, IMAGE, DOCUMENT) of the whole call, for multimodal calls; None for text.
    tokens_by_modality: dict[str, int] | None = None
    modality_estimated: bool = False  # True when the API's answer did not split them and we did


@dataclass(frozen=True)
class Media:
    """An image or a document, checked, as an embedder receives it."""

    mime_type: str  # image/png, image/jpeg or application/pdf
    data: bytes
    pages: int = 0  # PDF pages counted (0: not a PDF, or not countable cheaply)

    @property
    def modality(self) -> str:
        return "DOCUMENT" if self.mime_type == "application/pdf" else "IMAGE"


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors, one API call per `embed`."""

    model: str  # part of the cache key: a different model never reuses another's vectors
    dimensions: int
    task_type: str  # part of the cache key too ("" when the embedder has none)
    max_batch_texts: int  # texts per API call
    max_text_tokens: int  # longer texts are skipped at plan time
    price_per_million_tokens: float  # 0 for a free embedder: it then records no spend intents

    def embed(self, texts: list[str]) -> EmbedResult: ...


@runtime_checkable
class CountsTokens(Protocol):
    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the API counts for these texts, all together (a free call, but a call)."""
        ...


@runtime_checkable
class HasRequestLimits(Protocol):
    def request_chunks(self, texts: list[str]) -> list[list[int]]:
        """Indices of `texts` cut into API calls within the embedder's request limits."""
        ...


@runtime_checkable
class HasRateLimits(Protocol):
    default_limits: tuple[float | None, float | None]  # texts and tokens per minute when a run gives none

    def rate_limit_key(self) -> str:
        """Who the limits belong to (a hash of the API key and the model): runs that share it share a pace."""
        ...


@runtime_checkable
class EmbedsMedia(Protocol):
    media_price_per_million_tokens: float
    max_request_bytes: int

    def embed_media(self, items: list[tuple[Media, str | None]]) -> EmbedResult:
        """One vector per (media, caption) item, in one call."""
        ...


@runtime_checkable
class SubmitsBatches(Protocol):
    batch_price_per_million_tokens: float

    def submit_batch(self, texts: list[str], display_name: str) -> str:
        """Submit texts as one Batch Mode job named `display_name`; return the job's resource name."""
        ...

    def poll_batch(self, name: str) -> tuple[str, Vectors | None, str | None]:
        """(state, vectors once succeeded, error once failed) of a Batch Mode job."""
        ...

    def find_batches(self, display_names: set[str]) -> dict[str, str]:
        """display name -> resource name of the project's Batch Mode jobs named so (a submit whose answer was lost
        may have created one)."""
        ...

    def count_tokens_many(self, texts: list[str]) -> list[int]:
        """Per-text token counts (for pricing a Batch Mode job's answer)."""
        ...


def request_chunks(embedder: Embedder, texts: list[str]) -> list[list[int]]:
    """Indices of `texts` cut into API calls: the embedder's own `request_chunks` when it has one, else runs of
    at most max_batch_texts."""
    if isinstance(embedder, HasRequestLimits):
        return embedder.request_chunks(texts)
    size = max(1, embedder.max_batch_texts)
    return [list(range(i, min(i + size, len(texts)))) for i in range(0, len(texts), size)]


def default_limits(embedder: Embedder) -> tuple[float | None, float | None]:
    """(texts, tokens) per minute a run paces itself to when the settings name none."""
    return embedder.default_limits if isinstance(embedder, HasRateLimits) else (None, None)


def split_tokens(total: int, estimates: list[int]) -> list[int]:
    """Share a per-request token total among its texts in proportion to their estimates, summing exactly."""
    weight = sum(estimates) or 1
    raw = [total * e / weight for e in estimates]
    shares = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - shares[i], reverse=True)[: total - sum(shares)]:
        shares[i] += 1
    return shares


def unit_length(matrix: Vectors) -> Vectors:
    """Each row scaled to length 1: what a shortened (Matryoshka) vector needs for cosine. Gemini normalises only its
    full-size output; a smaller size is its first dimensions, which qsync normalises here (the API's answer at that
    size, or the cache's full-size vector cut to it: the same vector)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.asarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)


def shortened(vectors: Vectors, dimensions: int) -> Vectors:
    """Vectors of a Matryoshka model at a smaller size (one vector, or rows): their first `dimensions`, unit length,
    which is the model's vector at that size as qsync uses it."""
    rows = unit_length(np.atleast_2d(vectors)[:, :dimensions])
    return rows.reshape(-1) if vectors.ndim == 1 else rows
