"""How one run goes about a job: concurrency, rate limits, retries, heartbeat. Never stored: each resume may
choose again."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from qsync.errors import ConfigError
from qsync.spec.defaults import DEFAULT_STALE_AFTER_S, env_float, stale_after_s


@dataclass(frozen=True)
class RunSettings:
    """How one run goes about a job."""

    # API calls in flight at once (a few more batches are under way, engine.slots); None: chosen from the limits
    # (defaults.default_concurrency)
    concurrency: int | None = None
    max_attempts: int = 8  # per API or Qdrant call, transient errors only; then the batch fails
    retry_base_s: float = 1.0  # first backoff; doubles per attempt, with jitter
    retry_max_s: float = 60.0
    heartbeat_s: float = 5.0
    # How long this runner's heartbeat may lapse before others may take the job over; stored with its lease,
    # so `qsync status` judges the lease by the same figure.
    stale_after_s: float = DEFAULT_STALE_AFTER_S
    texts_per_minute: float | None = None  # None: the embedder's default (Gemini tier 1: 3,000)
    tokens_per_minute: float | None = None  # None: the embedder's default (Gemini tier 1: 1,000,000)
    batch_mode_poll_s: float = 2.0  # the first wait between polls of Batch Mode jobs; doubled after each poll
    batch_mode_poll_max_s: float = 300.0  # ... up to this

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, not {self.concurrency}")
        if self.max_attempts < 1:
            raise ConfigError(f"max attempts must be at least 1, not {self.max_attempts}")
        if self.stale_after_s <= self.heartbeat_s:
            raise ConfigError(
                f"a lease must outlive a heartbeat: stale after {self.stale_after_s:g} s, heartbeat every "
                f"{self.heartbeat_s:g} s"
            )

    @classmethod
    def from_env(cls, **overrides: Any) -> RunSettings:
        """Defaults, then QSYNC_* environment variables, then explicit overrides (None = not given)."""
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown run settings: {', '.join(sorted(unknown))}")
        base = cls(
            heartbeat_s=env_float("QSYNC_HEARTBEAT_S", 5.0),
            stale_after_s=stale_after_s(),
            retry_base_s=env_float("QSYNC_RETRY_BASE_S", 1.0),
            batch_mode_poll_s=env_float("QSYNC_BATCH_POLL_S", 2.0),
            batch_mode_poll_max_s=env_float("QSYNC_BATCH_POLL_MAX_S", 300.0),
        )
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})
