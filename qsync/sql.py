"""Small helpers for DuckDB results that read the same across DuckDB 1.x and 2.x."""

from __future__ import annotations

from typing import Any, Protocol

import duckdb


class Rows(Protocol):
    """A statement's result: a DuckDB connection after `execute`, or the ledger host's answer."""

    def fetchall(self) -> list[tuple[Any, ...]]: ...


class SqlConnection(Protocol):
    """What qsync's SQL runs on: a DuckDB connection, or a Ledger's connection to its file's host."""

    def execute(self, sql: str, params: Any = ..., /) -> Any: ...

    def register(self, name: str, table: Any, /) -> Any: ...

    def unregister(self, name: str, /) -> Any: ...


def quoted(value: str) -> str:
    """`value` as an SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def literal_list(values: list[str]) -> str:
    """Strings as a list of SQL literals, for `x IN (...)`: DuckDB looks each up in a primary-key index (a join with a
    list parameter scans the table), and binding a literal costs less than binding a parameter (~10 µs each: a
    third of a 100-key lookup's time)."""
    return ", ".join(quoted(v) for v in values)


def first_row(result: Rows) -> tuple[Any, ...] | None:
    """The first row, with the result consumed: DuckDB 2 refuses register() while a result is half read."""
    rows = result.fetchall()
    return rows[0] if rows else None


def arrow_table(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Any:
    """A query's result as a pyarrow Table."""
    relation = con.sql(sql, params=params) if params else con.sql(sql)
    return relation_arrow(relation)


def relation_arrow(relation: duckdb.DuckDBPyRelation) -> Any:
    """A relation's rows as a pyarrow Table (DuckDB 1.4 and later: to_arrow_table; before, arrow)."""
    fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
    return fetch()


def ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A quoted SQL string literal."""
    return "'" + text.replace("'", "''") + "'"
