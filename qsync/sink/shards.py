"""Open Qdrant Edge shards: one per shard folder per process, shared by its jobs, with shared flushes.

Qdrant Edge locks a shard's `wal/` folder while it is open, and a second EdgeShard.load fails at once. A
failed load is not harmless: measured with qdrant-edge-py 0.9.0, it deletes files of the holder's open
segments (payload_storage/tracker_journal.dat), after which every flush of the holder fails. So no load is
tried on a shard that someone holds: qsync keeps its own lock on the shard folder while the shard is open
(other qsync processes stop there), and probes Edge's lock on `wal/` (any other program holding the shard)
before it loads.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, PermanentError, TransientError

if TYPE_CHECKING:
    from qdrant_edge import EdgeConfig, EdgeShard, UpdateOperation

CONFIG_FILE = "edge_config.json"


class SharedShard:
    """An open EdgeShard and what its users share: one writer at a time, and flushes.

    `update` returns a sequence number; `durable(seq)` returns once a flush that started after that update
    has finished. Threads that wait together share one flush instead of queueing one each.
    """

    def __init__(self, path: Path, shard: EdgeShard, lock_fd: int) -> None:
        self.path = path
        self.shard = shard
        self.users = 0
        self.flushes = 0
        # Held across check-then-write sequences (which points exist, then write them), so that two jobs
        # writing different named vectors of the same new point cannot replace each other's.
        self.write_lock = threading.RLock()
        self._lock_fd = lock_fd
        self._written = 0  # updates that have returned
        self._flushed = 0  # of those, how many a finished flush covers
        self._flushing = False
        self._cond = threading.Condition()

    def update(self, operation: UpdateOperation) -> int:
        with self.write_lock, edge_errors(self.path):
            self.shard.update(operation)
            self._written += 1
            return self._written

    def durable(self, seq: int) -> None:
        """Return once update number `seq` is fsynced (Edge fsyncs only on flush)."""
        with self._cond:
            while self._flushed < seq:
                if self._flushing:
                    self._cond.wait()
                    continue
                self._flushing = True
                # Every update counted here has returned, so the flush that starts now covers it.
                covers = self._written
                done = False
                self._cond.release()
                try:
                    with edge_errors(self.path):
                        self.shard.flush()
                    done = True
                finally:
                    self._cond.acquire()
                    self._flushing = False
                    if done:
                        self._flushed = max(self._flushed, covers)
                        self.flushes += 1
                    self._cond.notify_all()

    def _close(self) -> None:
        try:
            with contextlib.suppress(Exception):  # every write that returned was flushed already
                self.shard.flush()
            with contextlib.suppress(Exception):
                self.shard.close()
        finally:
            os.close(self._lock_fd)  # lets other processes in


_open: dict[Path, SharedShard] = {}
_open_lock = threading.Lock()


def exists(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def acquire(path: Path, new_config: EdgeConfig | None = None) -> SharedShard:
    """Open the shard at `path` (or share this process's open one); create it with `new_config` if absent.

    Raises TransientError while another process holds it, ConfigError if it is absent and no config is given.
    """
    from qdrant_edge import EdgeShard

    path = path.resolve()
    with _open_lock:
        shared = _open.get(path)
        if shared is None:
            if not exists(path) and new_config is None:
                raise ConfigError(f"there is no Qdrant Edge shard at {path}; has a job written to it yet?")
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise PermanentError(
                    f"cannot create the Qdrant Edge folder {path}: {exc.strerror}; choose a writable --qdrant-path"
                ) from None
            lock_fd = _lock_folder(path)
            try:
                _probe_wal(path)
                with edge_errors(path):
                    if exists(path):
                        shard = EdgeShard.load(str(path))
                    else:
                        assert new_config is not None
                        shard = EdgeShard.create(str(path), new_config)
            except BaseException:
                os.close(lock_fd)
                raise
            shared = _open[path] = SharedShard(path, shard, lock_fd)
        shared.users += 1
        return shared


def release(shared: SharedShard) -> None:
    """Give the shard back; the last user of this process closes it, so other processes can open it."""
    with _open_lock:
        shared.users -= 1
        if shared.users <= 0 and _open.get(shared.path) is shared:
            del _open[shared.path]
            shared._close()


@contextlib.contextmanager
def open_shard(path: Path) -> Iterator[SharedShard]:
    """An existing shard for a while: this process's open one, or loaded now and closed after."""
    shared = acquire(path)
    try:
        yield shared
    finally:
        release(shared)


@atexit.register
def _close_all() -> None:
    with _open_lock:
        for shared in _open.values():
            shared._close()
        _open.clear()


def _in_use(path: Path) -> TransientError:
    return TransientError(
        f"the Qdrant Edge shard {path} is in use by another process (a shard opens in one process at a time); "
        "it will be retried: stop that process, or write to a Qdrant server with --qdrant-url"
    )


def _lock_folder(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _in_use(path) from None
    return fd


def _probe_wal(path: Path) -> None:
    """Fail if a program other than qsync holds the shard open (Edge flocks `wal/` while it does)."""
    wal = path / "wal"
    if not wal.is_dir():
        return
    # flock locks belong to the open file, so this probe conflicts with Edge's lock even in this process;
    # it is let go at once, before Edge takes its own.
    fd = os.open(wal, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(path) from None
    finally:
        os.close(fd)


class edge_errors:
    """Turn Qdrant Edge's plain Exceptions (text only) into qsync's TransientError / PermanentError."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None or isinstance(exc, (TransientError, PermanentError)) or not isinstance(exc, Exception):
            return
        text = str(exc)
        if "WouldBlock" in text:
            raise _in_use(self.path) from exc
        if "No space left" in text or "os error 28" in text:
            raise TransientError(f"the Qdrant Edge shard {self.path} could not write: the disk is full") from exc
        if "File too large" in text or "os error 27" in text:  # a limit on this process: waiting cannot lift it
            raise PermanentError(
                f"the Qdrant Edge shard {self.path} could not write: the disk is full, or a file passed this "
                "process's size limit (ulimit -f; Edge preallocates 32 MB write-ahead log files)"
            ) from exc
        if "dimension error" in text:
            raise PermanentError(f"the Qdrant Edge shard {self.path} refused a vector: {text}") from exc
        if isinstance(exc, OSError) or "os error" in text or "I/O error" in text:
            raise TransientError(f"the Qdrant Edge shard {self.path} could not use its storage: {text}") from exc
        raise PermanentError(f"Qdrant Edge failed on the shard {self.path}: {text}") from exc
