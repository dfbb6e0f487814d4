"""Open Qdrant Edge shards: one per shard folder per process, shared by its jobs, with shared flushes.

Each open shard lives in a process of its own (edge_host.py): Edge dies with SIGBUS, silently, when a write finds
the disk full or a file made read-only, and qsync must outlive that to say so and leave the job resumable. A
SharedShard is this process's end of it: requests go one at a time over a pipe; a host that died is diagnosed
(the disk full? a folder read-only?) and its shard is opened anew by the next job that needs it.

Edge locks a shard's `wal/` folder while it is open, and a failed second load deletes files of the holder's
segments (measured, qdrant-edge-py 0.9.0): the host keeps its own lock on the shard folder while it holds the
shard (other qsync processes stop there) and probes Edge's lock before it loads.
"""

from __future__ import annotations

import atexit
import contextlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from qsync.disk import MIB, ensure_room, ensure_writable
from qsync.embedders.protocol import Vectors
from qsync.errors import ConfigError, PermanentError, QsyncError, TransientError
from qsync.sink.edge_host import read_message, write_message

CONFIG_FILE = "edge_config.json"
OPEN_ROOM = 40 * MIB  # free space needed to open (or create) a shard: on tmpfs, opening fills a 32 MB file


class SharedShard:
    """An open shard and what its users share: one writer at a time, and flushes.

    `update` returns a sequence number; `durable(seq)` returns once a flush that started after that update has
    finished. Threads that wait together share one flush instead of queueing one each.
    """

    def __init__(self, path: Path, host: subprocess.Popen[bytes]) -> None:
        self.path = path
        self.identity = _identity(path)  # the folder it opened: a job must not write to one deleted since
        self.users = 0
        self.flushes = 0
        # Held across check-then-write sequences (which points exist, then write them), so that two jobs writing
        # different named vectors of the same new point cannot replace each other's.
        self.write_lock = threading.RLock()
        self._host = host
        self._rpc = threading.Lock()  # one request on the pipe at a time
        self._broken: QsyncError | None = None
        self._written = 0  # updates that have returned
        self._flushed = 0  # of those, how many a finished flush covers
        self._flushing = False
        self._cond = threading.Condition()

    # -- requests -------------------------------------------------------------------------------------------------

    def call(self, *request: Any) -> Any:
        """Send one request to the host and return its answer; a host that died is diagnosed."""
        with self._rpc:
            if self._broken is not None:
                raise self._broken
            assert self._host.stdin is not None and self._host.stdout is not None
            try:
                write_message(self._host.stdin, request)
                status, value = read_message(self._host.stdout)
            except (EOFError, BrokenPipeError, OSError):
                self._broken = _died(self.path, self._host)
                _forget(self)
                raise self._broken from None
            except BaseException:
                # Interrupted between the request and its answer (Ctrl-C, a notebook's interrupt): the answer would
                # be read as the next request's. The host is ended; the next user opens the shard anew.
                self._broken = PermanentError(f"a request to the Qdrant Edge shard {self.path} was interrupted")
                _forget(self)
                with contextlib.suppress(OSError):
                    self._host.kill()
                raise
        if status == "error":
            raise edge_error(str(value), self.path)
        return value

    def update(self, size: int, kind: str, *args: Any) -> int:
        """Apply an update of about `size` bytes (kinds: edge_host.Host.update). The disk is looked at first, so
        that the host rarely has to die for qsync to learn that it is full or read-only."""
        with self.write_lock:
            ensure_room(self.path, MIB + 2 * size, "the Qdrant Edge shard")
            ensure_writable(self.path, f"the Qdrant Edge shard {self.path}")
            self.call("update", kind, *args)
            self._written += 1
            return self._written

    def upsert(self, ids: list[str], name: str | None, vectors: Vectors, payloads: list[dict[str, Any]]) -> int:
        size = int(len(ids) * vectors.shape[1] * 4 * 2.4) + sum(len(repr(p)) for p in payloads)
        return self.update(size, "upsert", ids, name, np.ascontiguousarray(vectors, dtype=np.float32), payloads)

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
                    self.call("flush")
                    done = True
                finally:
                    self._cond.acquire()
                    self._flushing = False
                    if done:
                        self._flushed = max(self._flushed, covers)
                        self.flushes += 1
                    self._cond.notify_all()

    def scroll(self, vector: str, page: int = 2000) -> Iterator[tuple[str, dict[str, Any], list[float] | None]]:
        """Every point: (id, payload, the named vector or None)."""
        offset: Any = None
        while True:
            records, offset = self.call("scroll", offset, page, vector)
            yield from records
            if offset is None:
                return

    def _close(self) -> None:
        """Flush, close the shard and let the host end (the folder lock goes with it)."""
        try:
            if self._broken is None:
                with contextlib.suppress(QsyncError):
                    self.call("close")
        finally:
            with contextlib.suppress(OSError):
                if self._host.stdin is not None:
                    self._host.stdin.close()
            try:
                self._host.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._host.kill()
                self._host.wait()


