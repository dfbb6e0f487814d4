"""Reading only the rows changed since the last completed job (`--changed-since COLUMN`), for tables too large to read
whole at every re-sync.

COLUMN is a timestamp, a date or an increasing number that the table sets when a row is written. A job records the
largest value it read (its high-water mark); the next re-sync reads the rows with COLUMN >= that mark, from the newest
*completed* job of its name (a cancelled or unfinished one may not have loaded what it read). `>=`, not `>`: a row
written later with the same value as the mark (two rows in one second, one committed after the read) is read again
rather than missed; the rows read again at the mark are unchanged, so they cost nothing.

The rows not read are taken as unchanged. Deletions are then found by ids alone: with `--delete-missing`, the ids of
every row are read (one column) and the points of records whose id is in neither those ids nor the rows read are
deleted. The filter runs where the table lives: in PostgreSQL's query, so only the changed rows cross the network.
"""

from __future__ import annotations

from dataclasses import dataclass

from qsync.errors import SourceError
from qsync.sql import SqlConnection, ident, literal

PRESENT_TABLE = "__qsync_present"  # record_id VARCHAR: every id of the source, read for deletions by ids alone
CHANGED_VALUE = "__qsync_changed"  # the column's value in the normalized input (its maximum is the high-water mark)

# Column types whose order is the order rows were written in: timestamps, dates, numbers. Text is refused: '9' > '10'.
_ORDERED = ("TIMESTAMP", "DATE", "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
            "UINTEGER", "UBIGINT", "UHUGEINT", "DECIMAL", "DOUBLE", "FLOAT", "REAL")  # fmt: skip


@dataclass(frozen=True)
class ChangedSince:
    """What a plan reads of a source with `--changed-since`: rows with `column` >= `since` (every row when `since` is
    None: the first job, or no completed one had the column); `ids`: also every id, for deletions by ids alone."""

    column: str
    since: str | None = None
    ids: bool = False

    def filtered(self, query: str) -> str:
        """The query (SQL valid in DuckDB and PostgreSQL alike) reading only the changed rows. The mark is a string
        literal: either database casts it to the column's type."""
        if self.since is None:
            return query
        return f"SELECT * FROM ({query.strip().rstrip(';')}) AS q WHERE {ident(self.column)} >= {literal(self.since)}"

    def ids_query(self, query: str, id_column: str) -> str:
        return f"SELECT {ident(id_column)} FROM ({query.strip().rstrip(';')}) AS q"

    @property
    def reads_ids(self) -> bool:
        return self.ids and self.since is not None

    def check_type(self, column_type: str, description: str) -> None:
        if not column_type.upper().startswith(_ORDERED):
            raise SourceError(
                f"--changed-since {self.column!r}: the column holds {column_type} in {description}; it must be a "
                "timestamp, a date or an increasing number that the table sets when a row is written (PostgreSQL's "
                "numeric arrives as text: cast it in the query, e.g. sql:SELECT *, version::bigint AS v FROM t)"
            )

    def describe(self) -> str:
        """How a job says what it read."""
        if self.since is None:
            return f"every row (the first job with --changed-since {self.column})"
        return f"rows with {self.column} >= {self.since}"


def keep_ids(con: SqlConnection, relation_sql: str, id_column: str) -> None:
    """PRESENT_TABLE: every id of the source, as the plan reads ids (for deletions by ids alone)."""
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {PRESENT_TABLE} AS SELECT CAST({ident(id_column)} AS VARCHAR) AS record_id "
        f"FROM {relation_sql}"
    )
