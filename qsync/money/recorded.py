"""The estimate a job was planned with, kept beside the job, so it can be set against what the job spent.

An estimate made after a run is worthless (every text is cached by then: "$0"), and one made from the source
while the newest job read other data compares two different things. So the estimate is taken once, right after
planning, from the job's own manifest (exactly the records it will embed, minus texts already in the embedding
cache), priced as the job's own embedder, and stored in `plan_estimates`. Every new job gets one, whichever way
it was started (the CLI, the Python API, the notebooks: qsync.app.jobs.prepare).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from qsync.catalog.models import DEFAULT_EMBEDDING_MODEL, model_info
from qsync.catalog.tokens import estimate_tokens
from qsync.clock import SYSTEM_CLOCK, Clock
from qsync.embedders.hashing import HashingEmbedder, tokenize
from qsync.embedders.protocol import CountsTokens, Embedder
from qsync.ledger import costs
from qsync.ledger.cache import key_prefixes
from qsync.ledger.figures import job_figures
from qsync.ledger.jobs import job_record
from qsync.ledger.ledger import Ledger
from qsync.ledger.queries import manifest_size, uncached_contents
from qsync.money.estimate import CountTokens, Uncached, estimate_uncached, paced_minutes, plan_limits
from qsync.spec.settings import RunSettings


def record_estimate(
    ledger: Ledger,
    job: str,
    embedder: Embedder,
    *,
    settings: RunSettings | None = None,
    calibrate: bool = True,
    clock: Clock = SYSTEM_CLOCK,
) -> dict[str, Any] | None:
    """Estimate a job that has not started yet and store it; a job with an estimate, or with batches already
    done, is left alone (None). `calibrate` counts tokens on a sample with the embedder's own counter (Gemini:
    one countTokens call on 200 texts)."""
    if costs.recorded_estimate(ledger, job) is not None or job_figures(ledger, clock, job).batches_done:
        return None
    spec = job_record(ledger, job).spec
    records = manifest_size(ledger, job)[0]
    gemini = spec.embedder.kind == "gemini"
    model = spec.embedder.resolved_model if gemini and model_info(spec.embedder.resolved_model) else (
        DEFAULT_EMBEDDING_MODEL
    )  # fmt: skip
    limits = plan_limits(model, spec.embedder.dimensions, spec.embedder.resolved_task_type or None)
    counter = _counter(embedder) if calibrate else _bytes_counter
    # Exactly the contents the job will embed, less what the cache holds, counted where they are (SQL).
    contents, todo, own, media, sent, sample = uncached_contents(ledger, job, key_prefixes(limits), 200)
    found = (
        estimate_uncached(Uncached(todo, own, media, sent, sample), limits, count_tokens=counter) if contents else None
    )
    settings = settings or RunSettings.from_env()
    price = spec.embedder.price_per_million(batch_mode=spec.batch_mode) or embedder.price_per_million_tokens
    tokens = found.tokens if found else 0
    basis = "nothing to embed"
    if found:
        basis = found.basis if gemini else found.basis.replace("countTokens", "the embedder's own count")
    estimate = {
        "job_id": job,
        "recorded_at": clock.now(),
        "records": records,
        "texts_to_embed": found.texts_to_embed if found else 0,
        "cached_texts": contents - found.texts_to_embed if found else 0,
        "tokens": tokens,
        "media_tokens": found.media_tokens if found else 0,
        "tokens_basis": basis,
        "cost_usd": found.cost_usd(model, batch_mode=spec.batch_mode, text_price=price) if found else 0.0,
        # Rate limits pace only Gemini's synchronous calls; Batch Mode answers "within 24 h".
        "minutes": paced_minutes(found.texts_to_embed, tokens, settings.texts_per_minute, settings.tokens_per_minute)
        if found and gemini and not spec.batch_mode
        else None,
        "price_usd_per_million_tokens": price,
    }
    costs.record_estimate(ledger, estimate)
    return estimate


def _bytes_counter(texts: list[str]) -> int:
    return sum(max(1, estimate_tokens(t)) for t in texts)


def _counter(embedder: Embedder) -> CountTokens:
    """Counts tokens as the embedder will bill them: its own `count_tokens`, words for the hashing one."""
    if isinstance(embedder, CountsTokens):
        return embedder.count_tokens
    if isinstance(embedder, HashingEmbedder):
        return lambda texts: sum(len(tokenize(t)) for t in texts)
    return _bytes_counter


def estimate_vs_actual(ledger: Ledger, job: str, clock: Clock = SYSTEM_CLOCK) -> pd.DataFrame:
    """Tokens, dollars and minutes: the estimate recorded at plan time, the actual, and the error in % of the
    actual (positive: the estimate was high). Empty when no estimate was recorded."""
    estimate = costs.recorded_estimate(ledger, job)
    if estimate is None:
        return pd.DataFrame(columns=["figure", "estimate", "actual", "error_pct"])
    figures = job_figures(ledger, clock, job)
    rows = [
        ("tokens", float(estimate["tokens"]), float(figures.tokens)),
        ("cost_usd", float(estimate["cost_usd"]), float(figures.cost_usd)),
        ("minutes", estimate["minutes"], costs.run_minutes(ledger, job)),
    ]
    frame = pd.DataFrame(rows, columns=["figure", "estimate", "actual"])
    frame["error_pct"] = [
        None if e is None or a is None or not a else (float(e) - float(a)) / float(a) * 100 for _, e, a in rows
    ]
    return frame
