"""Where the hosts of checkpoint files (ledger/host.py) keep their sockets, election locks and logs: a folder only
this user can enter, one set of files per checkpoint file (by its resolved path)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def run_dir() -> Path:
    """A folder only this user can enter, for the hosts' sockets, locks and logs."""
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp")
    folder = base / f"qsync-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{folder} must belong to this user and be private (chmod 700)")
    return folder


def host_files(path: Path) -> tuple[Path, Path, Path]:
    """The socket, election lock and log of the host of the checkpoint file at `path`."""
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:20]
    folder = run_dir()
    return folder / f"{key}.sock", folder / f"{key}.lock", folder / f"{key}.log"
