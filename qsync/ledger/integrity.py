"""A damaged checkpoint file: found, and recovered into a new one.

DuckDB checksums every block and says so when it reads a damaged one ("Corrupt database file: computed checksum
… does not match"), but only when a query reads that block: a status that reads the jobs table says nothing of a
damaged manifest. `check` reads every column of every table (a fraction of a second for a file of 200,000
records, benchmarks/ledger_integrity.py), so every command can tell at once.

`recover` makes a new checkpoint file from a damaged one: every table is copied, row range by row range (DuckDB
stores rows in groups of 2,048: a damaged block loses the ranges it holds, never the table); jobs that were not
finished become `cancelled` (their manifest or batches may have lost rows: running them again is the safe way on,
and the vectors already paid for are in the cache); the damaged file is kept beside, renamed. The vector file is
kept as it is: the cache rows that survive point at the same bytes.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from qsync.clock import SYSTEM_CLOCK
from qsync.errors import LedgerCorrupted, LedgerError
from qsync.ledger.errors import convert, corrupted, locked_by
from qsync.ledger.hosts import stop_host
from qsync.ledger.ledger import Ledger
from qsync.ledger.process import lease_is_live
from qsync.spec.defaults import stale_after_s
from qsync.sql import SqlConnection, ident, literal

ROWS_PER_GROUP = 2048
_NOT_COPIED = {"qsync_schema", "qsync_file", "text_claims"}  # a new file: its own version and id


def tables(con: SqlConnection, database: str | None = None) -> list[str]:
    """The tables of the open file (or of the attached `database`), from its own catalog: a table added by a later
    schema version is checked and copied without a list to keep up to date."""
    where = "database_name = current_database()" if database is None else f"database_name = {literal(database)}"
    rows = con.execute(f"SELECT table_name FROM duckdb_tables() WHERE {where} ORDER BY table_name").fetchall()
    return [str(r[0]) for r in rows]


def check(ledger: Ledger) -> None:
    """Read every block of the checkpoint file's tables; LedgerCorrupted (with what to run) if one is damaged."""
    with ledger.reading() as con:
        for table in tables(con):
            try:
                con.execute(f"SELECT count(*), sum(hash(COLUMNS(*))) FROM {ident(table)}").fetchall()
            except duckdb.Error as exc:
                error = convert(exc, ledger.path)
                if isinstance(error, LedgerCorrupted):
                    raise corrupted(ledger.path, f"table {table}: {str(exc).splitlines()[0]}") from exc
                raise error from exc


@dataclass
class Recovery:
    damaged: Path  # where the damaged file now is
    recovered: Path  # the new checkpoint file (at the old one's path)
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows copied
    lost: dict[str, int] = field(default_factory=dict)  # table -> rows that could not be read
    cancelled: list[str] = field(default_factory=list)  # jobs that were unfinished


