"""Access to the DuckDB checkpoint file, shared fairly between processes.

DuckDB lets one process open a file for writing and then refuses every other process, even a read-only
one. A runner that kept the file open for hours would make `qsync status` in a second terminal, or a
second notebook, impossible. So:

* a writing Store opens its connection when it has work and closes it after `idle_close_s` without
  use, and at once when another process is waiting for the file;
* a process that finds the file locked leaves a request file in `<db>.waiting/` and retries; the
  holder's keeper thread sees it within ~20 ms and lets go between two transactions;
* within one process every Store for a path is the same object, because DuckDB refuses a second,
  differently configured connection to a file the process already has open.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from .errors import SchemaTooNew, StoreError, StoreLocked
from .schema import MIGRATIONS, SCHEMA_VERSION

_LOCK_PATTERN = re.compile(r"Could not set lock|Conflicting lock", re.IGNORECASE)
_PID_PATTERN = re.compile(r"PID (\d+)")
_RETRY_INTERVAL_S = 0.02
_REQUEST_MAX_AGE_S = 30.0
_MAX_YIELD_S = 1.0
HELD_IDLE_CLOSE_S = 0.5  # see Store.held
_MIN_HOLD_S = 0.25  # a request file older than this was left by a killed process

_registry: weakref.WeakValueDictionary[str, Store] = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()


def pid_alive(pid: int) -> bool:
    """Whether a process on this host is still running (a zombie, killed but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): signal 0 is all we can know
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def open_store(path: str | os.PathLike[str], *, writable: bool = True, lock_timeout_s: float = 60.0) -> Store:
    """The Store for `path` in this process: the open writable one if any, else a new one."""
    key = str(Path(path).expanduser().resolve())
    with _registry_lock:
        existing = _registry.get(key)
        if existing is not None and not existing._closed.is_set():
            return existing
        store = Store(key, writable=writable, lock_timeout_s=lock_timeout_s)
        if writable:
            _registry[key] = store
        return store


@atexit.register
def _close_all() -> None:
    # A daemon thread still inside DuckDB when the interpreter tears down aborts the process
    # ("FATAL: exception not rethrown"); close every connection while threads can still be waited for.
    with _registry_lock:
        stores = list(_registry.values())
    for store in stores:
        store.close()


