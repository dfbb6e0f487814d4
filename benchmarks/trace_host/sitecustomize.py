"""Statement timings of the checkpoint file's host, for benchmarks/two_million.py --trace (never used by qsync).

On PYTHONPATH, Python imports this at start-up. In a `python -m qsync.ledger.host` process, with QSYNC_TRACE_HOST set
to a file, every DuckDB statement the host runs is appended to that file: the wall time it ended, its seconds
(execute and fetch), and its first characters.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

_OUT = os.environ.get("QSYNC_TRACE_HOST")
_ARGS = Path("/proc/self/cmdline").read_bytes().split(b"\0") if _OUT else []

if _OUT and b"qsync.ledger.host" in _ARGS:
    import duckdb

    _connect = duckdb.connect

    _CHARS = int(os.environ.get("QSYNC_TRACE_CHARS", "160"))  # how much of each statement is kept

    def _log(started: float, sql: str) -> None:
        now = time.time()
        with Path(_OUT).open("a") as out:
            out.write(f"{now:.3f}\t{now - started:.4f}\t{' '.join(str(sql).split())[:_CHARS]}\n")

    class _Result:
        def __init__(self, inner: Any, sql: str, started: float, spent: float) -> None:
            self._inner, self._sql, self._started, self._spent = inner, sql, started, spent

        def _timed(self, name: str, *args: Any) -> Any:
            begun = time.time()
            value = getattr(self._inner, name)(*args)
            _log(begun - self._spent, self._sql)
            return value

        def fetchall(self) -> Any:
            return self._timed("fetchall")

        def fetchone(self) -> Any:
            return self._timed("fetchone")

        def df(self) -> Any:
            return self._timed("df")

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    class _Connection:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def execute(self, sql: str, *args: Any) -> Any:
            begun = time.time()
            inner = self._inner.execute(sql, *args)
            if str(sql).split(None, 1)[0].upper() in ("BEGIN", "COMMIT", "ROLLBACK", "CHECKPOINT", "SET"):
                _log(begun, sql)  # nobody fetches their results
                return inner
            return _Result(inner, sql, begun, time.time() - begun)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    def _traced(*args: Any, **kwargs: Any) -> Any:
        return _Connection(_connect(*args, **kwargs))

    duckdb.connect = _traced  # type: ignore[assignment]
