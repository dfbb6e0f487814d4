"""Money: what a job will cost before it runs, what it cost, and what resume and the cache saved.

Costs are recorded per batch when the vectors are persisted (ledger.record_embeddings), from the tokens
the API reported (usageMetadata), else counted (countTokens), else estimated (flagged in the ledger).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import mediatokens
from .cache import cache_key
from .clock import SYSTEM_CLOCK, Clock
from .config import resolve_db
from .embedders.gemini import DEFAULT_MODEL, api_key_from_env, default_task, text_token_limit
from .embedders.instructions import overhead_bytes, takes_instructions
from .errors import ConfigError
from .figures import read_figures
from .plan import create_job as plan_job
from .pricing import _table as _pricing_table
from .pricing import default_limits, media_price_per_million, model_info, price_per_million
from .ratelimit import SAFETY
from .sources import Columns, Source, as_source
from .spec import EmbedderSpec
from .store import Store, open_store

PathLike = str | os.PathLike[str]


def _price(config: dict[str, Any]) -> float:
    embedder = EmbedderSpec.from_dict(config["embedder"])
    if "price_per_million_tokens" in embedder.options:
        return float(embedder.options["price_per_million_tokens"])
    if embedder.kind == "gemini":
        return price_per_million(embedder.resolved_model)
    return 0.0


def cost(job: str, *, db: PathLike | None = None, clock: Clock = SYSTEM_CLOCK) -> pd.DataFrame:
    """One row: tokens and dollars spent (the same figures as `status`), and what the cache and resumes saved."""
    store = open_store(resolve_db(db), writable=False)
    figures = read_figures(store, clock, job)
    price = _price(json.loads(store.query_rows("SELECT config FROM jobs WHERE job_id = ?", [job])[0][0]))
    savings = store.query_df(
        """
        WITH runs AS (
            SELECT lease_token, min(started_at) AS started FROM attempts WHERE job_id = $1 GROUP BY lease_token
        ), done AS (
            SELECT a.batch_no, min(a.finished_at) AS finished FROM attempts a
            WHERE a.job_id = $1 AND a.outcome = 'done' GROUP BY a.batch_no
        ), resumed AS (  -- for each run after the first: the batches it found done and did not redo
            SELECT coalesce(sum(b.records), 0) AS records, coalesce(sum(b.tokens), 0) AS tokens
            FROM runs r JOIN done d ON d.finished < r.started JOIN batches b ON b.job_id = $1 AND b.batch_no = d.batch_no
        )
        SELECT CAST((SELECT records FROM resumed) AS BIGINT) AS resume_skipped_records,
               CAST((SELECT tokens FROM resumed) AS BIGINT) AS resume_saved_tokens,
               (SELECT count(*) FROM runs) AS runs
        """,
        [job],
    )
    row = figures.iloc[0]
    frame = pd.DataFrame(
        [
            {
                "job": job,
                "texts_embedded": int(row["embedded_texts"]),
                "tokens": int(row["tokens"]),
                "tokens_estimated": bool(row["tokens_estimated"]),
                "cost_usd": float(row["cost_usd"]),
                "unconfirmed_tokens": int(row["unconfirmed_tokens"]),
                "unconfirmed_cost_usd": float(row["unconfirmed_cost_usd"]),
                "embed_cost_usd": float(row["embed_cost_usd"]),
                "cache_hits": int(row["cache_hits"]),
                "cache_saved_tokens": int(row["saved_tokens"]),
                "resume_skipped_records": int(savings["resume_skipped_records"].iloc[0]),
                "resume_saved_tokens": int(savings["resume_saved_tokens"].iloc[0]),
                "runs": int(savings["runs"].iloc[0]),
                "batch_mode_texts": int(row["batch_mode_texts"]),
                "batch_mode_tokens": int(row["batch_mode_tokens"]),
                "batch_mode_cost_usd": float(row["batch_mode_cost_usd"]),
                "enrich_tokens": int(row["enrich_tokens"]),
                "enrich_cost_usd": float(row["enrich_cost_usd"]),
                "max_cost_usd": None if pd.isna(row["max_cost_usd"]) else float(row["max_cost_usd"]),
                "price_usd_per_million_tokens": price,
            }
        ]
    )
    frame["cache_saved_usd"] = frame["cache_saved_tokens"] * price / 1e6
    frame["resume_saved_usd"] = frame["resume_saved_tokens"] * price / 1e6
    return frame


def cost_over_time(job: str, *, db: PathLike | None = None) -> pd.DataFrame:
    """Cumulative records, tokens and dollars as batches finished."""
    return open_store(resolve_db(db), writable=False).query_df(
        """SELECT finished_at, batch_no, records - skipped_records AS records, tokens, cost_usd,
                  sum(records - skipped_records) OVER w AS cumulative_records,
                  sum(tokens) OVER w AS cumulative_tokens, sum(cost_usd) OVER w AS cumulative_cost_usd
           FROM batches WHERE job_id = ? AND status = 'done'
           WINDOW w AS (ORDER BY finished_at, batch_no ROWS UNBOUNDED PRECEDING)
           ORDER BY finished_at, batch_no""",
        [job],
    )


def tokens_by_modality(job: str, *, db: PathLike | None = None) -> pd.DataFrame:
    """The job's embedding tokens and dollars, text and media (images, PDF pages) apart, as each is priced.
    `split` says where the division comes from: the API's per-modality usage, or qsync's own estimates
    when the answer's split did not reach it (google-genai drops `promptTokenDetails`)."""
    store = open_store(resolve_db(db), writable=False)
    config = json.loads(store.query_rows("SELECT config FROM jobs WHERE job_id = ?", [job])[0][0])
    tokens, media, estimated = store.query_rows(
        "SELECT coalesce(sum(tokens), 0), coalesce(sum(media_tokens), 0), coalesce(bool_or(media_tokens_estimated), "
        "false) FROM batches WHERE job_id = ?",
        [job],
    )[0]
    embedder = EmbedderSpec.from_dict(config["embedder"])
    media_price = media_price_per_million(embedder.resolved_model) if embedder.kind == "gemini" else 0.0
    # One origin for both rows: the text's share is what the media's share leaves of the total.
    split = "estimated by qsync" if estimated else "reported by the API" if media else "all text"
    text = int(tokens) - int(media)
    rows = [
        ("text (captions, instructions)", text, text * _price(config) / 1e6, split),
        ("images and PDF pages", int(media), int(media) * media_price / 1e6, split),
    ]
    return pd.DataFrame(rows, columns=["modality", "tokens", "cost_usd", "split"])


