"""The one process that opens a checkpoint file: every other process talks to it.

Two runners sharing a DuckDB file by hand-over (each closing it, with a checkpoint, whenever the other asked)
corrupted it: 4 of 59 pairs on 6596ebb, and 1 of 10 still with every statement serialized and DuckDB's optimistic
writes off (docs/RELIABILITY.md). Single processes never did. So one process holds the file for as long as anyone
uses it: started by the first process that needs the file (`python -m qsync.ledger.host PATH`, in a session of its
own, so that a Ctrl-Z or a kill of the job that started it does not stop it), found by the others through a Unix
socket in a private folder, and gone a moment after its last client left (`LINGER_S`).

It serves one request at a time. A client's transaction (`begin` … `commit`) is served alone: other clients'
requests are held until it ends, or until it idles past `SESSION_IDLE_S` (a client frozen mid-transaction is
rolled back and let go, never a file locked for everyone); only `holder` is answered meanwhile. A client that disconnects mid-transaction
is rolled back. Requests (tuples, pickled by multiprocessing.connection):

    ("hello", pid)          -> the open file's id (qsync_file), its schema version, the host's pid; the file
                               opened (and migrated) if need be
    ("begin",) ("commit",) ("rollback",)
    ("execute", sql, params) -> the rows (fetchall)
    ("df", sql, params)      -> a pandas DataFrame
    ("register", name, table) ("unregister", name)   a pyarrow Table comes as an ArrowStream (ledger/statements.py)
    ("batch", [request, ...]) -> the answer of each (a transaction's statements sent together; the first error ends it)
    ("holder",)             -> the host's pid, and the pid of the client whose transaction is open (or None)
    ("shutdown",)           -> closes the file and ends, unless other clients are connected

An answer is ("ok", value) or ("error", payload): DuckDB's errors travel as (class name, message) and are raised
again as the same duckdb exception class by the client, so that `ledger.errors.convert` reads them as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
import sys
import threading
import time
from multiprocessing.connection import Connection as Pipe
from multiprocessing.connection import Listener, wait
from pathlib import Path
from typing import Any

import duckdb

from qsync.ledger.errors import locked_by
from qsync.ledger.hosts import host_files
from qsync.ledger.migrate import check_schema, file_version
from qsync.ledger.statements import ArrowStream

LINGER_S = 2.0  # the host ends this long after its last client left
# A transaction idle this long is rolled back and its client let go (QSYNC_LEDGER_SESSION_IDLE_S: for tests).
SESSION_IDLE_S = float(os.environ.get("QSYNC_LEDGER_SESSION_IDLE_S") or 30.0)
SEND_TIMEOUT_S = 5.0  # an answer a client does not take within this long: the client is let go

# Set on the database (see ledger/connection.py for why: DuckDB on its oldest, most tested path).
# checkpoint_threshold: DuckDB folds its write-ahead log into the file once the log reaches this size, inside the
# commit that crossed it, which stalls every writer; at its default (16 MB) a 2M-record run did so every ~180
# batches. At 128 MiB: 400k records 108.8 -> 98.2 s and a re-sync's batches 12.8 -> 11.7 s (3 of 3 rounds each),
# a whole 2M run 541.7 -> 423.5 s (one pair); benchmarks/README.md. What it costs (benchmarks/wal_threshold.py): a
# crash leaves up to 128 MiB of log, replayed when the file is next opened (134 MB: 1.5 s), and the host's close
# folds what is left (1.2 - 1.4 s after 2,000 batches, against 0.1 - 0.2 s).
CHECKPOINT_THRESHOLD = "'128MiB'"
SETTINGS = {
    "enable_optimistic_write": "false",
    "auto_checkpoint_skip_wal_threshold": str(2**62),
    "checkpoint_threshold": CHECKPOINT_THRESHOLD,
}


class _Context:
    """What a migration written in Python may use (schema.MigrationContext)."""

    def __init__(self, path: Path) -> None:
        from qsync.ledger.vectorfile import VectorFile

        self.path = path
        self.vectors = VectorFile(path.with_suffix(".vectors"))


class Host:
    def __init__(self, path: Path, lock_timeout_s: float) -> None:
        self.path = path
        self.lock_timeout_s = lock_timeout_s
        self.con: duckdb.DuckDBPyConnection | None = None
        self.identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file: it holds that inode
        self.file_id = ""  # the file's own id (qsync_file)
        self.pids: dict[Pipe, int] = {}
        self.session: Pipe | None = None  # the client whose transaction is open
        self.session_seen = 0.0  # when that client last sent a request
        self.pending: dict[Pipe, tuple[Any, ...]] = {}  # requests that arrived during another's transaction
        self.ending = False
        self.greeted = False  # a client said hello: the file is in use (one made ahead of time is kept)

    # -- the file -----------------------------------------------------------------------------------------------

    def open(self) -> duckdb.DuckDBPyConnection:
        if self.con is not None:
            there = _identity(self.path)
            if there != self.identity:
                raise _Replaced(f"{self.path} was deleted or replaced while it was open")
            return self.con
        self.path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        while True:
            try:
                con = duckdb.connect(str(self.path))
                break
            except duckdb.Error as exc:
                if locked_by(exc) is False or time.monotonic() - started > self.lock_timeout_s:
                    raise
                time.sleep(0.05)  # another program holds the file: wait for it a while
        try:
            for name, value in SETTINGS.items():
                con.execute(f"SET GLOBAL {name} = {value}")
            context = _Context(self.path)
            try:
                check_schema(con, context, str(self.path))
            finally:
                context.vectors.close()
        except BaseException:
            con.close()
            raise
        self.con, self.identity = con, _identity(self.path)
        row = con.execute("SELECT file_id FROM qsync_file").fetchone()
        self.file_id = str(row[0]) if row else ""
        return con

    def close(self) -> None:
        if self.con is not None:
            with contextlib.suppress(duckdb.Error):
                self.con.close()
            self.con = None

    # -- requests -----------------------------------------------------------------------------------------------

    def handle(self, client: Pipe, request: tuple[Any, ...]) -> Any:
        op = request[0]
        if op == "hello":
            self.greeted = True
            self.pids[client] = int(request[1])
            con = self.open()  # first: it sets file_id
            return self.file_id, file_version(con), os.getpid()
        if op == "holder":
            return os.getpid(), self.pids.get(self.session) if self.session is not None else None
        if op == "shutdown":
            if len(self.pids) > 1:
                others = sorted(p for c, p in self.pids.items() if c is not client)
                raise _InUse(f"{self.path} is in use by process{'es' if len(others) > 1 else ''} "
                             f"{', '.join(map(str, others))}")  # fmt: skip
            self.ending = True
            return None
        con = self.open()
        if op == "begin":
            con.execute("BEGIN TRANSACTION")
            self.session = client
            return None
        if op in ("commit", "rollback"):
            self.session = None
            con.execute(op.upper())
            return None
        if op == "execute":
            return con.execute(request[1], request[2] or []).fetchall()
        if op == "df":
            return con.execute(request[1], request[2] or []).df()
        if op == "batch":  # several requests of one client, answered together (the first error ends it)
            return [self.handle(client, item) for item in request[1]]
        if op == "register":
            table = request[2]
            con.register(request[1], table.table() if isinstance(table, ArrowStream) else table)
            return None
        if op == "unregister":
            con.unregister(request[1])
            return None
        raise ValueError(f"unknown request {op!r}")

    def step(self, wake: int) -> None:
        """Answer what is ready: a request held back by a transaction now ended, or what the sockets bring."""
        if self.session is None and self.pending:
            client = next(iter(self.pending))
            self.answer(client, self.pending.pop(client))
            return
        timeout = LINGER_S / 4
        if self.session is not None:
            timeout = max(0.0, self.session_seen + SESSION_IDLE_S - time.monotonic())
        ready = wait([*(c for c in self.pids if c not in self.pending), wake], timeout=timeout)
        if (
            self.session is not None
            and self.session not in ready
            and (time.monotonic() - self.session_seen >= SESSION_IDLE_S)
        ):
            print(f"rolled back the transaction of process {self.pids.get(self.session)}: idle for "
                  f"{SESSION_IDLE_S:g} s", file=sys.stderr, flush=True)  # fmt: skip
            self.drop(self.session)  # its client froze mid-transaction: roll it back, let it go
            return
        for item in ready:
            if item == wake:
                os.read(wake, 4096)
                continue
            assert isinstance(item, Pipe)
            if item not in self.pids:
                continue  # dropped meanwhile
            try:
                request = item.recv()
            except (EOFError, OSError):
                self.drop(item)
                continue
            if self.session is not None and item is not self.session and request[0] != "holder":
                self.pending[item] = request  # served once the transaction in progress has ended
                continue
            self.answer(item, request)

    def answer(self, client: Pipe, request: tuple[Any, ...]) -> None:
        if client is self.session or request[0] in ("begin", "batch"):
            self.session_seen = time.monotonic()
        try:
            answer: tuple[str, Any] = ("ok", self.handle(client, request))
        except duckdb.Error as exc:
            answer = ("error", ("duckdb", type(exc).__name__, str(exc)))
            if isinstance(exc, duckdb.FatalException):  # DuckDB invalidated the database: a new host reopens it
                self.ending = True
        except _Replaced as exc:
            answer = ("error", ("replaced", "", str(exc)))
            self.ending = True
        except _InUse as exc:
            answer = ("error", ("in_use", "", str(exc)))
        except Exception as exc:  # a qsync error (schema too new, a bug): its text, for a LedgerError
            answer = ("error", ("other", type(exc).__name__, str(exc)))
        try:
            client.send(answer)
        except (OSError, ValueError):  # gone, or frozen with the answer unread (SEND_TIMEOUT_S)
            self.drop(client)
        if client is self.session:  # idle counts from the answer: a statement may take longer than the limit
            self.session_seen = time.monotonic()

    def drop(self, client: Pipe) -> None:
        if self.session is client:
            self.session = None
            if self.con is not None:
                with contextlib.suppress(duckdb.Error):
                    self.con.execute("ROLLBACK")
        self.pids.pop(client, None)
        self.pending.pop(client, None)
        with contextlib.suppress(OSError):
            client.close()


class _Replaced(Exception):
    pass


class _InUse(Exception):
    pass


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _remove_unused(path: Path, folders: list[Path]) -> None:
    """The checkpoint file a host made ahead of a run that never came (its command failed first), with its vector
    file (empty), its WAL and the folders made for it (deepest first; left if not empty)."""
    vectors = path.with_suffix(".vectors")
    with contextlib.suppress(OSError):
        if vectors.stat().st_size == 0:
            vectors.unlink()
    for leftover in (path, path.with_name(path.name + ".wal")):
        with contextlib.suppress(OSError):
            leftover.unlink()
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _import_pandas() -> None:
    import pandas  # noqa: F401


def main(argv: list[str]) -> int:
    path = Path(argv[0])
    lock_timeout_s = float(argv[1]) if len(argv) > 1 else 60.0
    open_now = argv[2:3] == ["open"]  # started ahead of a job's run: the file opened (made) before it is asked for
    sock, lock, log = host_files(path)
    election = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(election, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another host serves this file (or is starting): the clients find it
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()  # left by a host that died
    listener = Listener(str(sock), family="AF_UNIX")
    host = Host(path, lock_timeout_s)
    arrived: list[Pipe] = []
    arrived_lock = threading.Lock()
    wake_r, wake_w = os.pipe()

    def accept() -> None:
        while True:
            try:
                client = listener.accept()
            except OSError:
                return
            # A client frozen (Ctrl-Z) with an answer unread must not freeze the host: sends give up after a while.
            with contextlib.suppress(OSError):
                raw = socket.socket(fileno=os.dup(client.fileno()))
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(SEND_TIMEOUT_S), 0))
                raw.close()
            with arrived_lock:
                arrived.append(client)
            os.write(wake_w, b"x")

    threading.Thread(target=accept, name="qsync-ledger-accept", daemon=True).start()
    # pandas answers `df` requests (DuckDB imports it on the first): imported beside the first requests, not before
    # them, because the host's start is on the path of every command.
    threading.Thread(target=_import_pandas, name="qsync-ledger-pandas", daemon=True).start()
    made = open_now and not path.exists()
    made_folders = [f for f in path.parents if not f.exists()] if made else []  # deepest first
    if open_now:
        with contextlib.suppress(Exception):  # the first client's hello opens it again, and says what went wrong
            host.open()
    last_client = time.monotonic()
    try:
        while not host.ending:
            with arrived_lock:
                for client in arrived:
                    host.pids[client] = 0
                arrived.clear()
            if host.pids:
                last_client = time.monotonic()
            elif time.monotonic() - last_client > LINGER_S:
                break
            host.step(wake_r)
    finally:
        # Gone from the socket first, so that a client arriving now starts the next host instead of waiting here.
        with contextlib.suppress(OSError):
            sock.unlink()
        with contextlib.suppress(OSError):
            listener.close()
        host.close()
        if made and not host.greeted:  # made for a command that failed before it opened it: leave no file behind
            _remove_unused(path, made_folders)
        os.close(election)  # last: no other host opens the file before it is closed (or removed)
        with contextlib.suppress(OSError):
            if log.stat().st_size == 0:  # nothing went wrong: no log to keep
                log.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