class Store:
    def __init__(self, path: str, *, writable: bool, lock_timeout_s: float = 60.0, idle_close_s: float = 0.05) -> None:
        self.path = path
        self.writable = writable
        self.lock_timeout_s = lock_timeout_s
        self.idle_close_s = idle_close_s
        self._waiting_dir = Path(path + ".waiting")
        self._con: duckdb.DuckDBPyConnection | None = None
        self._lock = threading.RLock()
        self._last_used = time.monotonic()
        self._yielded_at = 0.0
        self._migrated = False
        self._keeper: threading.Thread | None = None
        self._closed = threading.Event()
        self._holds = 0  # runs in progress (`held`): the connection stays open between their transactions
        self._readers = 0  # cursors reading now (see `reading`): the connection is not closed under them
        self._readers_lock = threading.Lock()
        self._tx_thread: int | None = None  # the thread whose transaction is in progress
        if not writable and not Path(path).exists():
            raise StoreError(f"no qsync store at {path} (run a job first, or pass --db / set QSYNC_DB)")

    # -- public ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, *, keeps_open: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """One atomic unit of work: everything inside commits together or not at all. `keeps_open=False`:
        this transaction does not count as use for closing an idle connection (a heartbeat)."""
        if not self.writable:
            raise StoreError(f"{self.path} was opened read-only")
        with self._lock:
            con = self._connection()
            con.execute("BEGIN TRANSACTION")
            self._tx_thread = threading.get_ident()
            try:
                yield con
            except BaseException as exc:
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                if _is_io_failure(exc):  # a full disk or a lost file, not a bug: say so plainly
                    raise _convert(exc, self.path) from exc  # type: ignore[arg-type]
                raise
            else:
                try:
                    con.execute("COMMIT")
                except duckdb.Error as exc:
                    with contextlib.suppress(duckdb.Error):
                        con.execute("ROLLBACK")
                    raise _convert(exc, self.path) from exc
            finally:
                self._tx_thread = None
                self._release(keeps_open)

    @contextlib.contextmanager
    def reading(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for queries; read-only stores close it again at once.

        A writable store reads through a cursor of its open connection, without waiting for the
        transaction in progress (DuckDB reads a consistent snapshot meanwhile): a run's cache look-ups and
        manifest reads used to queue behind every commit. Inside a transaction of this thread, the
        transaction's own connection is used, so that the reads see its writes."""
        cursor = self._reader() if self.writable and self._tx_thread != threading.get_ident() else None
        if cursor is None:
            with self._lock:
                con = self._connection()
                try:
                    yield con
                finally:
                    self._release()
            return
        try:
            yield cursor
        finally:
            with contextlib.suppress(duckdb.Error):
                cursor.close()
            with self._readers_lock:
                self._readers -= 1
            self._last_used = time.monotonic()

    def _reader(self) -> duckdb.DuckDBPyConnection:
        """A cursor of the open connection, counted so that nobody closes the connection under it."""
        with self._readers_lock:
            con = self._con
            if con is not None:
                self._readers += 1
                try:
                    return con.cursor()
                except BaseException:
                    self._readers -= 1
                    raise
        with self._lock:  # not open: open it (no transaction can be in progress without it)
            con = self._connection()
            with self._readers_lock:
                self._readers += 1
            try:
                return con.cursor()
            except BaseException:
                with self._readers_lock:
                    self._readers -= 1
                raise

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Keep the connection open while a run works, unless it goes unused for HELD_IDLE_CLOSE_S. A close
        checkpoints DuckDB's WAL and a reopen reads the catalog again: closed after 50 ms idle, a run at
        concurrency 1 with 300 ms calls spent a fifth of its time reopening (measured). Other processes still
        get the file on request; and a runner frozen in a long call (Ctrl-Z) has let go of it."""
        with self._lock:
            self._holds += 1
        try:
            yield
        finally:
            with self._lock:
                self._holds -= 1
                self._last_used = time.monotonic()

    def query_df(self, sql: str, params: list[Any] | dict[str, Any] | None = None) -> pd.DataFrame:
        with self.reading() as con:
            return con.execute(sql, params or []).df()

    def query_rows(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        with self.reading() as con:
            return con.execute(sql, params or []).fetchall()

    def close(self) -> None:
        """Close for good: later use raises StoreError. Waits for the transaction in progress, if any."""
        self._closed.set()
        while True:
            with self._lock:
                if self._disconnect():
                    break
            time.sleep(0.005)  # a cursor is reading: it is done in a moment
        keeper = self._keeper
        if keeper is not None and keeper is not threading.current_thread():
            keeper.join(timeout=5)

    # -- connection management ---------------------------------------------------------------------

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._closed.is_set():
            raise StoreError(f"{self.path} was closed")
        if self._con is not None and self._may_yield() and self._others_waiting():
            self._yield_to_others()
        if self._con is None:
            self._con = self._connect()
            if self.writable and self._keeper is None:
                self._keeper = threading.Thread(target=self._keep, name="qsync-store-keeper", daemon=True)
                self._keeper.start()
        return self._con

    def _release(self, used: bool = True) -> None:
        if used:
            self._last_used = time.monotonic()
        if not self.writable:
            self._disconnect()

    def _disconnect(self) -> bool:
        """Close the connection (held: self._lock) unless cursors are reading from it; whether it is closed."""
        with self._readers_lock:
            if self._readers:
                return False
            con, self._con = self._con, None
        if con is not None:
            with contextlib.suppress(duckdb.Error):
                con.close()
        return True

    def _connect(self) -> duckdb.DuckDBPyConnection:
        if self.writable:
            parent = Path(self.path).parent
            if not parent.exists():
                parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        request: Path | None = None
        try:
            while True:
                try:
                    con = duckdb.connect(self.path, read_only=not self.writable)
                except duckdb.Error as exc:
                    if not _LOCK_PATTERN.search(str(exc)):
                        raise _convert(exc, self.path) from exc
                    waited = time.monotonic() - started
                    if waited > self.lock_timeout_s:
                        match = _PID_PATTERN.search(str(exc))
                        raise StoreLocked(self.path, int(match.group(1)) if match else None, waited) from None
                    if request is None:
                        request = self._ask_holder_to_yield()
                    time.sleep(_RETRY_INTERVAL_S)
                    continue
                try:
                    self._check_schema(con)
                except BaseException:
                    con.close()
                    raise
                return con
        finally:
            if request is not None:
                with contextlib.suppress(OSError):
                    request.unlink()

    def _ask_holder_to_yield(self) -> Path | None:
        try:
            self._waiting_dir.mkdir(exist_ok=True)
            request = self._waiting_dir / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            request.touch()
            return request
        except OSError:
            return None  # a read-only folder: we can still poll, the holder just won't hurry

    def _others_waiting(self) -> bool:
        try:
            entries = list(os.scandir(self._waiting_dir))
        except OSError:
            return False
        own = f"{os.getpid()}-"
        now = time.time()
        for entry in entries:
            if entry.name.startswith(own):
                continue
            pid = entry.name.split("-", 1)[0]
            try:
                # A request left by a killed process would make us yield for nothing: drop it.
                if (pid.isdigit() and not pid_alive(int(pid))) or now - entry.stat().st_mtime > _REQUEST_MAX_AGE_S:
                    Path(entry.path).unlink()
                    continue
            except OSError:
                continue
            return True
        return False

    def _may_yield(self) -> bool:
        # Between two yields the writer keeps the file for _MIN_HOLD_S: each yield costs a close (with a
        # checkpoint) and a reopen, and readers polling many times a second must not stall the job.
        return time.monotonic() - self._yielded_at >= _MIN_HOLD_S

    def _yield_to_others(self) -> None:
        """Let go of the file until the processes waiting for it got in (they delete their request
        once connected), for at most _MAX_YIELD_S: a busy writer must not starve a reader."""
        if not self._disconnect():
            return  # a cursor is reading: let go at the next transaction
        self._yielded_at = time.monotonic()
        deadline = time.monotonic() + _MAX_YIELD_S
        while self._others_waiting() and time.monotonic() < deadline:
            time.sleep(0.005)

    def _keep(self) -> None:
        """Close the connection when idle or when another process waits for the file.

        Runs only while a connection is open: it ends once it has closed it, and _connection starts a
        new one with the next connection, so an idle store costs no thread and no polling."""
        while not self._closed.wait(_RETRY_INTERVAL_S):
            idle = time.monotonic() - self._last_used > (HELD_IDLE_CLOSE_S if self._holds else self.idle_close_s)
            if not (idle or self._con is None or (self._may_yield() and self._others_waiting())):
                continue
            if self._lock.acquire(blocking=False):
                try:
                    if self._disconnect():
                        self._keeper = None
                        return
                finally:
                    self._lock.release()

    def _check_schema(self, con: duckdb.DuckDBPyConnection) -> None:
        if self._migrated:
            return
        has_table = first_row(
            con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'qsync_schema'")
        )
        version = 0
        if has_table and has_table[0]:
            row = first_row(con.execute("SELECT max(version) FROM qsync_schema"))
            version = int(row[0]) if row and row[0] is not None else 0
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{self.path} was written by a newer qsync (schema version {version}; this qsync knows "
                f"up to {SCHEMA_VERSION}). Upgrade qsync (pip install -U qsync) to use it."
            )
        if version < SCHEMA_VERSION:
            if not self.writable:
                raise StoreError(
                    f"{self.path} has schema version {version}; run any qsync job command once to migrate "
                    f"it to version {SCHEMA_VERSION}"
                )
            con.execute("BEGIN TRANSACTION")
            try:
                for target, migration in enumerate(MIGRATIONS[version:], start=version + 1):
                    if isinstance(migration, str):
                        con.execute(migration)
                    else:
                        migration(con, self.path)
                    con.execute("DELETE FROM qsync_schema")
                    con.execute("INSERT INTO qsync_schema VALUES (?)", [target])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        self._migrated = True


def _is_io_failure(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.IOException) or (
        isinstance(exc, duckdb.Error) and "could not write" in str(exc).lower()
    )


def _convert(exc: duckdb.Error, path: str) -> StoreError:
    text = str(exc)
    lowered = text.lower()
    if "no space left" in lowered or "file too large" in lowered or "disk quota" in lowered:
        return StoreError(
            f"cannot write {path}: the disk is full or a file size limit was reached; free space, then resume "
            f"the job — nothing unfinished was marked done ({text})"
        )
    if "permission denied" in lowered or "read-only file system" in lowered or "operation not permitted" in lowered:
        return StoreError(f"cannot write {path}: permission denied; choose a writable --db ({text})")
    return StoreError(f"DuckDB failed on {path}: {text}")


def first_row(result: duckdb.DuckDBPyConnection) -> tuple[Any, ...] | None:
    """The first row, with the result consumed: DuckDB 2 refuses register() while a result is half read."""
    rows = result.fetchall()
    return rows[0] if rows else None


def arrow_table(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Any:
    """A query's result as a pyarrow Table, across DuckDB 1.x and 2.x."""
    relation = con.sql(sql, params=params) if params else con.sql(sql)
    fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
    return fetch()
