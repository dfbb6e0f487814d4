"""Where a rate limiter keeps its state: the level of its buckets, its adaptive pace, and how long a 429 holds
every caller. In memory for one process; in a small file for every process on this machine that uses the same
quota (an API key and model at one endpoint): two jobs with one key, in two kernels or a kernel and a terminal,
then pace together to the limit instead of each to it.

The file lives under the user's cache folder (`$QSYNC_PACE_DIR`, else `$XDG_CACHE_HOME/qsync/pace`, else
`~/.cache/qsync/pace`), named by a hash of the quota's key (never the key itself). Each change reads and writes it
under an exclusive `flock`, which the kernel lets go when a process dies, so a killed runner never leaves it
locked. Times are the system's monotonic clock (one for every process of the machine); a file from before a
reboot, with times ahead of it, counts as empty.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

T = TypeVar("T")
_LONGEST_HOLD_S = 600.0  # a per-minute quota's retryDelay is well under this; anything longer is from another boot


@dataclass
class PaceState:
    """levels: bucket name -> [level, updated]; pace in (0.2, 1]; paused_until: no call before this time."""

    levels: dict[str, list[float]] = field(default_factory=dict)
    pace: float = 1.0
    paused_until: float = 0.0

    def level(self, name: str, now: float) -> tuple[float, float]:
        """(level, updated) of a bucket; a bucket never seen, or from a clock ahead of ours, starts empty now."""
        level, updated = self.levels.get(name, (0.0, now))
        return (0.0, now) if updated > now else (level, updated)

    def holds_until(self, now: float) -> float:
        return self.paused_until if self.paused_until <= now + _LONGEST_HOLD_S else now


class PaceStore(Protocol):
    def update(self, change: Callable[[PaceState], T]) -> T:
        """Apply `change` to the state under a lock (its changes are kept) and return its result."""
        ...


class MemoryPace:
    """The state of one process's limiter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = PaceState()

    def update(self, change: Callable[[PaceState], T]) -> T:
        with self._lock:
            return change(self._state)


class FilePace:
    """The state shared by every process of this machine that paces the same quota."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # flock is per open file: the threads of this process take turns first

    def update(self, change: Callable[[PaceState], T]) -> T:
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                state = _read(fd)
                result = change(state)
                data = json.dumps(asdict(state)).encode()
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
                os.write(fd, data)
                return result
            finally:
                os.close(fd)  # and with it the flock


def _read(fd: int) -> PaceState:
    raw = b""
    while chunk := os.read(fd, 65536):
        raw += chunk
    try:
        data = json.loads(raw) if raw else {}
        return PaceState(
            {str(k): [float(v[0]), float(v[1])] for k, v in dict(data.get("levels", {})).items()},
            float(data.get("pace", 1.0)),
            float(data.get("paused_until", 0.0)),
        )
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return PaceState()  # a torn or foreign file: start afresh (it only paces, it holds no money)


def pace_dir() -> Path:
    if os.environ.get("QSYNC_PACE_DIR"):
        return Path(os.environ["QSYNC_PACE_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "qsync" / "pace"


def shared_store(key: str) -> PaceStore:
    """The store of the quota `key` shared across processes, or this process's own when the folder cannot be made
    (a read-only home: each process then paces alone, as before)."""
    folder = pace_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = folder / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")
        FilePace(path).update(lambda state: None)
    except OSError:
        return MemoryPace()
    return FilePace(path)
