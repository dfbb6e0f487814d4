"""The `qsync` command: the same jobs as the Python API, from a terminal.

Exit codes: 0 the job completed (or the command succeeded); 1 an error or a failed job; 2 bad usage (also a
column the source does not have); 3 the job paused or was cancelled (resumable unless cancelled); 4 refused:
another runner owns the job, or another process held the checkpoint file too long.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import NoReturn

from qsync.cli.parser import build_parser
from qsync.errors import LeaseHeld, LedgerLocked, MissingColumn, QsyncError
from qsync.ledger.hosts import start_early
from qsync.spec.defaults import resolve_db

# Commands that read a checkpoint file check all of it first: a damaged block is told at once, whichever command
# meets it, with what to run (`qsync recover`), instead of a traceback later (or nothing, for a block not read).
# `run` is checked by app.jobs.run itself, before it plans (once: a read of the whole file takes seconds at 2M).
_CHECKED = frozenset({"resume", "status", "jobs", "batches", "skipped", "cost", "verify", "cancel", "search"})
# Commands that run a job: the checkpoint file's host is started before the rest of qsync is imported, so that its
# start (an interpreter, DuckDB) overlaps this process's imports instead of following them.
_RUNS = frozenset({"run", "resume"})


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in _RUNS:
        with contextlib.suppress(QsyncError):  # a host that cannot start says why when the file is opened
            start_early(resolve_db(args.db), create=args.command == "run")
    from qsync.cli.commands import COMMANDS
    from qsync.cli.output import EXIT_ERROR, EXIT_OK, EXIT_REFUSED, EXIT_USAGE

    try:
        if args.command in _CHECKED:
            _check(args.db)
        with _terminate_as_ctrl_c(args.command in _RUNS):
            return int(COMMANDS[args.command](args))
    except (LeaseHeld, LedgerLocked) as exc:
        print(f"qsync: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except MissingColumn as exc:  # the command named (or left out) a column: usage, like a bad option
        print(f"qsync: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except QsyncError as exc:
        print(f"qsync: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("qsync: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `qsync jobs | head`: the reader has what it wanted
        with contextlib.suppress(OSError):  # Python flushes stdout at exit: let that write go nowhere
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # a bug: one line for the person, the traceback when asked for
        if os.environ.get("QSYNC_DEBUG"):
            raise
        print(
            f"qsync: unexpected error: {type(exc).__name__}: {exc}\n"
            "  this is a bug in qsync; the job is left resumable. Run again with QSYNC_DEBUG=1 for the traceback, "
            "and report it",
            file=sys.stderr,
        )
        return EXIT_ERROR


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _terminate_as_ctrl_c(running: bool) -> Iterator[None]:
    """A job stopped with SIGTERM (`kill`, `timeout`, systemd, `docker stop`, Kubernetes) stops as with Ctrl-C: the
    calls in flight finish and are saved, the job is left paused (exit 3); a second SIGTERM stops at once, as a
    second Ctrl-C does. Without it, SIGTERM ended the process where it stood: resumable, but the answers of the
    calls in flight, already paid for, were lost."""
    if not running or threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def entry() -> NoReturn:
    """The `qsync` process: main(), then exit. Before exiting, every object is frozen out of the garbage collector:
    the interpreter's last collections walked the hundreds of thousands of objects of pandas, the SDK and pydantic
    for ~0.3 s (measured: importing what a run imports, then exiting, 1.05 - 1.18 s against 0.79 - 0.88 s), a tenth
    of a short run. Nothing is skipped: atexit handlers run, files and hosts close as before; only cycles left
    unreachable at exit are not collected, which the end of the process frees anyway."""
    code = main()
    gc.freeze()
    sys.exit(code)


def _check(db: str | None) -> None:
    from qsync.ledger.integrity import check
    from qsync.ledger.ledger import Ledger

    path = resolve_db(db)
    if path.exists():
        with Ledger(path, create=False) as ledger:
            check(ledger)


if __name__ == "__main__":
    sys.exit(main())
