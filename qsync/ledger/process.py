"""Which processes are alive: a lease whose owner on this host is gone is stale at once, and a request to share
the checkpoint file left by a killed process is dropped."""

from __future__ import annotations

import os
import socket
from datetime import datetime
from pathlib import Path
from typing import Final

HOST: Final = socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether a process on this host is still running (a zombie, killed but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): signal 0 is all we can know
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def lease_is_live(
    owner_pid: int | None,
    owner_host: str | None,
    heartbeat_at: datetime | None,
    now: datetime,
    stale_after_s: float,
) -> bool:
    if owner_pid is None or heartbeat_at is None:
        return False
    if owner_host == HOST and not pid_alive(owner_pid):
        return False
    return (now - heartbeat_at).total_seconds() < stale_after_s
