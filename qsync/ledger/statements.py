"""What the ledger's modules call a connection (`RemoteConnection`) and a result (`RemoteResult`): the same calls as
on a DuckDB connection, each statement answered by the file's host (ledger/host.py) through a Connection
(ledger/connection.py)."""

from __future__ import annotations

from typing import Any, Protocol

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


class RemoteConnection:
    """What the ledger's modules call a connection: each statement is answered by the host."""

    def __init__(self, owner: Sender) -> None:
        self._owner = owner

    def execute(self, sql: str, params: Any = None) -> RemoteResult:
        return self._owner.send(("execute", sql, params))

    def df(self, sql: str, params: Any = None) -> pd.DataFrame:
        """The query's result as a DataFrame, converted by DuckDB (its dtypes, not a guess from rows)."""
        self._owner.flush()
        frame: pd.DataFrame = self._owner.request("df", sql, params)
        return frame

    def register(self, name: str, table: Any) -> None:
        self._owner.send(("register", name, table))

    def unregister(self, name: str) -> None:
        self._owner.send(("unregister", name))
