"""DuckDB's exceptions, turned into qsync's at the ledger's boundary, with what to do about each."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

from qsync.errors import DiskFull, LedgerCorrupted, LedgerError

_FULL = ("no space left", "file too large", "disk quota")
_READ_ONLY = ("permission denied", "read-only file system", "operation not permitted")
_CORRUPT = ("corrupt", "checksum", "invalid block", "not a valid duckdb database", "unrecognized compression")


_LOCKED = re.compile(r"Could not set lock|Conflicting lock", re.IGNORECASE)
_LOCK_PID = re.compile(r"PID (\d+)")


def locked_by(exc: BaseException) -> int | bool | None:
    """Whether DuckDB refused the file because another process holds it: False if not, else that process's pid (or
    None when DuckDB did not name it)."""
    if not _LOCKED.search(str(exc)):
        return False
    match = _LOCK_PID.search(str(exc))
    return int(match.group(1)) if match else None


def disk_full(path: Path, detail: str = "") -> DiskFull:
    where = path.parent
    return DiskFull(
        f"the disk is full at {where} (writing {path.name}); free space there, then resume the job "
        f"(`qsync resume JOB`) — nothing unfinished was marked done" + (f" ({detail})" if detail else "")
    )


def read_only(path: Path, detail: str = "") -> DiskFull:
    return DiskFull(
        f"cannot write {path}: the folder is read-only or not permitted; make it writable or choose a writable "
        f"--db, then resume the job" + (f" ({detail})" if detail else "")
    )


def corrupted(path: Path, detail: str = "") -> LedgerCorrupted:
    return LedgerCorrupted(
        f"{path} is damaged: DuckDB found blocks whose checksums do not match ({detail or 'corrupted'}). Resuming "
        f"would repeat this error. Make a new checkpoint file of what can be read (the vectors already paid for "
        f"stay): `qsync recover --db {path}` (docs/RELIABILITY.md)"
    )


def convert(exc: duckdb.Error, path: Path) -> LedgerError:
    """The LedgerError a DuckDB exception means, with the path and what to do."""
    text = str(exc)
    lowered = text.lower()
    if any(word in lowered for word in _FULL):
        return disk_full(path, text)
    if any(word in lowered for word in _READ_ONLY):
        return read_only(path, text)
    if any(word in lowered for word in _CORRUPT):
        return corrupted(path, text.splitlines()[0] if text else "")
    if isinstance(exc, duckdb.FatalException) or "invalidated" in lowered:
        return LedgerError(
            f"DuckDB stopped using {path} after an error it cannot recover from ({text.splitlines()[0]}); the job "
            "is left resumable: fix the cause (often a full disk), then resume it"
        )
    return LedgerError(f"DuckDB failed on {path}: {text}")
