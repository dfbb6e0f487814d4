"""How much a notebook form showing a paused job costs while nothing happens: ledger reads and the checkpoint
file's host processes started over `--seconds`, with a launcher left on a paused job (it follows the job in case
another process retries it).

    python benchmarks/idle_form_reads.py --seconds 20

Prints JSON: reads of the ledger, host processes started (counted from `ps`), CPU seconds of this process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from qsync_testing import make_records, write_records

from qsync.app import reading
from qsync.notebook import Launcher


def _hosts(db: Path) -> set[int]:
    """The host processes of this file (other work on the machine has hosts of its own)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return {int(line.split()[0]) for line in out.splitlines()[1:] if "qsync.ledger.host" in line and str(db) in line}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, db = Path(tmp) / "src.jsonl", Path(tmp) / "q.duckdb"
        write_records(src, make_records(2000))
        first = Launcher(source=str(src), collection="c", db=db, dimensions=32, embedder_options={"latency_s": 0.05})
        first.start()
        while first.handle is None or first.monitor.figures is None or not first.monitor.figures.processed_records:
            time.sleep(0.05)
        first.pause()
        first.wait(60)
        first.monitor.stop()
        time.sleep(3)  # the host of the run ends
        reads = 0
        original = reading.status

        def counted(*a: object, **k: object) -> object:
            nonlocal reads
            reads += 1
            return original(*a, **k)  # type: ignore[arg-type]

        reading.status = counted  # type: ignore[assignment]
        seen: set[int] = set()
        form = Launcher(source=str(src), collection="c", db=db, dimensions=32)  # a re-run notebook: follows the job
        cpu0, start = time.process_time(), time.monotonic()
        while time.monotonic() - start < args.seconds:
            seen |= _hosts(db)
            time.sleep(0.2)
        form.monitor.stop()
        print(
            json.dumps(
                {
                    "seconds": args.seconds,
                    "status": form.monitor.status,
                    "ledger_reads": reads,
                    "host_processes_seen": len(seen),
                    "cpu_s_this_process": round(time.process_time() - cpu0, 2),
                }
            )
        )


if __name__ == "__main__":
    main()