# The shards open in this process, by folder. Edge cannot open a shard twice, so the jobs of one process (a
# notebook) that write to one collection must share its open shard; each entry checks that its folder is still
# the one it opened.
_open: dict[Path, SharedShard] = {}
_open_lock = threading.RLock()  # reentrant: a host that dies while it opens is forgotten under it


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def exists(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def acquire(path: Path, new_config: dict[str, Any] | None = None) -> SharedShard:
    """Open the shard at `path` (or share this process's open one); create it with `new_config` (vector name ->
    (dimensions, distance, on_disk); "" for the unnamed vector) if absent.

    Raises TransientError while another process holds it, ConfigError if it is absent and no config is given.
    """
    path = path.resolve()
    with _open_lock:
        shared = _open.get(path)
        if shared is not None and shared.identity != _identity(path):
            # The folder was deleted (or replaced) while a job of this process still has its shard open: the open
            # shard writes where nobody will look, so nothing may join it.
            raise PermanentError(
                f"the Qdrant Edge shard {path} was deleted or replaced while a job of this process still has it "
                "open; wait for that job to end (or restart the kernel), then run again"
            )
        if shared is None:
            if not exists(path) and new_config is None:
                raise ConfigError(f"there is no Qdrant Edge shard at {path}; has a job written to it yet?")
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise PermanentError(
                    f"cannot create the Qdrant Edge folder {path}: {exc.strerror}; choose a writable --qdrant-path"
                ) from None
            ensure_room(path, OPEN_ROOM, "opening the Qdrant Edge shard")
            ensure_writable(path, f"the Qdrant Edge shard {path}")
            host = subprocess.Popen(
                [sys.executable, "-m", "qsync.sink.edge_host"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            shared = SharedShard(path, host)
            try:
                shared.call("open", str(path), None if new_config is None else {"vectors": new_config})
            except BaseException:
                shared._close()
                raise
            _open[path] = shared
        shared.users += 1
        return shared


def release(shared: SharedShard) -> None:
    """Give the shard back; the last user of this process closes it, so other processes can open it."""
    with _open_lock:
        shared.users -= 1
        if shared.users <= 0:
            if _open.get(shared.path) is shared:
                del _open[shared.path]
            shared._close()


def _forget(shared: SharedShard) -> None:
    """A host that died: its shard is opened anew by the next job that needs it."""
    with _open_lock:
        if _open.get(shared.path) is shared:
            del _open[shared.path]


@contextlib.contextmanager
def open_shard(path: Path) -> Iterator[SharedShard]:
    """An existing shard for a while: this process's open one, or opened now and closed after."""
    shared = acquire(path)
    try:
        yield shared
    finally:
        release(shared)


@atexit.register
def _close_all() -> None:
    with _open_lock:
        shards = list(_open.values())
        _open.clear()
    for shared in shards:
        shared._close()


def _in_use(path: Path) -> TransientError:
    return TransientError(
        f"the Qdrant Edge shard {path} is in use by another process (a shard opens in one process at a time); "
        "it will be retried: stop that process, or write to a Qdrant server with --qdrant-url"
    )


def _died(path: Path, host: subprocess.Popen[bytes]) -> QsyncError:
    """Why the host of `path` stopped answering, in words: the disk full or read-only (Edge dies with SIGBUS), or
    else what it exited with."""
    try:
        code = host.wait(timeout=10)
    except subprocess.TimeoutExpired:
        host.kill()
        code = host.wait()
    cause = _disk_problem(path)
    if cause is not None:
        return cause
    how = f"signal {-code}" if code < 0 else f"exit code {code}"
    return PermanentError(
        f"the Qdrant Edge process holding {path} stopped ({how}); the batches it had not made durable are not marked "
        "done: resume the job (`qsync resume JOB`)"
    )


def _disk_problem(path: Path) -> QsyncError | None:
    """DiskFull if the shard's disk is full or its folder read-only, else None."""
    try:
        ensure_room(path, MIB, "the Qdrant Edge shard")
        ensure_writable(path, f"the Qdrant Edge shard {path}")
    except QsyncError as exc:
        return exc
    return None


def edge_error(text: str, path: Path) -> QsyncError:
    """Qdrant Edge's errors (plain text) as qsync's: the disk full or read-only (DiskFull: the job pauses), a shard
    in use or storage trouble (TransientError: retried), else PermanentError."""
    if any(s in text for s in ("No space left", "os error 28", "Operation not permitted", "os error 1)")):
        cause = _disk_problem(path)
        if cause is not None:
            return cause
    if "WouldBlock" in text:
        return _in_use(path)
    if text.startswith("LookupError"):
        return ConfigError(text.split(": ", 1)[-1])
    if "No space left" in text or "os error 28" in text:
        return TransientError(f"the Qdrant Edge shard {path} could not write: the disk is full")
    if "File too large" in text or "os error 27" in text:  # a limit on this process: waiting cannot lift it
        return PermanentError(
            f"the Qdrant Edge shard {path} could not write: the disk is full, or a file passed this process's size "
            "limit (ulimit -f; Edge preallocates 32 MB write-ahead log files)"
        )
    if "dimension error" in text:
        return PermanentError(f"the Qdrant Edge shard {path} refused a vector: {text}")
    if "Operation not permitted" in text or "os error 1)" in text or "Permission denied" in text:
        return PermanentError(f"the Qdrant Edge shard {path} cannot be written (read-only?): {text}")
    if "os error" in text or "I/O error" in text:
        return TransientError(f"the Qdrant Edge shard {path} could not use its storage: {text}")
    return PermanentError(f"Qdrant Edge failed on the shard {path}: {text}")
