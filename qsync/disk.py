"""Room on the disk, looked at before a write that would not survive running out of it.

Qdrant Edge maps its files into memory: a write that finds the disk full kills the process with SIGBUS, with no
exception to catch and no message (measured with qdrant-edge-py 0.9.0 on a 30 MB tmpfs and a 40 MB ext4 image).
DuckDB raises instead, but a failed checkpoint leaves its database unusable until every connection is closed. So
qsync stops before the disk is full, with a message that says where and what to do, and leaves the job resumable.
"""

from __future__ import annotations

import os
from pathlib import Path

from qsync.errors import DiskFull

MIB = 1024 * 1024
LEDGER_MARGIN = 32 * MIB  # what a DuckDB commit, with the checkpoint it may start, is allowed to need


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged write may still use on the filesystem holding `path` (or its nearest parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    stat = os.statvfs(probe)
    return stat.f_bavail * stat.f_frsize


def ensure_room(path: Path, needed: int, what: str) -> None:
    """Raise DiskFull unless `needed` bytes are free where `path` is."""
    free = free_bytes(path)
    if free < needed:
        raise DiskFull(
            f"the disk is full at {path.parent if path.suffix else path}: {_mb(free)} free, and {what} needs about "
            f"{_mb(needed)}; qsync stopped before it ran out. Free space there, then resume the job "
            "(`qsync resume JOB`): nothing unfinished was marked done"
        )


def ensure_writable(folder: Path, what: str) -> None:
    """Raise DiskFull unless the folder and every file in it can be written (a folder made immutable, `chattr +i`,
    or read-only mid-run: Edge would die with SIGBUS writing there)."""
    try:
        entries = [folder, *folder.rglob("*")]
    except OSError:
        entries = [folder]
    for entry in entries:
        if not os.access(entry, os.W_OK) and entry.exists():  # (a file Edge removed meanwhile is no sign)
            raise DiskFull(
                f"{what} cannot be written: {entry} is read-only or not permitted; make it writable, then resume the "
                "job (`qsync resume JOB`)"
            )


def _mb(n: int) -> str:
    return f"{n / MIB:,.1f} MB"
