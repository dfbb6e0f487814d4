"""The Ledger: one checkpoint file (DuckDB) and its vector file, opened and closed together.

Everything qsync knows of its jobs lives in these two files: the jobs and their leases, each job's manifest
(the snapshot of its input), batches and attempts, the money (what each call cost, and the intents of calls not
yet answered), the embedding cache, what each collection should hold. Every read and write of it goes through
a Ledger and the modules of this package; nothing else issues SQL against the file.

    with Ledger(path) as ledger:
        figures = ledger_figures(ledger, job)

A Ledger is cheap to open (nothing is connected until it is used) and must be closed; it is not shared through
any registry. Several Ledgers of one file may be open in one process (a job's run and a widget reading it), and in
many processes: one process, the file's host, opens the file and answers them all (ledger/connection.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from qsync.errors import LedgerError
from qsync.ledger.connection import Connection
from qsync.ledger.statements import RemoteConnection
from qsync.ledger.vectorfile import VectorFile
from qsync.spec.defaults import resolve_db

if TYPE_CHECKING:
    import pandas as pd

T = TypeVar("T")


class Ledger:
    """One checkpoint file and its vector file. `create=False`: refuse a path where no file exists yet (readers
    must not leave an empty file behind a typo)."""

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, create: bool = True, lock_timeout_s: float = 60.0
    ) -> None:
        self.path = resolve_db(path)
        if not create and not self.path.exists():
            raise LedgerError(f"no qsync checkpoint file at {self.path} (run a job first, or pass --db / set QSYNC_DB)")
        self.vectors = VectorFile(self.path.with_suffix(".vectors"))
        self._connection = Connection(self.path, lock_timeout_s=lock_timeout_s)

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def media_dir(self) -> Path:
        """Where DataFrame bytes of media records are kept, content-addressed, beside the checkpoint file."""
        return Path(str(self.path) + ".media")

    # -- access ------------------------------------------------------------------------------------------

    def transaction(self, *, keeps_open: bool = True) -> contextlib.AbstractContextManager[RemoteConnection]:
        """One atomic unit of work: everything inside commits together or not at all."""
        return self._connection.transaction(keeps_open=keeps_open)

    def write(self, apply: Callable[[RemoteConnection], T], *, keeps_open: bool = True) -> T:
        """`apply(con)` in one transaction; its result once committed."""
        with self.transaction(keeps_open=keeps_open) as con:
            return apply(con)

    def reading(self) -> contextlib.AbstractContextManager[RemoteConnection]:
        """A connection for queries. The file's host answers one client at a time: a read waits for another
        client's transaction in progress (see ledger/connection.py)."""
        return self._connection.reading()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Keep the connection open between the transactions of a run (see Connection.held)."""
        with self._connection.held():
            yield

    def query_df(self, sql: str, params: list[Any] | dict[str, Any] | None = None) -> pd.DataFrame:
        with self.reading() as con:
            return con.df(sql, params or [])

    def query_rows(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        with self.reading() as con:
            return con.execute(sql, params or []).fetchall()

    def open(self) -> None:
        """Open (and create, or migrate) the checkpoint file now rather than at its first use."""
        with self.reading():
            pass

    def close(self) -> None:
        """Close both files. Waits for a transaction in progress; later use raises LedgerError."""
        self._connection.close()
        self.vectors.close()
