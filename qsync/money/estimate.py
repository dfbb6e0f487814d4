"""What a backfill will cost before it runs: records, tokens, dollars (standard and Batch Mode) and minutes,
for a source (`estimate`, `compare_models`) or for the records a job planned (`estimate_texts`).

Text tokens are estimated at ~4 bytes each (catalog.tokens, with the model's instruction if it takes one); when
a key is set, countTokens on a sample calibrates that estimate. Images and PDF pages count as catalog.tokens
says, at the media price. Texts already in the embedding cache are not counted: they cost nothing.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from qsync.catalog.instructions import default_task
from qsync.catalog.models import (
    DEFAULT_EMBEDDING_MODEL,
    default_limits,
    embedding_models,
    max_batch_texts,
    multimodal,
    output_price_per_million,
    price_per_million,
)
from qsync.catalog.tokens import estimate_tokens, instruction_tokens, per_image, per_page, text_token_limit
from qsync.clock import SYSTEM_CLOCK
from qsync.embedders.gemini_client import api_key_from_env
from qsync.engine.counting import COUNT_TEXTS
from qsync.engine.ratelimit import SAFETY
from qsync.errors import ConfigError, QsyncError
from qsync.input.plan import plan_job
from qsync.input.sources import SourceLike, as_source
from qsync.ledger.cache import cached_hashes
from qsync.ledger.ledger import Ledger
from qsync.ledger.queries import manifest_texts, skip_reasons
from qsync.spec.chunking import Chunking
from qsync.spec.columns import Columns
from qsync.spec.defaults import DEFAULT_DIMENSIONS, resolve_db
from qsync.spec.enrich import EnrichSpec

PathLike = str | os.PathLike[str]
CountTokens = Callable[[list[str]], int]


@dataclass(frozen=True)
class PlanLimits:
    """What planning and the cache key need of a Gemini model, without building an embedder (no key, no network)."""

    model: str
    dimensions: int
    task_type: str
    max_text_tokens: int
    max_batch_texts: int


def plan_limits(model: str, dimensions: int, task_type: str | None = None) -> PlanLimits:
    task = task_type or default_task(model)
    return PlanLimits(model, dimensions, task, text_token_limit(model, task), max_batch_texts(model))


@dataclass(frozen=True)
class TextsEstimate:
    """Tokens of the contents a job will embed (those not cached), text and media apart."""

    texts_to_embed: int
    text_tokens: int
    media_tokens: int
    basis: str

    @property
    def tokens(self) -> int:
        return self.text_tokens + self.media_tokens

    def cost_usd(self, model: str, *, batch_mode: bool = False, text_price: float | None = None) -> float:
        """Dollars: text tokens at `text_price` (default: the model's), media at the model's media price."""
        if text_price is None:
            text_price = price_per_million(model, batch_mode=batch_mode)
        media_price = price_per_million(model, batch_mode=batch_mode, media=True)
        return (self.text_tokens * text_price + self.media_tokens * media_price) / 1e6


def paced_minutes(
    texts: int, tokens: int, texts_per_minute: float | None = None, tokens_per_minute: float | None = None
) -> float:
    """Minutes to send `texts` of `tokens` tokens at these limits (Gemini's defaults when None), at the rate
    limiter's safety margin: whichever limit binds."""
    default_texts, default_tokens = default_limits()
    texts_limit = (texts_per_minute or default_texts) * SAFETY
    tokens_limit = (tokens_per_minute or default_tokens) * SAFETY
    return max(texts / texts_limit, tokens / tokens_limit) if texts else 0.0


@dataclass(frozen=True)
class Uncached:
    """What of a job's distinct contents the embedding cache does not hold: how many, their own text tokens
    (estimated, the media part apart), their media tokens, how many send a text (a media record without a caption
    sends none), and a sample of those (columns text, own) to calibrate on."""

    contents: int
    own_tokens: int
    media_tokens: int
    sent: int
    sample: pd.DataFrame


def estimate_texts(
    texts: pd.DataFrame,
    limits: PlanLimits,
    *,
    db: PathLike | None,
    sample: int = 200,
    count_tokens: CountTokens | None = None,
) -> TextsEstimate:
    """Tokens of `texts` (queries.manifest_texts rows) that the embedding cache of `db` does not hold yet
    (`estimate_uncached`)."""
    cached = _cached(db, limits, list(texts["content_hash"]))
    todo = texts[~texts["content_hash"].isin(cached)]
    own = (todo["token_estimate"] - todo["media_tokens"]).astype(int)
    sent = todo["text"] != ""
    # The sample: the contents whose hashes sort first (a sha256 is random enough), as the ledger's SQL picks them.
    picked = todo[sent].assign(own=own[sent]).sort_values("content_hash").head(sample)[["text", "own"]]
    found = Uncached(len(todo), int(own.sum()), int(todo["media_tokens"].sum()), int(sent.sum()), picked)
    return estimate_uncached(found, limits, count_tokens)


def estimate_uncached(found: Uncached, limits: PlanLimits, count_tokens: CountTokens | None = None) -> TextsEstimate:
    """The tokens of what is not cached: a text's tokens are its estimate less its media part; a model that takes its
    task as an instruction is billed for the instruction too, on every text it receives. `count_tokens(texts) -> int`
    calibrates the text part on the sample."""
    added = instruction_tokens(limits.model, limits.task_type)
    text_tokens = found.own_tokens + added * found.sent
    basis = "estimated at ~4 bytes per token"
    picked = found.sample
    if count_tokens is not None and len(picked):
        try:
            counted = sum(int(count_tokens(chunk)) for chunk in _chunks(list(picked["text"]), COUNT_TEXTS))  # one call
        except QsyncError as exc:  # the estimate stands uncalibrated: it must never stop a plan
            basis += f" (countTokens failed: {exc})"
        else:
            ratio = counted / max(1, int(picked["own"].sum()) + added * len(picked))
            text_tokens = round(text_tokens * ratio)
            basis = f"estimate calibrated with countTokens on {len(picked)} texts (ratio {ratio:.3f})"
    if found.media_tokens:
        basis += (
            f"; images at {per_image(limits.model)} tokens, PDF pages at {per_page(limits.model)} each "
            "(inferred from Google's per-image price)"
        )
    return TextsEstimate(found.contents, text_tokens, found.media_tokens, basis)


def estimate(
    source: SourceLike,
    *,
    id_column: str = "id",
    text_column: str | None = "text",
    text_template: str | None = None,
    image_column: str | None = None,
    document_column: str | None = None,
    model: str = DEFAULT_EMBEDDING_MODEL,
    dimensions: int = DEFAULT_DIMENSIONS,
    task_type: str | None = None,
    texts_per_minute: float | None = None,
    tokens_per_minute: float | None = None,
    db: PathLike | None = None,
    source_db: str | None = None,
    sample: int = 200,
    count_tokens: CountTokens | None = None,
    chunk_tokens: int | None = None,
    chunk_overlap: int = 0,
    enrich: EnrichSpec | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Records, tokens, dollars and duration of a Gemini backfill, before running it; nothing is embedded. Texts
    and media already in the embedding cache of `db` are not counted. Long texts are cut into chunks as the job
    would cut them (`chunk_tokens`, `chunk_overlap`: spec.chunking), each a text to embed and a point. With
    `enrich` (a prompt, a model, and max_output_tokens), the enrichment calls too: their prompt tokens,
    estimated, and the most their answers can cost (every answer at max_output_tokens), which is what the budget
    reserves per call."""
    enrich_spec = EnrichSpec(**dict(enrich)) if isinstance(enrich, Mapping) else enrich
    if (image_column or document_column) and not multimodal(model):
        raise ConfigError(f"{model} embeds text only: estimate images and documents with model='gemini-embedding-2'")
    media = bool(image_column or document_column)
    limits = plan_limits(model, dimensions, task_type)
    columns = Columns(id_column, None if text_template else text_column, text_template,
                      image_column=image_column, document_column=document_column)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="qsync-estimate-") as tmp, Ledger(Path(tmp) / "estimate.duckdb") as scratch:
        summary = plan_job(
            scratch, "estimate", as_source(source, database=source_db), columns, limits,
            {}, "estimate", limits.max_batch_texts, SYSTEM_CLOCK, chunking=Chunking(chunk_tokens, chunk_overlap),
        )  # fmt: skip
        texts = manifest_texts(scratch, "estimate")
        reasons = skip_reasons(scratch, "estimate")
    counter = count_tokens
    if counter is None and api_key_from_env():
        from qsync.embedders.gemini import GeminiEmbedder

        counter = GeminiEmbedder(dimensions=dimensions, model=model, task_type=limits.task_type).count_tokens
    found = estimate_texts(texts, limits, db=db, sample=sample, count_tokens=counter)
    default_texts, default_tokens = default_limits()
    todo, tokens = found.texts_to_embed, found.tokens
    enrichment = {} if enrich_spec is None else enrichment_estimate(enrich_spec, summary.valid_records, texts)
    return {
        "records": summary.total_records,
        "valid_records": summary.valid_records,
        "skipped_records": summary.skipped_records,
        "skip_reasons": reasons,
        "chunks": summary.chunks,
        "unique_texts": len(texts),
        "cached_texts": len(texts) - todo,
        "texts_to_embed": todo,
        "tokens": tokens,
        "media_tokens": found.media_tokens,
        "tokens_basis": found.basis,
        "model": model,
        "cost_usd": found.cost_usd(model),
        # qsync's Batch Mode submits texts only: a media job has no Batch Mode price to offer (spec.job refuses it).
        "cost_usd_batch_mode": None if media else found.cost_usd(model, batch_mode=True),
        "expected_minutes": round(paced_minutes(todo, tokens, texts_per_minute, tokens_per_minute), 2),
        "texts_per_minute": texts_per_minute or default_texts,
        "tokens_per_minute": tokens_per_minute or default_tokens,
        **enrichment,
    }


def enrichment_estimate(spec: EnrichSpec, records: int, texts: pd.DataFrame) -> dict[str, Any]:
    """One generateContent call per record: prompt tokens at ~4 bytes a token (the template's own words, plus the
    texts: their mean over the distinct texts), and answers of at most max_output_tokens, at the model's prices."""
    template = estimate_tokens(re.sub(r"\{[^{}]*\}", "", spec.prompt))
    mean_text = float(texts["token_estimate"].mean()) if len(texts) else 0.0
    prompt_tokens = round(records * (template + mean_text))
    answer_tokens = records * spec.max_output_tokens
    most = (prompt_tokens * price_per_million(spec.model) + answer_tokens * output_price_per_million(spec.model)) / 1e6
    return {
        "enrich_model": spec.model,
        "enrich_calls": records,
        "enrich_prompt_tokens": prompt_tokens,
        "enrich_max_output_tokens": spec.max_output_tokens,
        "enrich_cost_usd_at_most": most,
    }


def compare_models(source: SourceLike, *, models: Sequence[str] | None = None, **options: Any) -> pd.DataFrame:
    """`estimate` of the same source for each embedding model (default: every priced one), one row each. The
    models differ in more than price: a text -001 cuts into chunks may fit -2's 8,192 tokens whole, and -2 is billed
    for the instruction it receives with every text. With a media column, only the models that embed media are
    compared."""
    rows = []
    media = options.get("image_column") or options.get("document_column")
    # One source for every model: a DataFrame is converted once, and a RecordBatchReader (read once only) is read once.
    source = as_source(source, database=options.pop("source_db", None))
    for model in models or [m for m in embedding_models() if not media or multimodal(m)]:
        found = estimate(source, model=model, **options)
        rows.append({
            "model": model, "records": found["records"], "chunks": found["chunks"],
            "skipped_records": found["skipped_records"],
            "texts_to_embed": found["texts_to_embed"], "tokens": found["tokens"],
            "media_tokens": found["media_tokens"], "cost_usd": found["cost_usd"],
            "cost_usd_batch_mode": found["cost_usd_batch_mode"], "expected_minutes": found["expected_minutes"],
            "tokens_basis": found["tokens_basis"],
        })  # fmt: skip
    return pd.DataFrame(rows)


def _cached(db: PathLike | None, limits: PlanLimits, hashes: Sequence[str]) -> set[str]:
    path = resolve_db(db)
    if not path.exists() or not hashes:
        return set()
    with Ledger(path, create=False) as ledger, ledger.reading() as con:
        return cached_hashes(con, limits, list(hashes))


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)] if items else []
