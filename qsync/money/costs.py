"""What a job cost: tokens and dollars spent (the same figures as `status`), what the cache and resumes saved,
spend over time, and the text and media parts of the tokens. Costs are recorded per batch when vectors are
persisted, from the tokens the API reported (usageMetadata), else counted (countTokens), else estimated
(flagged in the ledger)."""

from __future__ import annotations

import pandas as pd

from qsync.clock import SYSTEM_CLOCK, Clock
from qsync.ledger import costs
from qsync.ledger.figures import read_figures
from qsync.ledger.jobs import job_record
from qsync.ledger.ledger import Ledger


def cost_frame(ledger: Ledger, job: str, clock: Clock = SYSTEM_CLOCK) -> pd.DataFrame:
    """One row: tokens and dollars spent, and what the cache and resumes saved (priced as the job's own embedder
    in its own mode: a Batch Mode job's savings at the Batch Mode price)."""
    spec = job_record(ledger, job).spec
    row = read_figures(ledger, clock, job).iloc[0]
    price = spec.embedder.price_per_million(batch_mode=spec.batch_mode)
    resumed_records, resumed_tokens, runs = costs.resume_savings(ledger, job)
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
                "resume_skipped_records": resumed_records,
                "resume_saved_tokens": resumed_tokens,
                "runs": runs,
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


def modality_frame(ledger: Ledger, job: str) -> pd.DataFrame:
    """The job's embedding tokens and dollars, text and media (images, PDF pages) apart, as each is priced.
    `split` says where the division comes from: the API's per-modality usage, or qsync's own estimates when the
    answer's split did not reach it (google-genai drops `promptTokenDetails`); None when nothing was embedded."""
    spec = job_record(ledger, job).spec
    tokens, media, estimated = costs.media_split(ledger, job)
    text_price = spec.embedder.price_per_million(batch_mode=spec.batch_mode)
    media_price = spec.embedder.price_per_million(batch_mode=spec.batch_mode, media=True)
    # One origin for both rows: the text's share is what the media's share leaves of the total.
    split = "estimated by qsync" if estimated else "reported by the API" if media else "all text" if tokens else None
    text = tokens - media
    rows = [
        ("text (captions, instructions)", text, text * text_price / 1e6, split),
        ("images and PDF pages", media, media * media_price / 1e6, split),
    ]
    return pd.DataFrame(rows, columns=["modality", "tokens", "cost_usd", "split"])
