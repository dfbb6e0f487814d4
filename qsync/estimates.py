"""The estimate a job was planned with, kept beside the job, so it can be set against what the job spent.

An estimate made after a run is worthless (every text is cached by then: "$0"), and one made from the
source while the newest job read other data compares two different things. So the estimate is taken
once, right after planning, from the job's own manifest (exactly the records it will embed, minus texts
already in the embedding cache), priced as the job's own embedder, and stored in a table of its own
(`plan_estimates`, created when first needed; the checkpoint's schema and migrations are untouched).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
from typing_extensions import Unpack

from . import api, costs
from .clock import SYSTEM_CLOCK, Clock
from .config import resolve_db
from .embedders.base import Embedder, build_embedder
from .embedders.gemini import DEFAULT_MODEL
from .embedders.hashing import HashingEmbedder, tokenize
from .errors import ConfigError
from .pricing import model_info, price_per_million
from .sources import Source
from .spec import KEEP, Budget, JobSpec, RunSettings, SpecOptions
from .store import open_store

PathLike = str | os.PathLike[str]

_DDL = """
CREATE TABLE IF NOT EXISTS plan_estimates (
    job_id           VARCHAR PRIMARY KEY,
    recorded_at      TIMESTAMP NOT NULL,
    records          BIGINT NOT NULL,   -- records the job planned to embed (its manifest)
    texts_to_embed   BIGINT NOT NULL,   -- distinct texts not already in the embedding cache
    cached_texts     BIGINT NOT NULL,
    tokens           BIGINT NOT NULL,
    tokens_basis     VARCHAR NOT NULL,
    cost_usd         DOUBLE NOT NULL,
    minutes          DOUBLE,            -- at the run's rate limits; NULL when nothing paces the run
    price_usd_per_million_tokens DOUBLE NOT NULL
)
"""
# Files whose table predates media jobs gain the column (a table of its own: no schema version to bump).
_V2 = "ALTER TABLE plan_estimates ADD COLUMN IF NOT EXISTS media_tokens BIGINT DEFAULT 0  -- images, PDF pages"
_COLUMNS = ("job_id", "recorded_at", "records", "texts_to_embed", "cached_texts", "tokens", "tokens_basis",
            "cost_usd", "minutes", "price_usd_per_million_tokens", "media_tokens")  # fmt: skip


def prepare(
    source: Source | pd.DataFrame | PathLike,
    *,
    db: PathLike | None = None,
    max_cost_usd: Budget = KEEP,
    settings: RunSettings | None = None,
    clock: Clock = SYSTEM_CLOCK,
    **options: Unpack[SpecOptions],
) -> str:
    """`api.prepare`, then record the job's estimate if it was just planned. Returns the job id."""
    job = api.prepare(source, db=db, max_cost_usd=max_cost_usd, clock=clock, **options)
    record_estimate(job, db=db, settings=settings, clock=clock)
    return job


def record_estimate(
    job: str,
    *,
    db: PathLike | None = None,
    settings: RunSettings | None = None,
    calibrate: bool = True,
    clock: Clock = SYSTEM_CLOCK,
) -> dict[str, Any] | None:
    """Estimate a job that has not started yet and store it; a job with an estimate, or with batches
    already done, is left alone (None). `calibrate` counts tokens on a sample with the embedder's own
    counter (Gemini: countTokens, 2 small API calls)."""
    path = resolve_db(db)
    if recorded_estimate(job, db=path) is not None or api.status(job, db=path)["batches_done"]:
        return None
    store = open_store(path)
    row = store.query_rows("SELECT config, collection, source FROM jobs WHERE job_id = ?", [job])[0]
    spec = JobSpec.from_dict(json.loads(row[0]), job_id=job, collection=row[1], source=row[2])
    # Exactly the records the job will embed, as planned: each content once, its media part apart.
    texts = store.query_df(costs.MANIFEST_TEXTS, [job])
    records = int(store.query_rows("SELECT count(*) FROM manifest WHERE job_id = ?", [job])[0][0])
    embedder = build_embedder(spec.embedder)
    gemini = spec.embedder.kind == "gemini"
    model = spec.embedder.resolved_model if gemini and model_info(spec.embedder.resolved_model) else DEFAULT_MODEL
    limits = costs.plan_limits(model, spec.embedder.dimensions, spec.embedder.resolved_task_type or None)
    counter = _counter(embedder) if calibrate else (lambda texts: sum(_bytes_tokens(t) for t in texts))
    found = costs.estimate_texts(texts, limits, db=path, count_tokens=counter) if len(texts) else None
    settings = settings or RunSettings.from_env()
    price = _price(spec, embedder)
    tokens = found.tokens if found else 0
    estimate = {
        "job_id": job,
        "recorded_at": clock.now(),
        "records": records,
        "texts_to_embed": found.texts_to_embed if found else 0,
        "cached_texts": len(texts) - found.texts_to_embed if found else 0,
        "tokens": tokens,
        "media_tokens": found.media_tokens if found else 0,
        "tokens_basis": (found.basis if gemini else found.basis.replace("countTokens", "the embedder's own count"))
        if found
        else "nothing to embed",
        "cost_usd": found.cost_usd(model, batch_mode=spec.batch_mode, text_price=price) if found else 0.0,
        # Rate limits pace only Gemini's synchronous calls; Batch Mode answers "within 24 h".
        "minutes": costs.paced_minutes(
            found.texts_to_embed, tokens, settings.texts_per_minute, settings.tokens_per_minute
        )
        if found and gemini and not spec.batch_mode
        else None,
        "price_usd_per_million_tokens": price,
    }
    with store.transaction() as con:
        con.execute(_DDL)
        con.execute(_V2)
        con.execute(f"INSERT OR IGNORE INTO plan_estimates ({', '.join(_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(_COLUMNS))})", [estimate[c] for c in _COLUMNS])  # fmt: skip
    return estimate