@dataclass
class _PlanLimits:
    """What planning needs of an embedder, without building one (no key, no network)."""

    model: str
    dimensions: int
    task_type: str
    max_text_tokens: int
    max_batch_texts: int
    price_per_million_tokens: float = 0.0


def estimate(
    source: Source | pd.DataFrame | PathLike,
    *,
    id_column: str = "id",
    text_column: str | None = "text",
    text_template: str | None = None,
    image_column: str | None = None,
    document_column: str | None = None,
    model: str = DEFAULT_MODEL,
    dimensions: int = 768,
    task_type: str | None = None,
    texts_per_minute: float | None = None,
    tokens_per_minute: float | None = None,
    db: PathLike | None = None,
    source_db: str | None = None,
    sample: int = 200,
    count_tokens: Any = None,
) -> dict[str, Any]:
    """Records, tokens, dollars and duration of a Gemini backfill, before running it; nothing is embedded.

    Text tokens are estimated at ~4 bytes each (with the model's instruction, if it takes one); when a key
    is set, countTokens on a sample of `sample` texts calibrates that estimate. With a media column, each
    image or PDF page counts as mediatokens.py says, at the media price. Texts and media already in the
    embedding cache of `db` are not counted."""
    if (image_column or document_column) and not model_info(model).get("multimodal"):
        raise ConfigError(f"{model} embeds text only: estimate images and documents with model='gemini-embedding-2'")
    media = bool(image_column or document_column)
    limits = plan_limits(model, dimensions, task_type)
    columns = Columns(id_column, None if text_template else text_column, text_template,
                      image_column=image_column, document_column=document_column)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="qsync-estimate-") as tmp:
        scratch = Store(str(Path(tmp) / "estimate.duckdb"), writable=True)
        try:
            summary = plan_job(
                scratch, "estimate", as_source(source, database=source_db), columns, limits,
                {}, "estimate", limits.max_batch_texts, SYSTEM_CLOCK,
            )  # fmt: skip
            texts = scratch.query_df(MANIFEST_TEXTS, ["estimate"])
            reasons = scratch.query_rows("SELECT reason, count(*) FROM skipped GROUP BY reason ORDER BY 2 DESC")
        finally:
            scratch.close()
    counter = count_tokens
    if counter is None and api_key_from_env():
        from .embedders.gemini import GeminiEmbedder

        counter = GeminiEmbedder(dimensions=dimensions, model=model, task_type=limits.task_type).count_tokens
    found = estimate_texts(texts, limits, db=db, sample=sample, count_tokens=counter)
    default_texts, default_tokens = default_limits()
    todo, tokens = found.texts_to_embed, found.tokens
    minutes = paced_minutes(todo, tokens, texts_per_minute, tokens_per_minute)
    return {
        "records": summary.total_records,
        "valid_records": summary.valid_records,
        "skipped_records": summary.skipped_records,
        "skip_reasons": {reason: int(n) for reason, n in reasons},
        "unique_texts": len(texts),
        "cached_texts": len(texts) - todo,
        "texts_to_embed": todo,
        "tokens": tokens,
        "media_tokens": found.media_tokens,
        "tokens_basis": found.basis,
        "model": model,
        "cost_usd": found.cost_usd(model),
        # qsync's Batch Mode submits texts only: a media job has no Batch Mode price to offer (spec.py refuses it).
        "cost_usd_batch_mode": None if media else found.cost_usd(model, batch_mode=True),
        "expected_minutes": round(minutes, 2),
        "texts_per_minute": texts_per_minute or default_texts,
        "tokens_per_minute": tokens_per_minute or default_tokens,
    }


