"""Finding, starting and stopping the hosts of checkpoint files (ledger/host.py), and where they keep their sockets,
election locks and logs: a folder only this user can enter, one set of files per checkpoint file (by its resolved
path)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Client
from multiprocessing.connection import Connection as Pipe
from pathlib import Path

from qsync.errors import LedgerError

_SPAWN_EVERY_S = 0.5  # a process that cannot reach a host starts one at most this often
_ANSWER_S = 10.0  # how long `holder` and `shutdown` wait for a host's answer


def run_dir() -> Path:
    """A folder only this user can enter, for the hosts' sockets, locks and logs: /tmp/qsync-UID, the same for every
    process of the user (not $XDG_RUNTIME_DIR or $TMPDIR, which a Jupyter kernel and a terminal may not share: two
    hosts for one file would shut one another out). QSYNC_RUN_DIR moves it, for every process alike."""
    base = Path(os.environ.get("QSYNC_RUN_DIR") or "/tmp")
    folder = base / f"qsync-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.stat()
    except OSError as exc:
        raise LedgerError(f"cannot make {folder} for qsync's ledger hosts: {exc.strerror} (set QSYNC_RUN_DIR)") from exc
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise LedgerError(f"{folder} must belong to this user and be private to it (chmod 700 {folder})")
    return folder


def host_files(path: Path) -> tuple[Path, Path, Path]:
    """The socket, election lock and log of the host of the checkpoint file at `path`."""
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:20]
    folder = run_dir()
    return folder / f"{key}.sock", folder / f"{key}.lock", folder / f"{key}.log"


# The host this process started last, per checkpoint file: one at a time, however many Ledgers ask.
_spawned: dict[Path, tuple[subprocess.Popen[bytes], float]] = {}
_spawn_lock = threading.Lock()


def spawn(path: Path, lock_timeout_s: float, open_now: bool = False) -> None:
    """Start the file's host, unless this process's last one is still starting (or serving: its socket is being
    made), or was started a moment ago. A host that finds another serving ends at once (its election lock).
    `open_now`: the host opens the file (creating it) at once, before any client asks."""
    with _spawn_lock:
        now = time.monotonic()
        last = _spawned.get(path)
        if last is not None and (last[0].poll() is None or now - last[1] < _SPAWN_EVERY_S):
            return
        _, _, log = host_files(path)
        env = dict(os.environ)
        # The host imports this qsync, wherever it came from (an install, a checkout on PYTHONPATH).
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        env["PYTHONSAFEPATH"] = "1"  # and nothing from the folder it starts in (a stray duckdb.py, another checkout)
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "qsync.ledger.host", str(path.resolve()), str(lock_timeout_s),
                 *(["open"] if open_now else [])],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, start_new_session=True, cwd="/",
            )  # fmt: skip
        _spawned[path] = (process, now)
    # Reaped when it ends, so that a long-lived kernel does not collect zombies.
    threading.Thread(target=process.wait, name="qsync-ledger-host-reaper", daemon=True).start()


def start_early(path: Path, create: bool, lock_timeout_s: float = 60.0) -> None:
    """Start the host of `path` now unless one serves it, and have it open the file (creating it if `create`, else
    only if it exists): for a command about to run a job, so that the host starts, and a new file's tables are
    made, while the command imports the rest of qsync (the Ledger opened later finds that host, or starts one)."""
    sock, _, _ = host_files(path)
    if not sock.exists():
        spawn(path, lock_timeout_s, open_now=create or path.exists())


def failed_start(path: Path) -> str | None:
    """Why the host this process started last for `path` ended in error (its log's last line), if it did. A host
    that found another one serving ends with 0."""
    with _spawn_lock:
        last = _spawned.get(path)
    if last is None or not last[0].poll():
        return None
    return log_tail(path) or f"it exited with code {last[0].returncode}"


def log_tail(path: Path) -> str:
    """The last line of the log of the host of `path` (why it ended), or ""."""
    try:
        _, _, log = host_files(path)
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _forget_after_fork() -> None:
    """A forked child starts its own hosts' bookkeeping (the parent's Popen objects are not its children)."""
    global _spawn_lock
    _spawned.clear()
    _spawn_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def _dial(path: Path) -> Pipe | None:
    """A socket to the running host of `path`, or None if none runs (none is started)."""
    sock, _, _ = host_files(path)
    try:
        return Client(str(sock), family="AF_UNIX")
    except (FileNotFoundError, ConnectionRefusedError):
        return None


def session_holder(path: Path) -> int | None:
    """The pid of the process whose transaction the host of `path` is serving now (None: none, or no host)."""
    state = _holder(path)
    return state[1] if state else None


def host_pid(path: Path) -> int | None:
    """The pid of the host of `path` (None: no host runs)."""
    state = _holder(path)
    return state[0] if state else None


def _holder(path: Path) -> tuple[int, int | None] | None:
    pipe = _dial(path)
    if pipe is None:
        return None
    try:
        pipe.send(("holder",))
        if not pipe.poll(_ANSWER_S):
            return None  # a host that does not answer (stopped, or opening the file): as good as none here
        status, value = pipe.recv()
    except (EOFError, OSError):
        return None
    finally:
        pipe.close()
    return (int(value[0]), int(value[1]) if value[1] else None) if status == "ok" else None


def stop_host(path: Path, timeout_s: float = 10.0) -> None:
    """End the host of `path` (it closes the file), for a command that must have the file to itself. LedgerError
    if other processes are using it."""
    pipe = _dial(path)
    if pipe is None:
        return
    try:
        pipe.send(("shutdown",))
        if not pipe.poll(_ANSWER_S):
            raise LedgerError(
                f"the ledger host of {path} does not answer (is it stopped?): end it, then run this again"
            )
        status, value = pipe.recv()
    except (EOFError, OSError):
        status, value = "ok", None
    finally:
        pipe.close()
    if status != "ok":
        kind, _, message = value
        if kind == "in_use":
            message += ": stop them (pause the jobs, close the notebooks), then run this again"
        raise LedgerError(message)
    _, lock, _ = host_files(path)
    deadline = time.monotonic() + timeout_s
    while not _released(lock) and time.monotonic() < deadline:
        time.sleep(0.01)


def _released(lock: Path) -> bool:
    """Whether no host holds its election lock: it lets go of that last, once it has closed the file."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # and with it the lock, if we took it
    return True
