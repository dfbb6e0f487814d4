"""The bytes of every cached vector, in one append-only file beside the DuckDB file (`qsync.vectors`).

Each vector is `dimensions` little-endian float32, written once; the `embeddings` table in DuckDB maps a
cache key to its byte offset here. Keeping the bytes out of DuckDB makes persisting a batch of 100 768-d
vectors cost ~3 ms of CPU instead of ~20, with no multi-second WAL checkpoints
(benchmarks/checkpoint_formats.py).

The order is what makes it safe: the vectors are appended and fsynced first, and only then is the row
that points at them committed. A crash in between leaves unused bytes at the end of the file, never a
row pointing at bytes that are not there. Appends use O_APPEND and one write() per batch, and the offset
is read back from the file description after the write, so two processes appending (each holds the
DuckDB file in turn) never overwrite each other.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from .embedders.base import Vectors
from .errors import StoreError

_files: dict[str, VectorFile] = {}
_files_lock = threading.Lock()


def vector_file_for(db_path: str | os.PathLike[str]) -> VectorFile:
    """The vector file beside a DuckDB file (q.duckdb -> q.vectors), one object per path per process."""
    path = str(Path(db_path).with_suffix(".vectors"))
    with _files_lock:
        found = _files.get(path)
        if found is None:
            found = _files[path] = VectorFile(path)
        return found


class VectorFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._append_fd: int | None = None
        self._read_fd: int | None = None

    def append(self, vectors: Vectors) -> int:
        """Write the rows durably; return the byte offset of the first (row i is at offset + i * row bytes)."""
        data = np.ascontiguousarray(vectors, dtype="<f4").tobytes()
        with self._lock:
            try:
                fd = self._writer()
                written = os.write(fd, data)
                os.fsync(fd)
                end = os.lseek(fd, 0, os.SEEK_CUR)
            except OSError as exc:
                raise _store_error(self.path, exc) from exc
        if written != len(data):  # a regular file takes a whole write unless the disk is full
            raise StoreError(f"cannot write {self.path}: {written} of {len(data)} bytes written; is the disk full?")
        return end - len(data)

    def read(self, offsets: list[int], dimensions: list[int]) -> Vectors:
        """The vectors at these offsets, as a (len(offsets), dimensions) float32 matrix."""
        if not offsets:
            return np.zeros((0, 0), dtype=np.float32)
        with self._lock:
            try:
                fd = self._reader()
                chunks = [os.pread(fd, d * 4, o) for o, d in zip(offsets, dimensions, strict=True)]
            except OSError as exc:
                raise _store_error(self.path, exc) from exc
        if any(len(c) != d * 4 for c, d in zip(chunks, dimensions, strict=True)):
            raise StoreError(f"{self.path} is shorter than the embedding cache says: it was truncated or replaced")
        return np.frombuffer(b"".join(chunks), dtype="<f4").reshape(len(offsets), -1).astype(np.float32)

    def _writer(self) -> int:
        if self._append_fd is None:
            new = not Path(self.path).exists()
            self._append_fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if new:  # the file's name must survive a crash too, not only its bytes
                dir_fd = os.open(Path(self.path).parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        return self._append_fd

    def _reader(self) -> int:
        if self._read_fd is None:
            self._read_fd = os.open(self.path, os.O_RDONLY)
        return self._read_fd


def _store_error(path: str, exc: OSError) -> StoreError:
    text = str(exc).lower()
    if "no space" in text or "file too large" in text or "quota" in text:
        return StoreError(
            f"cannot write {path}: the disk is full or a file size limit was reached; free space, then resume the "
            f"job — nothing unfinished was marked done ({exc})"
        )
    if "permission denied" in text or "read-only" in text:
        return StoreError(f"cannot write {path}: permission denied; choose a writable --db ({exc})")
    return StoreError(f"cannot use the vector file {path}: {exc}")