def recover(path: Path) -> Recovery:
    """Copy what can be read of the checkpoint file at `path` into a new one at the same path."""
    if not path.exists():
        raise LedgerError(f"no checkpoint file at {path}")
    stop_host(path)  # the file to itself: no other process may be using it
    stamp = time.strftime("%Y%m%d-%H%M%S")
    fresh = path.with_name(f"{path.stem}.recovering-{stamp}.duckdb")
    damaged = path.with_name(f"{path.name}.damaged-{stamp}")
    report = Recovery(damaged, path)
    with Ledger(fresh) as ledger:
        ledger.open()  # a new file, every table of the current schema
    stop_host(fresh)  # its host closes it: the copy below opens it directly
    # Autocommit, not one transaction: a read that meets a damaged block aborts the transaction it is in, and the
    # copy goes on around it.
    con = duckdb.connect(str(fresh))
    try:
        try:
            con.execute(f"ATTACH {literal(str(path))} AS damaged (READ_ONLY)")
        except duckdb.Error as exc:
            if locked_by(exc) is not False:
                raise LedgerError(
                    f"{path} is open in another process ({str(exc).splitlines()[0]}): stop the job or close the "
                    "notebook that uses it, then run `qsync recover` again"
                ) from exc
            raise LedgerCorrupted(
                f"{path} cannot be opened at all ({str(exc).splitlines()[0]}): nothing in it can be recovered. "
                f"Start a new checkpoint file (another --db); the vectors in {path.with_suffix('.vectors')} cannot "
                "be used without it, so texts are paid for once more"
            ) from exc
        _refuse_live_runs(con, path)
        for table in tables(con):
            if table not in _NOT_COPIED:
                _copy(con, table, report)
        con.execute("DETACH damaged")
        report.cancelled = [
            str(r[0])
            for r in con.execute(
                "UPDATE jobs SET status = 'cancelled', lease_token = NULL, owner_pid = NULL, owner_host = NULL, "
                "message = 'recovered from a damaged checkpoint file: run it again (vectors already paid for come "
                "from the cache)' WHERE status NOT IN ('completed', 'cancelled') RETURNING job_id"
            ).fetchall()
        ]
    except BaseException:
        con.close()
        with contextlib.suppress(OSError):
            fresh.unlink()
        raise
    con.close()
    path.replace(damaged)
    with contextlib.suppress(FileNotFoundError):
        Path(str(path) + ".wal").replace(Path(str(damaged) + ".wal"))
    fresh.replace(path)
    return report


def _refuse_live_runs(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """A job whose runner is alive (it let go of the file for a moment) must not have its file swapped under it."""
    try:
        rows = con.execute(
            "SELECT job_id, owner_pid, owner_host, heartbeat_at, stale_after_s FROM damaged.jobs "
            "WHERE status = 'running' AND lease_token IS NOT NULL"
        ).fetchall()
    except duckdb.Error:
        return  # the jobs table itself is damaged: nobody can be running from it
    now = SYSTEM_CLOCK.now()
    for job, pid, host, beat, stale in rows:
        if lease_is_live(pid, host, beat, now, float(stale or stale_after_s())):
            raise LedgerError(
                f"job {job!r} is running on {path} (process {pid}): pause it (or let it fail on the damage) before "
                "`qsync recover`"
            )


def _copy(con: duckdb.DuckDBPyConnection, table: str, report: Recovery) -> None:
    """Copy one table, whole if it reads, else row group by row group, counting the rows lost."""
    old = [r[0] for r in con.execute(f"SELECT name FROM pragma_table_info('damaged.{table}')").fetchall()]
    new = {r[0] for r in con.execute(f"SELECT name FROM pragma_table_info('{table}')").fetchall()}
    columns = ", ".join(ident(c) for c in old if c in new)
    if not columns:  # the damaged file is older than this table
        return
    source = f"damaged.{ident(table)}"
    total = int(con.execute(f"SELECT count(*) FROM {source}").fetchall()[0][0])
    try:
        con.execute(f"INSERT INTO {ident(table)} ({columns}) SELECT {columns} FROM {source}")
        report.rows[table] = total
        return
    except duckdb.Error:
        pass  # a damaged block: the statement changed nothing; copy around it
    bounds = con.execute(f"SELECT min(rowid), max(rowid) FROM {source}").fetchall()[0]
    copied = 0
    if bounds[0] is not None:
        for start in range(int(bounds[0]), int(bounds[1]) + 1, ROWS_PER_GROUP):
            where = f"rowid >= {start} AND rowid < {start + ROWS_PER_GROUP}"
            try:
                con.execute(f"INSERT INTO {ident(table)} ({columns}) SELECT {columns} FROM {source} WHERE {where}")
            except duckdb.Error:
                continue  # this group's blocks are damaged: its rows are lost
            copied += int(con.execute(f"SELECT count(*) FROM {source} WHERE {where}").fetchall()[0][0])
    report.rows[table] = copied
    report.lost[table] = total - copied
