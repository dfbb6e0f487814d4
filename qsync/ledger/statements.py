"""What the ledger's modules call a connection (`RemoteConnection`) and a result (`RemoteResult`): the same calls as
on a DuckDB connection, each statement answered by the file's host (ledger/host.py) through a Connection
(ledger/connection.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

if TYPE_CHECKING:  # the host answers `df` requests with pandas, imported then: its start is on every run's path
    import pandas as pd


class Sender(Protocol):
    """The Connection a statement goes through (ledger/connection.py)."""

    def send(self, request: tuple[Any, ...]) -> RemoteResult: ...

    def flush(self) -> None: ...

    def request(self, *request: Any) -> Any: ...


class RemoteResult:
    """The rows of one statement, as a DuckDB result gives them. Inside a transaction a statement is sent with the
    next one that needs an answer (or the commit): its rows are there once that has been answered."""

    def __init__(self, rows: list[tuple[Any, ...]] | None = None, owner: Sender | None = None) -> None:
        self._rows = rows
        self._owner = owner

    def fill(self, value: Any) -> None:
        """Its rows, once the host has answered (a register's answer is None: no rows)."""
        self._rows = value if isinstance(value, list) else []

    def fetchall(self) -> list[tuple[Any, ...]]:
        if self._rows is None and self._owner is not None:
            self._owner.flush()
        return self._rows or []

    def fetchone(self) -> tuple[Any, ...] | None:
        rows = self.fetchall()
        return rows[0] if rows else None


@dataclass(frozen=True)
class ArrowStream:
    """A pyarrow Table on its way to the host, as Arrow IPC bytes. Pickled as it is, a table of slices (what Parquet
    and DuckDB give, a few rows' chunks of one buffer) carries each slice's whole parent buffers: 1,000,000 rows of
    text read from Parquet pickled to 650 MB, against 81 MB of IPC."""

    data: bytes

    @classmethod
    def of(cls, table: pa.Table) -> ArrowStream:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return cls(sink.getvalue().to_pybytes())

    def table(self) -> pa.Table:
        return pa.ipc.open_stream(self.data).read_all()


class RemoteConnection:
    """What the ledger's modules call a connection: each statement is answered by the host."""

    def __init__(self, owner: Sender) -> None:
        self._owner = owner

    def execute(self, sql: str, params: Any = None) -> RemoteResult:
        return self._owner.send(("execute", sql, params))

    def begin_now(self) -> RemoteConnection:
        """Send what the transaction queued (its begin first) and wait for the answer: from then on the host serves
        this transaction alone (what another process may change, such as the vector file's end, holds still), and a
        statement that fails has failed. Returns this connection."""
        self._owner.flush()
        return self

    def df(self, sql: str, params: Any = None) -> pd.DataFrame:
        """The query's result as a DataFrame, converted by DuckDB (its dtypes, not a guess from rows)."""
        self._owner.flush()
        frame: pd.DataFrame = self._owner.request("df", sql, params)
        return frame

    def register(self, name: str, table: Any) -> None:
        self._owner.send(("register", name, ArrowStream.of(table) if isinstance(table, pa.Table) else table))

    def unregister(self, name: str) -> None:
        self._owner.send(("unregister", name))
