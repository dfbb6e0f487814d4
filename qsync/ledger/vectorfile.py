"""The bytes of every cached vector, in one append-only file beside the checkpoint file (`qsync.vectors`).

Each vector is `dimensions` little-endian float32, written once; the `embeddings` table maps a cache key to its
byte offset here. Keeping the bytes out of DuckDB makes persisting a batch of 100 768-d vectors cost ~3 ms of
CPU instead of ~20, with no multi-second WAL checkpoints (benchmarks/checkpoint_formats.py).

The order is what makes it safe: the vectors are appended and fsynced first, and only then is the row that
points at them committed. A crash in between leaves unused bytes at the end of the file, never a row pointing
at bytes that are not there. Appends use O_APPEND and one write() per batch, and the offset is read back from
the file description after the write, so two processes appending never overwrite each other.

A VectorFile belongs to one Ledger and is closed with it. Before each use it checks that the file it holds
open is still the file at its path: one deleted or replaced since is let go, and the file at the path is used.
A file that lost bytes (truncated, deleted and started again) is found by its size, not its identity (a new file
may get the old one's inode): before a transaction appends, it forgets the cache rows that point past the end
(`LeasedJob.appender`), so that no row ever points at bytes written for another vector.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from qsync.disk import LEDGER_MARGIN, ensure_room
from qsync.embedders.protocol import Vectors
from qsync.errors import LedgerError
from qsync.ledger.errors import disk_full, read_only


class VectorFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._append_fd: int | None = None
        self._read_fd: int | None = None
        self._dirty = False  # appended without fsync

    def append(self, vectors: Vectors, *, sync: bool = True) -> int:
        """Write the rows; return the byte offset of the first (row i is at offset + i * row bytes). With
        `sync=False` the caller fsyncs (`sync`) before it commits rows that point at them."""
        data = np.ascontiguousarray(vectors, dtype="<f4").tobytes()
        ensure_room(self.path, len(data) + LEDGER_MARGIN, "the vector file")
        with self._lock:
            try:
                fd = self._writer()
                written = os.write(fd, data)
                if sync:
                    os.fsync(fd)
                else:
                    self._dirty = True
                end = os.lseek(fd, 0, os.SEEK_CUR)
            except OSError as exc:
                raise _error(self.path, exc) from exc
        if written != len(data):  # a regular file takes a whole write unless the disk is full
            raise disk_full(self.path, f"{written} of {len(data)} bytes written")
        return end - len(data)

    def sync(self) -> None:
        """Make every append so far durable."""
        with self._lock:
            if self._append_fd is None or not self._dirty:
                return
            try:
                os.fsync(self._append_fd)
            except OSError as exc:
                raise _error(self.path, exc) from exc
            self._dirty = False

    def read(self, offsets: list[int], dimensions: list[int]) -> list[Vectors | None]:
        """The vector at each offset, or None where the file no longer holds its bytes (it was truncated, deleted
        or replaced since): a cache miss, to be paid for again, never a job that cannot finish."""
        if not offsets:
            return []
        with self._lock:
            try:
                fd = self._reader()
            except FileNotFoundError:
                return [None] * len(offsets)
            except OSError as exc:
                raise _error(self.path, exc) from exc
            try:
                chunks = [os.pread(fd, d * 4, o) for o, d in zip(offsets, dimensions, strict=True)]
            except OSError as exc:
                raise _error(self.path, exc) from exc
        return [
            np.frombuffer(c, dtype="<f4").astype(np.float32) if len(c) == d * 4 else None
            for c, d in zip(chunks, dimensions, strict=True)
        ]

    def size(self) -> int:
        """Bytes in the file at the path now (0 if there is none)."""
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def close(self) -> None:
        with self._lock:
            self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self._append_fd, self._read_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._append_fd = self._read_fd = None

    def _current(self, fd: int | None) -> bool:
        """Whether `fd` is still the file at the path (not deleted, not replaced)."""
        if fd is None:
            return False
        try:
            held, there = os.fstat(fd), self.path.stat()
        except OSError:
            return False
        return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)

    def _writer(self) -> int:
        if self._append_fd is not None and not self._current(self._append_fd):
            self._close_fds()
        if self._append_fd is None:
            new = not self.path.exists()
            self._append_fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if new:  # the file's name must survive a crash too, not only its bytes
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        return self._append_fd

    def end(self) -> int:
        """Where the next append goes: the size of the file at the path (created if there is none)."""
        with self._lock:
            try:
                return os.fstat(self._writer()).st_size
            except OSError as exc:
                raise _error(self.path, exc) from exc

    def _reader(self) -> int:
        if self._read_fd is not None and not self._current(self._read_fd):
            self._close_fds()
        if self._read_fd is None:
            self._read_fd = os.open(self.path, os.O_RDONLY)
        return self._read_fd


def _error(path: Path, exc: OSError) -> LedgerError:
    text = str(exc).lower()
    if "no space" in text or "file too large" in text or "quota" in text:
        return disk_full(path, str(exc))
    if "permission denied" in text or "read-only" in text or "not permitted" in text:
        return read_only(path, str(exc))
    return LedgerError(f"cannot use the vector file {path}: {exc}")