def _price(spec: JobSpec, embedder: Embedder) -> float:
    if "price_per_million_tokens" in spec.embedder.options:
        return float(spec.embedder.options["price_per_million_tokens"])
    if spec.embedder.kind == "gemini":
        try:
            return price_per_million(spec.embedder.resolved_model, batch_mode=spec.batch_mode)
        except ConfigError:
            return float(embedder.price_per_million_tokens)
    return float(getattr(embedder, "price_per_million_tokens", 0.0))


def _bytes_tokens(text: str) -> int:
    return max(1, -(-len(text.encode()) // 4))


def _counter(embedder: Embedder) -> Any:
    """Counts tokens as the embedder will bill them: its own `count_tokens`, words for the hashing one."""
    own = getattr(embedder, "count_tokens", None)
    if own is not None:
        return own
    if isinstance(embedder, HashingEmbedder):
        return lambda texts: sum(len(tokenize(t)) for t in texts)
    return lambda texts: sum(_bytes_tokens(t) for t in texts)


def recorded_estimate(job: str, *, db: PathLike | None = None) -> dict[str, Any] | None:
    """The estimate stored when the job was planned, or None (planned elsewhere, e.g. by the CLI)."""
    path = resolve_db(db)
    if not Path(path).exists():
        return None
    store = open_store(path, writable=False)
    if not store.query_rows("SELECT 1 FROM information_schema.tables WHERE table_name = 'plan_estimates'"):
        return None
    frame = store.query_df("SELECT * FROM plan_estimates WHERE job_id = ?", [job])
    if frame.empty:
        return None
    return {str(k): (None if pd.isna(v) else v) for k, v in frame.iloc[0].to_dict().items()}


def run_minutes(job: str, *, db: PathLike | None = None) -> float | None:
    """Minutes the job's runs spent working (each run from its first attempt to its last answer; pauses
    between runs are not counted), or None before any batch was tried."""
    rows = open_store(resolve_db(db), writable=False).query_rows(
        """SELECT sum(epoch(last) - epoch(first)) / 60.0 FROM (
               SELECT min(started_at) AS first, max(coalesce(finished_at, started_at)) AS last
               FROM attempts WHERE job_id = ? GROUP BY lease_token)""",
        [job],
    )
    value = rows[0][0] if rows else None
    return None if value is None else float(value)


def estimate_vs_actual(job: str, *, db: PathLike | None = None) -> pd.DataFrame:
    """Tokens, dollars and minutes: the estimate recorded at plan time, the actual, and the error in % of
    the actual (positive: the estimate was high). Empty when no estimate was recorded."""
    estimate = recorded_estimate(job, db=db)
    if estimate is None:
        return pd.DataFrame(columns=["figure", "estimate", "actual", "error_pct"])
    info = api.status(job, db=db)
    rows = [
        ("tokens", float(estimate["tokens"]), float(info["tokens"])),
        ("cost_usd", float(estimate["cost_usd"]), float(info["cost_usd"])),
        ("minutes", estimate["minutes"], run_minutes(job, db=db)),
    ]
    frame = pd.DataFrame(rows, columns=["figure", "estimate", "actual"])
    frame["error_pct"] = [
        None if e is None or a is None or not a else (float(e) - float(a)) / float(a) * 100 for _, e, a in rows
    ]
    return frame
