"""Gemini embeddings through google-genai (never the end-of-life google-generativeai): the Embedder of
batchEmbedContents, countTokens and Batch Mode. Every call goes through GeminiClient (gemini_client.py), the SDK's
boundary: one attempt, errors converted for the run's one retry layer, the key scrubbed.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from typing import Any

import numpy as np

from qsync.catalog.instructions import check_task, default_task, instruct, takes_instructions
from qsync.catalog.models import (
    DEFAULT_EMBEDDING_MODEL,
    default_limits,
    full_dimensions,
    max_batch_texts,
    max_request_bytes,
    price_per_million,
)
from qsync.catalog.tokens import estimate_tokens, media_tokens, text_token_limit
from qsync.embedders.gemini_client import GeminiClient, key_fingerprint
from qsync.embedders.protocol import EmbedResult, Media, Vectors, split_tokens, unit_length
from qsync.errors import (
    ConfigError,
    PermanentError,
    QsyncError,
    TransientError,
    billed,
)
from qsync.spec.defaults import DEFAULT_DIMENSIONS

DEFAULT_MODEL = DEFAULT_EMBEDDING_MODEL
# Batch Mode embeddings are marked experimental in the SDK; qsync uses them knowingly.
warnings.filterwarnings("ignore", message=r"batches\.create_embeddings\(\) is experimental")
_REQUEST_OVERHEAD_BYTES = 256  # JSON around each text in batchEmbedContents


class GeminiEmbedder:
    """One batchEmbedContents call per `embed`; retries and pacing belong to the run (engine.retry,
    engine.ratelimit), so a Pause or Ctrl-C reaches every wait."""

    task_type: str

    def __init__(
        self,
        dimensions: int = DEFAULT_DIMENSIONS,
        model: str = DEFAULT_MODEL,
        task_type: str | None = None,  # None: the model's record-side task (see default_task)
        price_per_million_tokens: float | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.api = GeminiClient(timeout_s=timeout_s, model=model)
        self.model = model.removeprefix("models/")
        self.dimensions = dimensions
        self.task_type = task_type or default_task(self.model)
        # gemini-embedding-2 takes no task_type: its task goes into each input as an instruction, and
        # each record must be its own Content (a list of plain strings is merged into ONE embedding).
        self.instructions = takes_instructions(self.model)
        if self.instructions:
            check_task(self.task_type)
        self.full_dimensions = full_dimensions(self.model)
        self.max_batch_texts = max_batch_texts(self.model)
        self.max_text_tokens = text_token_limit(self.model, self.task_type)
        self.max_request_bytes = max_request_bytes(self.model)
        override = price_per_million_tokens
        self.price_per_million_tokens = price_per_million(self.model, override=override)
        self.media_price_per_million_tokens = price_per_million(self.model, media=True, override=override)
        self.batch_price_per_million_tokens = price_per_million(self.model, batch_mode=True, override=override)
        texts, tokens = default_limits()
        self.default_limits: tuple[float | None, float | None] = (float(texts), float(tokens))

    @property
    def _client(self) -> Any:
        return self.api.client

    @property
    def _types(self) -> Any:
        return self.api.types

    def rate_limit_key(self) -> str:
        """Gemini's limits are per project and model (at one endpoint: a rehearsal emulator has limits of its own):
        one pace for every run of this machine with this key."""
        endpoint = os.environ.get("GOOGLE_GEMINI_BASE_URL", "")
        return f"gemini|{key_fingerprint(self.api.secret)}|{self.model}|{endpoint}"

    # -- Embedder interface --------------------------------------------------------------------------

    def sent_text(self, text: str) -> str:
        """What the API receives for a record's text: the text itself, or with the model's instruction."""
        return instruct(self.task_type, text) if self.instructions else text

    def _contents(self, texts: list[str]) -> Any:
        """The SDK's `contents`: plain strings for -001 (one request each), one Content per text for
        models that aggregate a list of strings into one embedding (gemini-embedding-2)."""
        if not self.instructions:
            return list(texts)
        types = self._types
        return [types.Content(parts=[types.Part(text=self.sent_text(t))]) for t in texts]

    @property
    def _task_type(self) -> str | None:
        """The Gemini task_type sent: none for a model that takes its task as an instruction in the text."""
        return None if self.instructions else (self.task_type or None)

    def _config(self) -> Any:
        return self._types.EmbedContentConfig(task_type=self._task_type, output_dimensionality=self.dimensions)

    def embed(self, texts: list[str]) -> EmbedResult:
        estimates = [estimate_tokens(self.sent_text(t)) for t in texts]
        answer = self._call(lambda: self.api.post_paid(f"{self._model_path}:batchEmbedContents", self._request(texts)),
                            "batchEmbedContents")  # fmt: skip
        if answer is not None:
            values = [e.get("values") if isinstance(e, dict) else None for e in answer.get("embeddings") or []]
            usage = answer.get("usageMetadata") or {}
            total = usage.get("promptTokenCount") or usage.get("totalTokenCount") if isinstance(usage, dict) else None
        else:  # an SDK whose transport takes no such request: its public method (nothing was sent above)
            config, contents = self._config(), self._contents(texts)
            response = self._call(
                lambda: self._client.models.embed_content(model=self.model, contents=contents, config=config),
                "batchEmbedContents",
            )
            values = [e.values for e in response.embeddings or []]
            usage = getattr(response, "usage_metadata", None)
            total = getattr(usage, "prompt_token_count", None) or getattr(usage, "total_token_count", None)
        # Past this point the API answered: it billed the call, whatever is wrong with the answer (maybe_billed).
        if len(values) != len(texts):
            raise TransientError(f"Gemini answered {len(values)} embeddings for {len(texts)} texts", maybe_billed=True)
        try:
            matrix = np.asarray(values, dtype=np.float32)
        except (TypeError, ValueError):
            raise billed(PermanentError("Gemini answered embeddings that are not lists of numbers")) from None
        if matrix.ndim != 2 or matrix.shape[1] != self.dimensions:
            size = matrix.shape[1] if matrix.ndim == 2 else "?"
            raise billed(PermanentError(f"Gemini answered vectors of size {size}, expected {self.dimensions}"))
        if self.dimensions < self.full_dimensions:
            matrix = unit_length(matrix)  # only the full-size output is normalised by the API
        if total:
            return EmbedResult(matrix, split_tokens(int(total), estimates))
        # No usage (batchEmbedContents sends none): our estimates, flagged. A run counts such calls' texts
        # afterwards, many calls in one countTokens call, off the batches' path (engine.counting).
        return EmbedResult(matrix, estimates, tokens_estimated=True)

    @property
    def _model_path(self) -> str:
        return self.model if "/" in self.model else f"models/{self.model}"

    def _request(self, texts: list[str]) -> dict[str, Any]:
        """The JSON the SDK's `embed_content` sends for these texts (tests/test_gemini.py holds it to that, request
        for request): one request per text, its Content marked as the user's for a plain string (-001); with the
        model's instruction in the text and no task type for gemini-embedding-2 (one Content per text)."""
        one: dict[str, Any] = {"outputDimensionality": self.dimensions, "model": self._model_path}
        if self._task_type:
            one["taskType"] = self._task_type
        role: dict[str, str] = {} if self.instructions else {"role": "user"}
        return {
            "requests": [{"content": {"parts": [{"text": self.sent_text(t)}], **role}, **one} for t in texts],
        }

    def embed_media(self, items: list[tuple[Media, str | None]]) -> EmbedResult:
        """One embedding per (media, caption): each item is ONE Content whose parts are the caption (when
        given, as the document instruction's text) and the media inline, so the model aggregates them into
        one vector. One API call; the caller keeps each call within the request-size limit."""
        if not self.instructions:
            raise ConfigError(f"{self.model} embeds text only; use gemini-embedding-2 for images and documents")
        types = self._types
        contents: Any = [
            types.Content(
                parts=[
                    *([types.Part(text=self.sent_text(caption))] if caption else []),
                    types.Part.from_bytes(data=media.data, mime_type=media.mime_type),
                ]
            )
            for media, caption in items
        ]
        response = self._call(
            lambda: self._client.models.embed_content(model=self.model, contents=contents, config=self._config()),
            "batchEmbedContents",
        )
        embeddings = response.embeddings or []
        if len(embeddings) != len(items):  # answered, so billed (see `embed`)
            raise TransientError(
                f"Gemini answered {len(embeddings)} embeddings for {len(items)} media records", maybe_billed=True
            )
        matrix = np.asarray([e.values for e in embeddings], dtype=np.float32)
        if self.dimensions < self.full_dimensions:
            matrix = unit_length(matrix)
        guessed = [media_token_estimate(m, self.sent_text(c) if c else None, self.model) for m, c in items]
        usage = getattr(response, "usage_metadata", None)
        total = int(getattr(usage, "prompt_token_count", None) or 0)
        if not total:  # no usage: our own estimates, labelled as such
            by_modality = sum((Counter(g) for g in guessed), Counter[str]())
            return EmbedResult(matrix, [sum(g.values()) for g in guessed], True, dict(by_modality), True)
        # The SDK parses `promptTokensDetails`; Google's reference names it `promptTokenDetails`, which the
        # SDK drops. Use the split when it arrives; otherwise split the exact total by our estimates.
        details = getattr(usage, "prompt_tokens_details", None) or []
        split = {str(getattr(d.modality, "value", d.modality)): int(d.token_count or 0) for d in details}
        estimated = not split
        if estimated:
            weights = sum((Counter(g) for g in guessed), Counter[str]())
            names = sorted(weights)
            split = dict(zip(names, split_tokens(total, [weights[n] for n in names]), strict=True))
        return EmbedResult(matrix, split_tokens(total, [sum(g.values()) for g in guessed]), False, split, estimated)

    def request_chunks(self, texts: list[str]) -> list[list[int]]:
        """Indices cut into calls of at most max_batch_texts texts and max_request_bytes bytes."""
        chunks: list[list[int]] = [[]]
        size = 0
        for i, text in enumerate(texts):
            cost = len(self.sent_text(text).encode("utf-8")) + _REQUEST_OVERHEAD_BYTES
            if chunks[-1] and (len(chunks[-1]) >= self.max_batch_texts or size + cost > self.max_request_bytes):
                chunks.append([])
                size = 0
            chunks[-1].append(i)
            size += cost
        return [c for c in chunks if c]

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the API counts for these texts (countTokens; free, but it is a call)."""
        # The request the SDK makes of one Content per text, sent as JSON through the SDK's transport (see post).
        contents: Any = [{"parts": [{"text": self.sent_text(t)}]} for t in texts]
        answer = self._call(
            lambda: self.api.post(f"models/{self.model}:countTokens", {"contents": contents}), "countTokens"
        )
        if answer is not None and "totalTokens" in answer:  # else (another shape, or none of it) the public method
            return int(answer["totalTokens"] or 0)
        response = self._call(
            lambda: self._client.models.count_tokens(model=self.model, contents=contents), "countTokens"
        )
        return int(response.total_tokens or 0)

    # -- Batch Mode (one attempt each; the Batch Mode stage retries) -----------------------------------

    def submit_batch(self, texts: list[str], display_name: str) -> str:
        """Submit texts as one Batch Mode job (half price, answered within 24 h); return its name."""
        types = self._types
        source = types.EmbeddingsBatchJobSource(
            inlined_requests=types.EmbedContentBatch(contents=self._contents(texts), config=self._config())
        )
        job = self._call(
            lambda: self._client.batches.create_embeddings(
                model=self.model, src=source, config=types.CreateEmbeddingsBatchJobConfig(display_name=display_name)
            ),
            "batches.create_embeddings",
        )
        return str(job.name)

    def poll_batch(self, name: str) -> tuple[str, Vectors | None, str | None]:
        """(state, vectors once succeeded, error once failed) of a Batch Mode job."""
        job = self._call(lambda: self._client.batches.get(name=name), "batches.get")
        state = str(getattr(job.state, "value", job.state) or "")
        if state.endswith("SUCCEEDED"):
            responses = (job.dest.inlined_embed_content_responses if job.dest else None) or []
            rows = []
            for item in responses:
                if item.error is not None or item.response is None or item.response.embedding is None:
                    return "JOB_STATE_FAILED", None, f"an item of {name} failed: {item.error}"
                rows.append(item.response.embedding.values or [])
            matrix = np.asarray(rows, dtype=np.float32)
            if self.dimensions < self.full_dimensions and len(matrix):
                matrix = unit_length(matrix)
            return state, matrix, None
        if state.endswith(("FAILED", "CANCELLED", "EXPIRED")):
            return state, None, str(job.error or state)
        return state, None, None

    def find_batches(self, display_names: set[str]) -> dict[str, str]:
        """display name -> name of the project's Batch Mode jobs with these names (batches.list, every page: the
        Developer API filters nothing server-side)."""
        config = self._types.ListBatchJobsConfig(page_size=100)

        def scan() -> dict[str, str]:
            return {
                str(job.display_name): str(job.name)
                for job in self._client.batches.list(config=config)
                if job.display_name in display_names
            }

        return dict(self._call(scan, "batches.list")) if display_names else {}

    def count_tokens_many(self, texts: list[str]) -> list[int]:
        """Per-text token counts via countTokens, one call per request's worth; estimates if it fails."""
        counts: list[int] = []
        for chunk in self.request_chunks(texts):
            part = [texts[i] for i in chunk]
            estimates = [estimate_tokens(self.sent_text(t)) for t in part]
            try:
                counts.extend(split_tokens(self.count_tokens(part), estimates))
            except QsyncError:
                counts.extend(estimates)
        return counts

    def _call(self, fn: Any, what: str) -> Any:
        return self.api.call(fn, what)


def media_token_estimate(media: Media, caption: str | None, model: str) -> dict[str, int]:
    """Tokens a media record should cost, per modality, before the API says: its image or pages (the one
    media estimate, catalog.tokens) and its caption as sent, at ~4 bytes a token."""
    found = media_tokens(media.modality, media.pages, model)
    if caption:
        found["TEXT"] = estimate_tokens(caption)
    return found
