"""`qsync run ...` in this process, with a timeline of its main phases on stderr (never used by qsync).

    python benchmarks/trace_host/timeline.py run --source ... --db ... [options of qsync run]

Each line: seconds since start, thread, `>` entering / `<` leaving a phase (the integrity read, planning and its
steps, the estimate, the runner and its batches), and each completion that replaced `points` rows. With
QSYNC_TRACE_HOST and PYTHONPATH=benchmarks/trace_host, the ledger host logs its statements beside it.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from typing import Any

T0 = time.perf_counter()


def mark(what: str) -> None:
    print(f"TL {time.perf_counter() - T0:7.3f} [{threading.current_thread().name}] {what}", file=sys.stderr, flush=True)


def wrap(owner: Any, name: str) -> None:
    inner = getattr(owner, name)

    @functools.wraps(inner)
    def timed(*args: Any, **kwargs: Any) -> Any:
        mark(f"> {name}")
        try:
            return inner(*args, **kwargs)
        finally:
            mark(f"< {name}")

    setattr(owner, name, timed)


def main() -> int:
    mark("start")
    import qsync.cli.main  # noqa: F401  (the module: qsync.cli's `main` is its function)
    from qsync.app import jobs
    from qsync.engine import runner
    from qsync.input import plan
    from qsync.ledger import batches

    mark("imported")
    for owner, name in [(jobs, "check_integrity"), (jobs, "_job_sink"), (jobs, "_open_or_plan"), (jobs, "plan"),
                        (jobs, "record_estimate"), (jobs, "make_runner"), (plan, "check_records"), (plan, "_split"),
                        (plan, "record_plan"), (batches, "batches_replacing_points"), (runner.Runner, "run"),
                        (runner.Runner, "_run_batches"), (runner.Runner, "_finish")]:  # fmt: skip
        wrap(owner, name)
    record_points = batches.record_points

    def recording(*args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        record_points(*args, **kwargs)
        mark(f"record_points {len(args[4])} batches {time.perf_counter() - started:.3f} s")

    batches.record_points = recording  # type: ignore[assignment]
    code: int = sys.modules["qsync.cli.main"].main(sys.argv[1:])
    mark(f"exit {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
