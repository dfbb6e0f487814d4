"""Defaults, each written once, and where the environment may override them."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Final

DEFAULT_DB: Final = "qsync.duckdb"
DEFAULT_DIMENSIONS: Final = 768
DEFAULT_BATCH_SIZE: Final = 100
DEFAULT_CONCURRENCY: Final = 4  # calls in flight: the fewest a paid run chooses by itself, and a free embedder's
MAX_CONCURRENCY: Final = 16  # the most a run chooses by itself (limits lifted)
CALL_S_ASSUMED: Final = 1.0  # how long a call may take, for choosing how many to keep in flight
DEFAULT_STALE_AFTER_S: Final = 60.0
HASH_MODEL: Final = "qsync-hash-v2"  # the offline hashing embedder's name in cache keys (v2: no stop words)


def resolve_db(db: str | os.PathLike[str] | None) -> Path:
    """The checkpoint file: the argument, else $QSYNC_DB, else ./qsync.duckdb, as an absolute path."""
    return Path(db or os.environ.get("QSYNC_DB") or DEFAULT_DB).expanduser().resolve()


def default_qdrant_path(db: Path) -> Path:
    """Qdrant Edge shards live in a folder beside the checkpoint file: qsync.duckdb -> qsync.qdrant/<collection>/."""
    return db.with_suffix(".qdrant")


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def stale_after_s() -> float:
    """How long a runner's heartbeat may lapse before its job counts as stale ($QSYNC_STALE_AFTER_S). A runner
    stores the figure it uses with its lease, and status judges the lease by that stored figure."""
    return env_float("QSYNC_STALE_AFTER_S", DEFAULT_STALE_AFTER_S)


def default_concurrency(texts_per_minute: float | None, batch_size: int, paid: bool) -> int:
    """Calls in flight when none is asked for: enough to reach the texts-per-minute limit even when each call takes
    CALL_S_ASSUMED, at least DEFAULT_CONCURRENCY, at most MAX_CONCURRENCY (with no limit: the most). At Gemini's
    tier-1 limit (3,000 texts a minute, batches of 100) that is 4: the limit, not the calls in flight, bounds such
    a run. A free embedder computes in this process (its CPU, not waiting, is the bound): DEFAULT_CONCURRENCY."""
    if not paid:
        return DEFAULT_CONCURRENCY
    if not texts_per_minute:
        return MAX_CONCURRENCY
    needed = math.ceil(texts_per_minute / 60 * CALL_S_ASSUMED / max(1, batch_size))
    return max(DEFAULT_CONCURRENCY, min(MAX_CONCURRENCY, needed))
