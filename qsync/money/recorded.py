"""The estimate a job was planned with, kept beside the job, so it can be set against what the job spent.

An estimate made after a run is worthless (every text is cached by then: "$0"), and one made from the source
while the newest job read other data compares two different things. So the estimate is taken once, right after
planning, from the job's own manifest (exactly the records it will embed, minus texts already in the embedding
cache), priced as the job's own embedder, and stored in `plan_estimates`. Every new job gets one, whichever way
it was started (the CLI, the Python API, the notebooks: qsync.app.jobs.prepare).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
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
from qsync.money.estimate import CountTokens, PlanLimits, Uncached, estimate_uncached, paced_minutes, plan_limits
from qsync.spec.settings import RunSettings

log = logging.getLogger("qsync")


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
    one countTokens call on 200 texts); without, the estimate is ~4 bytes per token, and says so."""
    planned = _planned(ledger, job, embedder, settings, clock)
    if planned is None:
        return None
    estimate = planned.estimate(_counter(embedder) if calibrate else None)
    costs.record_estimate(ledger, estimate)
    return estimate


def record_estimate_soon(
    ledger: Ledger, job: str, embedder: Embedder, *, settings: RunSettings | None = None, clock: Clock = SYSTEM_CLOCK
) -> threading.Thread | None:
    """`record_estimate` for a job whose run starts at once: what the estimate is made of is read now (before any
    batch is done or cached), recorded uncalibrated, and calibrated on a thread (its own Ledger of the file) that
    replaces the figures when countTokens answers, so the run's first batches do not wait for that round trip. A
    crash before leaves the uncalibrated figures, labelled so. Returns the thread (None: nothing to calibrate, or
    an embedder that is not an API's, such as hashing, whose count costs no call and is done here)."""
    planned = _planned(ledger, job, embedder, settings, clock)
    if planned is None:
        return None
    if not isinstance(embedder, CountsTokens) or planned.uncached is None or not len(planned.uncached.sample):
        costs.record_estimate(ledger, planned.estimate(_counter(embedder)))
        return None
    costs.record_estimate(ledger, planned.estimate(None))
    path = ledger.path

    def calibrate() -> None:
        try:
            calibrated = planned.estimate(_counter(embedder))
            with Ledger(path, create=False) as own:
                costs.update_estimate(own, calibrated)
        except Exception as exc:  # the uncalibrated estimate stands; it must never disturb the run
            log.warning("qsync: the estimate of %s was not calibrated: %s", job, exc)

    thread = threading.Thread(target=calibrate, name="qsync-estimate", daemon=True)
    thread.start()
    return thread


@dataclass(frozen=True)
class _Planned:
    """What a job's estimate is made of, read from its manifest and the cache right after planning."""

    job: str
    records: int
    gemini: bool
    model: str
    limits: PlanLimits
    contents: int
    uncached: Uncached | None  # None: nothing to embed
    price: float
    batch_mode: bool
    settings: RunSettings
    recorded_at: Any

    def estimate(self, counter: CountTokens | None) -> dict[str, Any]:
        """The estimate's row: `counter` calibrates the text tokens on the sample (None: bytes alone)."""
        found = estimate_uncached(self.uncached, self.limits, count_tokens=counter) if self.uncached else None
        tokens = found.tokens if found else 0
        basis = "nothing to embed"
        if found:
            basis = found.basis if self.gemini else found.basis.replace("countTokens", "the embedder's own count")
        settings = self.settings
        return {
            "job_id": self.job,
            "recorded_at": self.recorded_at,
            "records": self.records,
            "texts_to_embed": found.texts_to_embed if found else 0,
            "cached_texts": self.contents - found.texts_to_embed if found else 0,
            "tokens": tokens,
            "media_tokens": found.media_tokens if found else 0,
            "tokens_basis": basis,
            "cost_usd": found.cost_usd(self.model, batch_mode=self.batch_mode, text_price=self.price) if found else 0.0,
            # Rate limits pace only Gemini's synchronous calls; Batch Mode answers "within 24 h".
            "minutes": paced_minutes(
                found.texts_to_embed, tokens, settings.texts_per_minute, settings.tokens_per_minute
            )
            if found and self.gemini and not self.batch_mode
            else None,
            "price_usd_per_million_tokens": self.price,
        }


def _planned(
    ledger: Ledger, job: str, embedder: Embedder, settings: RunSettings | None, clock: Clock
) -> _Planned | None:
    """What the estimate of a job not started yet is made of; None for a job with an estimate or batches done."""
    if costs.recorded_estimate(ledger, job) is not None or job_figures(ledger, clock, job).batches_done:
        return None
    spec = job_record(ledger, job).spec
    records = manifest_size(ledger, job)[0]
    gemini = spec.embedder.kind == "gemini"
    model = spec.embedder.resolved_model if gemini and model_info(spec.embedder.resolved_model) else (
        DEFAULT_EMBEDDING_MODEL
    )  # fmt: skip
    limits = plan_limits(model, spec.embedder.dimensions, spec.embedder.resolved_task_type or None)
    # Exactly the contents the job will embed, less what the cache holds, counted where they are (SQL).
    contents, todo, own, media, sent, sample = uncached_contents(ledger, job, key_prefixes(limits), 200)
    return _Planned(
        job=job,
        records=records,
        gemini=gemini,
        model=model,
        limits=limits,
        contents=contents,
        uncached=Uncached(todo, own, media, sent, sample) if contents else None,
        price=spec.embedder.price_per_million(batch_mode=spec.batch_mode) or embedder.price_per_million_tokens,
        batch_mode=spec.batch_mode,
        settings=settings or RunSettings.from_env(),
        recorded_at=clock.now(),
    )


def _bytes_counter(texts: list[str]) -> int:
    return sum(max(1, estimate_tokens(t)) for t in texts)


def _counter(embedder: Embedder) -> CountTokens:
    """Counts tokens as the embedder will bill them: its own `count_tokens`, words for the hashing one."""
    if isinstance(embedder, CountsTokens):
        return embedder.count_tokens
    if isinstance(embedder, HashingEmbedder):
        return lambda texts: sum(len(tokenize(t)) for t in texts)
    return _bytes_counter


def error_known(status: str) -> bool:
    """Whether a job's estimate can be held against what it spent: the estimate is for all of its texts, so only
    once it completed (a paused, failed or cancelled job paid for part of them)."""
    return status == "completed"


def estimate_vs_actual(ledger: Ledger, job: str, clock: Clock = SYSTEM_CLOCK) -> pd.DataFrame:
    """Tokens, dollars and minutes: the estimate recorded at plan time, the actual, and the error in % of the
    actual (positive: the estimate was high; None until `error_known`); the job's status and the whole recorded
    estimate in `attrs`. Empty when no estimate was recorded."""
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
    frame.attrs["status"] = figures.status  # what the error was judged by (a reader says why it is blank)
    frame.attrs["recorded"] = estimate  # what the estimate was made for and how (app.versus: its footnote)
    whole = error_known(figures.status)
    frame["error_pct"] = [
        None if not whole or e is None or a is None or not a else (float(e) - float(a)) / float(a) * 100
        for _, e, a in rows
    ]
    return frame
