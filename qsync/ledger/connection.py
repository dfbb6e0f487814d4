"""A Ledger's connection to its checkpoint file, through the file's host process (ledger/host.py).

DuckDB lets one process open a file. qsync used to share it by hand-over: whoever held it closed it (with a
checkpoint) when another process asked, many times a second with two jobs running. Two runners on one file so
corrupted it, now and then, in blocks DuckDB had just checkpointed (issue 25; docs/RELIABILITY.md has the figures).
Now one process, the host, opens the file and keeps it open while anyone uses it; every qsync process (a runner, a
second job, `qsync status`, a notebook's widgets) sends it SQL over a Unix socket. Nothing waits for a holder to
let go, and a runner frozen with Ctrl-Z holds nothing: the host lets go of a transaction idle for 30 s.

`Connection` starts the host when there is none (`python -m qsync.ledger.host PATH`, a session of its own, its
log in the hosts' folder), says hello (the host opens the file and checks its schema), and keeps the socket until
the Ledger has been idle for `idle_close_s`; the host ends a moment after its last client left. What the ledger's
modules get is a `RemoteConnection`: `execute(sql, params)` with `fetchall()`, `df()`, `register` and
`unregister`, as on a DuckDB connection, every statement answered by the host. A Connection also checks that the
file at its path is still the one it first opened: a file deleted or replaced is refused, never written through
the old host.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
import weakref
from collections.abc import Iterator
from multiprocessing.connection import Client
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import duckdb

from qsync.errors import LedgerError, LedgerLocked
from qsync.ledger.errors import convert, locked_by
from qsync.ledger.hosts import failed_start, host_files, log_tail, spawn
from qsync.ledger.migrate import too_new
from qsync.ledger.schema import SCHEMA_VERSION
from qsync.ledger.statements import RemoteConnection, RemoteResult

HELD_IDLE_CLOSE_S = 2.0  # see Connection.held
_MIGRATION_S = 120.0  # beyond the lock timeout, how long a hello may take (the host migrating a large file)
# How long a host may take to start and listen. Waiting for another program's lock on the file is the host's part
# (lock_timeout_s, then it answers who holds it): a short lock timeout on a busy machine, where a host's start-up
# alone can take longer, must not read as "the file is held" without a holder.
_HOST_START_S = 30.0

FileIdentity = tuple[int, int]  # (st_dev, st_ino)

# Every Connection not yet closed, to close at exit: a socket closed in the middle of a transaction is rolled back by
# the host; closed at exit, the host knows at once that this process is gone.
_open_connections: weakref.WeakSet[Connection] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child must not use its parent's sockets (answers would cross between the two processes): it closes
    its copies, which the host does not notice (the parent's stay open), and starts afresh with new locks."""
    for connection in list(_open_connections):
        connection.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _close_at_exit() -> None:
    for connection in list(_open_connections):
        connection.close_at_exit()


