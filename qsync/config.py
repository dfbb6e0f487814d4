"""Defaults and where they come from: arguments first, then environment, then files beside the store."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DB = "qsync.duckdb"


def resolve_db(db: str | os.PathLike[str] | None) -> Path:
    return Path(db or os.environ.get("QSYNC_DB") or DEFAULT_DB).expanduser().resolve()


def default_qdrant_path(db: Path) -> str:
    """Qdrant Edge shards live in a folder beside the DuckDB file: qsync.duckdb -> qsync.qdrant/<collection>/."""
    return str(db.with_suffix(".qdrant"))


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def stale_after_s() -> float:
    """How old a heartbeat may be before its job counts as stale ($QSYNC_STALE_AFTER_S, default 60): read
    here for the runner's lease and for the liveness shown by status, so both judge alike."""
    return env_float("QSYNC_STALE_AFTER_S", 60.0)
