"""Bringing a checkpoint file to this qsync's schema (ledger/schema.py holds the versions), or refusing one written
by a newer qsync. Run by the file's host (ledger/host.py) when it opens the file."""

from __future__ import annotations

from typing import Any

from qsync.errors import SchemaTooNew
from qsync.ledger.schema import MIGRATIONS, SCHEMA_VERSION, MigrationContext
from qsync.sql import first_row


def file_version(con: Any) -> int:
    """The schema version of the open file (0: a new file)."""
    has_table = first_row(
        con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'qsync_schema'")
    )
    if not (has_table and has_table[0]):
        return 0
    row = first_row(con.execute("SELECT max(version) FROM qsync_schema"))
    return int(row[0]) if row and row[0] is not None else 0


def too_new(path: str, version: int) -> Exception:
    return SchemaTooNew(
        f"{path} was written by a newer qsync (schema version {version}; this qsync knows up to "
        f"{SCHEMA_VERSION}). Upgrade qsync (pip install -U qsync) to use it."
    )


def check_schema(con: Any, context: MigrationContext, path: str) -> None:
    """Bring a connection's file to SCHEMA_VERSION (a new file gets every table), or refuse a file written by a
    newer qsync. A migration and the record that it ran commit together."""
    version = file_version(con)
    if version > SCHEMA_VERSION:
        raise too_new(path, version)
    if version == SCHEMA_VERSION:
        return
    con.execute("BEGIN TRANSACTION")
    try:
        for target, migration in enumerate(MIGRATIONS[version:], start=version + 1):
            if isinstance(migration, str):
                con.execute(migration)
            else:
                migration(con, context)
            con.execute("DELETE FROM qsync_schema")
            con.execute("INSERT INTO qsync_schema VALUES (?)", [target])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