class Connection:
    """The connection of one Ledger to its file's host, opened when there is work and closed when idle."""

    def __init__(self, path: Path, *, lock_timeout_s: float = 60.0, idle_close_s: float = 0.5) -> None:
        self.path = path
        self.lock_timeout_s = lock_timeout_s
        self.idle_close_s = idle_close_s
        self._pipe: Pipe | None = None
        self._identity: FileIdentity | None = None  # the file this ledger opened first, as the path showed it
        self._file_id: str | None = None  # and as the host told it (qsync_file: an inode number may be reused)
        self._lock = threading.RLock()  # one use of the pipe at a time (a transaction: all of it)
        self._last_used = time.monotonic()
        self._keeper: threading.Thread | None = None
        self._closed = threading.Event()
        self._holds = 0  # runs in progress (`held`): the socket stays open between their transactions
        self._depth = 0  # uses in progress on the thread holding self._lock (a read inside a transaction: 2)
        self._queued: list[tuple[Any, ...]] = []  # a transaction's statements not sent yet
        self._slots: list[RemoteResult | None] = []  # where their rows go
        self._begun = False  # the transaction's begin has been sent
        self._deferring = False  # inside a transaction: statements wait for one that needs an answer
        _open_connections.add(self)

    # -- public ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, *, keeps_open: bool = True) -> Iterator[RemoteConnection]:
        """One atomic unit of work: everything inside commits together or not at all. `keeps_open=False`:
        this transaction does not count as use for closing an idle connection (a heartbeat)."""
        with self._using() as con:
            # Sent with the transaction's first statement that needs an answer, or with its commit: a transaction
            # of writes only is one round trip to the host.
            self._queued, self._slots, self._begun, self._deferring = [("begin",)], [None], False, True
            try:
                yield con
            except BaseException as exc:
                self._deferring, self._queued, self._slots = False, [], []
                if self._begun:
                    with contextlib.suppress(duckdb.Error, LedgerError):
                        self.request("rollback")
                if isinstance(exc, duckdb.Error) and not isinstance(exc, duckdb.ConstraintException):
                    raise convert(exc, self.path) from exc
                raise
            else:
                self._deferring = False
                self._queued.append(("commit",))
                self._slots.append(None)
                try:
                    self.flush()
                except duckdb.Error as exc:
                    with contextlib.suppress(duckdb.Error, LedgerError):
                        self.request("rollback")
                    if isinstance(exc, duckdb.ConstraintException):
                        raise
                    raise convert(exc, self.path) from exc
            finally:
                if keeps_open:
                    self._last_used = time.monotonic()

    @contextlib.contextmanager
    def reading(self) -> Iterator[RemoteConnection]:
        """A connection for queries; inside a transaction of this thread, the transaction's (its reads see its
        writes)."""
        with self._using() as con:
            try:
                yield con
            except duckdb.Error as exc:
                raise convert(exc, self.path) from exc
            finally:
                self._last_used = time.monotonic()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Keep the socket open while a run works, unless it goes unused for HELD_IDLE_CLOSE_S (reconnecting costs
        a hello, well under a millisecond; the host keeps the file open either way)."""
        with self._lock:
            self._holds += 1
        try:
            yield
        finally:
            with self._lock:
                self._holds -= 1
                self._last_used = time.monotonic()

    def close(self) -> None:
        """Close for good: later use raises LedgerError. Waits for the transaction in progress, if any."""
        self._closed.set()
        with self._lock:
            self._disconnect()
        keeper = self._keeper
        if keeper is not None and keeper is not threading.current_thread():
            keeper.join(timeout=5)

    def close_at_exit(self) -> None:
        """Close unless a thread is using the connection (a daemon thread frozen by the interpreter's end would
        never let go: the exit must not wait for it)."""
        self._closed.set()
        if self._lock.acquire(timeout=1.0):
            try:
                self._disconnect()
            finally:
                self._lock.release()

    def after_fork(self) -> None:
        """In a forked child: forget the parent's socket and threads (see _after_fork_in_child)."""
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
        self._lock = threading.RLock()
        self._keeper = None
        self._depth = self._holds = 0

    def send(self, request: tuple[Any, ...]) -> RemoteResult:
        """A statement: inside a transaction, queued until an answer is needed; otherwise sent now."""
        if not self._deferring:
            return RemoteResult(self.request(*request))
        result = RemoteResult(owner=self)
        self._queued.append(request)
        self._slots.append(result)
        return result

    def flush(self) -> None:
        """Send the queued statements (in one request) and give each its rows."""
        queued, slots = self._queued, self._slots
        if not queued:
            return
        self._queued, self._slots = [], []
        if queued[0] == ("begin",):
            self._begun = True
        values = [self.request(*queued[0])] if len(queued) == 1 else self.request("batch", queued)
        for slot, value in zip(slots, values, strict=True):
            if slot is not None:
                slot.fill(value)

    def request(self, *request: Any) -> Any:
        """Send one request to the host and return its answer (inside `_using`: the lock is held)."""
        pipe = self._pipe
        if pipe is None:
            raise LedgerError(f"{self.path}: no connection to its host (a statement outside a transaction or read)")
        try:
            pipe.send(request)
            status, value = pipe.recv()
        except (EOFError, OSError) as exc:
            self._disconnect()
            tail = log_tail(self.path)
            if f"of process {os.getpid()}:" in tail:  # the host let go of this process, not the other way round
                raise LedgerError(
                    f"qsync's ledger host of {self.path} {tail} (was this process stopped?); its writes since the "
                    "transaction began were not saved: run the command again"
                ) from exc
            raise LedgerError(
                f"the process that holds {self.path} (qsync's ledger host) ended{f' ({tail})' if tail else ''}; "
                "run the command again"
            ) from exc
        except BaseException:  # Ctrl-C between send and recv: the answer would be read as the next request's
            self._disconnect()  # (the host rolls back a transaction left open)
            raise
        if status == "ok":
            return value
        raise error_of(self.path, value)

    # -- connection management ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _using(self) -> Iterator[RemoteConnection]:
        """The connection, this Ledger's lock held. A use inside another (a read in a transaction) is the same."""
        with self._lock:
            if not self._depth:
                self._connect()
            self._depth += 1
            try:
                yield RemoteConnection(self)
            finally:
                self._depth -= 1

    def _connect(self) -> None:
        if self._closed.is_set():
            raise LedgerError(f"{self.path} was closed")
        if self._pipe is not None:
            if self._identity is not None and _identity_of(self.path) != self._identity:
                self._disconnect()
                raise _replaced(self.path)
            return
        if self._identity is not None and _identity_of(self.path) != self._identity:
            raise _replaced(self.path)  # never a new empty file where the job's file was
        parent = self.path.parent
        if not parent.exists():
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LedgerError(f"cannot create the folder {parent} for the checkpoint file: {exc.strerror}") from exc
        sock, _, _ = host_files(self.path)
        deadline = time.monotonic() + max(self.lock_timeout_s, _HOST_START_S)
        while True:
            try:
                pipe = Client(str(sock), family="AF_UNIX")
            except (FileNotFoundError, ConnectionRefusedError):
                reason = failed_start(self.path)
                if reason:
                    raise LedgerError(f"qsync's ledger host for {self.path} could not start: {reason}") from None
                if time.monotonic() > deadline:
                    raise LedgerLocked(str(self.path), None, self.lock_timeout_s) from None
                spawn(self.path, self.lock_timeout_s)
                time.sleep(0.01)
                continue
            try:
                pipe.send(("hello", os.getpid()))
                # The host may wait for another program's lock on the file (lock_timeout_s), then migrate it.
                if not pipe.poll(self.lock_timeout_s + _MIGRATION_S):
                    pipe.close()
                    raise LedgerLocked(str(self.path), None, self.lock_timeout_s)
                status, value = pipe.recv()
            except (EOFError, OSError):  # the host was ending as we arrived: the next one serves us
                with contextlib.suppress(OSError):
                    pipe.close()
                if time.monotonic() > deadline:
                    raise LedgerLocked(str(self.path), None, self.lock_timeout_s) from None
                time.sleep(0.01)
                continue
            if status != "ok":
                pipe.close()
                if value[0] == "replaced":
                    time.sleep(0.01)  # the host had a file since deleted open: it ends, the next opens the new one
                    continue
                error = error_of(self.path, value)
                if isinstance(error, duckdb.Error):
                    holder = locked_by(error)
                    if holder is not False:  # another program holds the file (the host waited for it)
                        raise LedgerLocked(str(self.path), holder or None, self.lock_timeout_s)
                    raise convert(error, self.path) from error
                raise error
            file_id, version, host_pid = value
            if version != SCHEMA_VERSION:  # a host of another qsync (a second install) has the file open
                pipe.close()
                if version > SCHEMA_VERSION:
                    raise too_new(str(self.path), version)
                raise LedgerError(
                    f"{self.path} is open in process {host_pid}, the ledger host of an older qsync (schema {version}; "
                    f"this qsync needs {SCHEMA_VERSION}): stop the jobs of that qsync, then run this again"
                )
            if self._file_id is None:
                self._file_id, self._identity = file_id, _identity_of(self.path)
            elif file_id != self._file_id:
                pipe.close()
                raise _replaced(self.path)
            self._pipe = pipe
            break
        if self._keeper is None:
            self._keeper = threading.Thread(target=self._keep, name="qsync-ledger-keeper", daemon=True)
            self._keeper.start()

    def _disconnect(self) -> None:
        """Close the socket (held: self._lock); the host rolls back a transaction left open."""
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()

    def _keep(self) -> None:
        """Close the socket when idle, so that the host can end once nobody uses the file. Runs only while a socket
        is open: it ends once it has closed it, and _connect starts a new one with the next socket."""
        while not self._closed.wait(0.05):
            idle = time.monotonic() - self._last_used > (HELD_IDLE_CLOSE_S if self._holds else self.idle_close_s)
            if not (idle or self._pipe is None):
                continue
            if self._lock.acquire(blocking=False):
                try:
                    self._disconnect()
                    self._keeper = None
                    return
                finally:
                    self._lock.release()
        self._keeper = None


def _identity_of(path: Path) -> FileIdentity | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def error_of(path: Path, payload: tuple[str, str, str]) -> BaseException:
    """The exception an error answer of the host stands for: DuckDB's as the same duckdb class."""
    kind, name, message = payload
    if kind == "duckdb":
        cls = getattr(duckdb, name, None)
        if isinstance(cls, type) and issubclass(cls, duckdb.Error):
            return cls(message)
        return duckdb.Error(message)
    if kind == "replaced":
        return _replaced(path)
    if kind == "other" and name == "SchemaTooNew":
        from qsync.errors import SchemaTooNew

        return SchemaTooNew(message)
    return LedgerError(message)


def _replaced(path: Path) -> LedgerError:
    return LedgerError(
        f"{path} was deleted or replaced while this job had it open; nothing more is written to it. Look at what "
        "happened to the file, then resume the job against the right file"
    )
