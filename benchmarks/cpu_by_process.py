"""CPU seconds of each process of a running command's tree, every half second: which of qsync's processes (the run,
the checkpoint file's host, Qdrant Edge's host) is busy in each phase of a run, and which waits.

    python benchmarks/cpu_by_process.py -- .venv/bin/python -m qsync run --source ... > cpu.txt

Each line: seconds since the start, then `name:cpu` for every process alive (its CPU seconds in that half second:
0.5 is one core busy, 1.0 both cores of this machine). Names are the last word of each command line, cut to 14
characters (the checkpoint file's host shows its folder, Edge's host `edge_host`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """The process and its descendants."""
    children: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                children += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    except OSError:
        return []
    return [pid] + [p for child in children for p in tree(child)]


def cpu_and_name(pid: int) -> tuple[float, str] | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        words = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK, (words[-1][-14:] if words else str(pid))


def main() -> None:
    command = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else sys.argv[1:]
    child = subprocess.Popen(command)
    started, last = time.monotonic(), dict[int, tuple[float, str]]()
    while child.poll() is None:
        now = {pid: found for pid in tree(child.pid) if (found := cpu_and_name(pid)) is not None}
        spent = " ".join(f"{name}:{cpu - last.get(pid, (0.0, ''))[0]:.2f}" for pid, (cpu, name) in now.items())
        print(f"{time.monotonic() - started:.2f} {spent}", flush=True)
        last = now
        time.sleep(0.5)
    sys.exit(child.returncode)


if __name__ == "__main__":
    main()
