"""PostgreSQL as a source: a query's rows streamed into a DuckDB temp table a record batch at a time, never the
whole result in this process's memory; and the connection string kept apart from its password.

The driver is ADBC's PostgreSQL driver (`adbc-driver-postgresql`, libpq inside its wheel): it reads the result with
COPY in PostgreSQL's binary format straight into Arrow record batches, the form DuckDB takes without a copy. It was
the fastest of three drivers measured (benchmarks/postgres_source.py; psycopg 3 with a server-side cursor, and
connectorx, which has no bounded stream). The connection string is libpq's: a URL (postgresql://, postgres://) or a
keyword string (host=… dbname=…), so the password may also come from where libpq looks for it (PGPASSWORD,
~/.pgpass, a PGSERVICE entry).

Secrets: a job stores `redact(dsn)`, what identifies the database without the password; every message of the
driver goes through `scrub` before anyone sees it.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from qsync.errors import SourceError
from qsync.sql import SqlConnection

_SCHEMES = ("postgresql://", "postgres://")
_KEYWORD = re.compile(r"^\s*[A-Za-z_]+\s*=")  # libpq's keyword/value form: host=… dbname=…
_KEYWORD_PASSWORD = re.compile(r"(?i)\bpassword\s*=\s*('(?:[^'\\]|\\.)*'|\S+)\s*")
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")  # table or schema.table, unquoted
POSTGRES_TABLE = "__qsync_pg"  # the rows read, for the planner (which drops it)
_BATCH = "__qsync_pg_batch"
_BATCH_BYTES = 8 * 1024 * 1024  # the driver's record batches: a few MB each bounds this process's memory
_WHERE_PASSWORDS = "the URL, PGPASSWORD, ~/.pgpass or a PGSERVICE entry"


def is_postgres(database: str | None) -> bool:
    """A PostgreSQL connection string (URL or libpq keywords) rather than a DuckDB file."""
    if not database:
        return False
    return database.strip().lower().startswith(_SCHEMES) or bool(_KEYWORD.match(database))


def table_query(name: str) -> str | None:
    """`SELECT * FROM name` for a plain table name (`glosses`, `public.glosses`), None for anything else."""
    return f"SELECT * FROM {name}" if _TABLE.match(name.strip()) else None


def redact(dsn: str) -> str:
    """The connection string without its password (in a URL's user part, its query, or a keyword)."""
    if not dsn.strip().lower().startswith(_SCHEMES):
        return _KEYWORD_PASSWORD.sub("", dsn).strip()
    parts = urllib.parse.urlsplit(dsn)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}@{hosts}"
    query = urllib.parse.urlencode(
        [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if k.lower() != "password"]
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def without_secret(database: str | None) -> str | None:
    """What a job stores of its source database: a PostgreSQL connection string redacted, a DuckDB file as given."""
    return redact(database) if database and is_postgres(database) else database


def _passwords(dsn: str) -> list[str]:
    """Every spelling of the password a connection string holds (raw, percent-encoded, quoted)."""
    found: list[str] = []
    if dsn.strip().lower().startswith(_SCHEMES):
        parts = urllib.parse.urlsplit(dsn)
        userinfo = parts.netloc.rpartition("@")[0]
        if ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
        found += [v for k, v in urllib.parse.parse_qsl(parts.query) if k.lower() == "password"]
    else:
        found += [m.group(1) for m in _KEYWORD_PASSWORD.finditer(dsn)]
    spellings = {s for p in found for s in (p, urllib.parse.unquote(p), p.strip("'"), urllib.parse.quote(p, safe=""))}
    return sorted((s for s in spellings if s), key=len, reverse=True)


def scrub(text: str, dsn: str) -> str:
    """`text` with the connection string redacted and its password, in any spelling, masked."""
    text = text.replace(dsn, redact(dsn))
    for secret in _passwords(dsn):
        text = text.replace(secret, "***")
    return text


def _driver() -> Any:
    try:
        from adbc_driver_postgresql import dbapi
    except ImportError as exc:
        raise SourceError(
            "reading from PostgreSQL needs its driver: pip install 'qsync[postgres]' (adbc-driver-postgresql)"
        ) from exc
    return dbapi


def _failure(exc: BaseException, dsn: str, doing: str) -> SourceError:
    message = " ".join(scrub(str(exc), dsn).replace("IO: [libpq] ", "").replace("[libpq] ", "").split())[:400]
    hint = ""
    if "password" in message.lower() or "no password supplied" in message:
        hint = f"; the password comes from {_WHERE_PASSWORDS}"
    return SourceError(f"PostgreSQL ({redact(dsn)}): {doing}: {message}{hint}")


def _plain(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch with PostgreSQL's extension types (numeric, json, …) as their storage (text), metadata dropped:
    what DuckDB reads as plain columns."""
    arrays = [a.storage if isinstance(a, pa.ExtensionArray) else a for a in batch.columns]
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def _plain_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema(
        [pa.field(f.name, f.type.storage_type if isinstance(f.type, pa.BaseExtensionType) else f.type) for f in schema]
    )


class _Stream:
    """The rows of one query, batch by batch, with the driver's errors converted (and scrubbed) as they happen."""

    def __init__(self, dsn: str, query: str, limit: int | None = None) -> None:
        self.dsn, self.rows = dsn, 0
        dbapi = _driver()
        self._errors = (dbapi.Error, OSError)
        sql = f"SELECT * FROM ({query.strip().rstrip(';')}) AS q LIMIT {limit}" if limit is not None else query
        try:
            self._con = dbapi.connect(dsn)
        except self._errors as exc:
            raise _failure(exc, dsn, "cannot connect") from None
        try:
            self._cur = self._con.cursor()
            self._cur.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(_BATCH_BYTES)})
            self._cur.execute(sql)
            self._reader = self._cur.fetch_record_batch()
            self.schema = _plain_schema(self._reader.schema)
        except self._errors as exc:
            self.close()
            raise _failure(exc, dsn, "the source query failed") from None

    def batches(self) -> Iterator[pa.RecordBatch]:
        while True:
            try:
                batch = self._reader.read_next_batch()
            except StopIteration:
                return
            except self._errors as exc:
                raise _failure(
                    exc, self.dsn, f"reading the rows failed after {self.rows:,}; nothing was planned"
                ) from None
            self.rows += batch.num_rows
            yield _plain(batch)

    def close(self) -> None:
        for part in ("_cur", "_con"):
            closer = getattr(self, part, None)
            if closer is not None:
                try:
                    closer.close()
                except self._errors:  # a connection the server dropped closes as it can
                    pass


def columns_of(dsn: str, query: str) -> list[str]:
    """The column names of a query, without reading its rows."""
    stream = _Stream(dsn, query, limit=0)
    try:
        return list(stream.schema.names)
    finally:
        stream.close()


def copy_into(con: SqlConnection, dsn: str, query: str, table: str) -> int:
    """Stream the query's rows into the temp table `table` on `con` (a DuckDB connection, or the ledger's), one
    record batch at a time; the number of rows. Each batch is written (and its answer awaited) before the next is
    read, so no more than one batch is held here, and a transaction on the ledger's host never sits idle."""
    stream = _Stream(dsn, query)
    try:
        con.register(_BATCH, stream.schema.empty_table())
        con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT * FROM {_BATCH}").fetchall()
        con.unregister(_BATCH)
        for batch in stream.batches():
            con.register(_BATCH, pa.Table.from_batches([batch]))
            con.execute(f"INSERT INTO {table} SELECT * FROM {_BATCH}").fetchall()
            con.unregister(_BATCH)
        return stream.rows
    finally:
        stream.close()