# What an estimate reads of a planned manifest: each distinct content once, its text (a media record's
# caption), its token estimate, and the media part of it.
MANIFEST_TEXTS = """
    SELECT content_hash, any_value(text) AS text, any_value(token_estimate) AS token_estimate,
           any_value(coalesce(media_tokens, 0)) AS media_tokens
    FROM manifest WHERE job_id = ? GROUP BY content_hash"""


def paced_minutes(
    texts: int, tokens: int, texts_per_minute: float | None = None, tokens_per_minute: float | None = None
) -> float:
    """Minutes to send `texts` of `tokens` tokens at these limits (Gemini's defaults when None), at the
    rate limiter's safety margin: whichever limit binds."""
    default_texts, default_tokens = default_limits()
    texts_limit = (texts_per_minute or default_texts) * SAFETY
    tokens_limit = (tokens_per_minute or default_tokens) * SAFETY
    return max(texts / texts_limit, tokens / tokens_limit) if texts else 0.0


def plan_limits(model: str, dimensions: int, task_type: str | None = None) -> _PlanLimits:
    """What planning and the cache key need of a Gemini model, without building an embedder."""
    task = task_type or default_task(model)
    info = model_info(model)
    return _PlanLimits(model, dimensions, task, text_token_limit(model, task), int(info.get("max_batch_texts", 100)))


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
        return (
            self.text_tokens * text_price + self.media_tokens * media_price_per_million(model, batch_mode=batch_mode)
        ) / 1e6


