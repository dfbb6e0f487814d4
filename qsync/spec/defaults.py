"""Defaults, each written once, and where the environment may override them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

DEFAULT_DB: Final = "qsync.duckdb"
DEFAULT_DIMENSIONS: Final = 768
DEFAULT_BATCH_SIZE: Final = 100
DEFAULT_CONCURRENCY: Final = 4
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