def estimate_texts(
    texts: pd.DataFrame, limits: _PlanLimits, *, db: PathLike | None, sample: int = 200, count_tokens: Any = None
) -> TextsEstimate:
    """Tokens of `texts` (MANIFEST_TEXTS rows) that the embedding cache of `db` does not hold yet.

    A text's tokens are its token estimate less its media part; a model that takes its task as an
    instruction is billed for the instruction too, on every text it receives (a media record without a
    caption sends none). `count_tokens(texts) -> int` calibrates the text part on a sample."""
    cached = _cached_hashes(db, limits, list(texts["content_hash"]))
    todo = texts[~texts["content_hash"].isin(cached)]
    own = (todo["token_estimate"] - todo["media_tokens"]).astype(int)
    sent = todo["text"] != ""
    added = -(-overhead_bytes(limits.task_type) // 4) if takes_instructions(limits.model) else 0
    text_tokens = int(own.sum()) + added * int(sent.sum())
    basis = "estimated at ~4 bytes per token"
    captioned = todo[sent]
    if count_tokens is not None and len(captioned):
        picked = captioned.sample(n=min(sample, len(captioned)), random_state=0)
        counted = sum(int(count_tokens(list(chunk))) for chunk in _chunks(list(picked["text"]), 100))
        ratio = counted / max(1, int(own[picked.index].sum()) + added * len(picked))
        text_tokens = round(text_tokens * ratio)
        basis = f"estimate calibrated with countTokens on {len(picked)} texts (ratio {ratio:.3f})"
    media = int(todo["media_tokens"].sum())
    if media:
        basis += (
            f"; images at {mediatokens.per_image(limits.model)} tokens, PDF pages at "
            f"{mediatokens.per_page(limits.model)} each (inferred from Google's per-image price)"
        )
    return TextsEstimate(len(todo), text_tokens, media, basis)


def embedding_models() -> list[str]:
    """The embedding models the pricing table prices, standard and Batch Mode (-001 and -2)."""
    models: dict[str, Any] = _pricing_table().get("models", {})
    return [m for m, info in models.items() if "batch_usd_per_million_tokens" in info and "embedding" in m]


def instruction_tokens(model: str) -> int:
    """Tokens (estimated) the model's record-side instruction adds to every text: 0 for -001."""
    return -(-overhead_bytes(default_task(model)) // 4) if takes_instructions(model) else 0


def compare_models(
    source: Source | pd.DataFrame | PathLike, *, models: Sequence[str] | None = None, **options: Any
) -> pd.DataFrame:
    """`estimate` of the same source for each embedding model (default: every priced one), one row each.
    The models differ in more than price: a text -001 skips as too long may fit -2's 8,192 tokens, and
    -2 is billed for the instruction it receives with every text. With a media column, only the models
    that embed media are compared."""
    rows = []
    media = options.get("image_column") or options.get("document_column")
    for model in models or [m for m in embedding_models() if not media or model_info(m).get("multimodal")]:
        found = estimate(source, model=model, **options)
        rows.append({
            "model": model, "records": found["records"], "skipped_records": found["skipped_records"],
            "texts_to_embed": found["texts_to_embed"], "tokens": found["tokens"],
            "media_tokens": found["media_tokens"], "cost_usd": found["cost_usd"],
            "cost_usd_batch_mode": found["cost_usd_batch_mode"], "expected_minutes": found["expected_minutes"],
            "tokens_basis": found["tokens_basis"],
        })  # fmt: skip
    return pd.DataFrame(rows)


def _cached_hashes(db: PathLike | None, limits: _PlanLimits, hashes: Sequence[str]) -> set[str]:
    path = resolve_db(db)
    if not path.exists() or not hashes:
        return set()
    store = open_store(path, writable=False)
    found: set[str] = set()
    for chunk in _chunks(list(hashes), 1000):
        keys = [cache_key(limits, h) for h in chunk]
        placeholders = ", ".join("?" * len(keys))
        rows = store.query_rows(f"SELECT content_hash FROM embeddings WHERE cache_key IN ({placeholders})", keys)
        found.update(r[0] for r in rows)
    return found


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)] if items else []
