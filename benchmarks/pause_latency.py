"""How long Pause takes to stop a run while its calls wait out a long rate-limit backoff.

    python benchmarks/pause_latency.py [--trials 5]

The Gemini emulator lets 50 texts a minute through and answers every later call 429 with RetryInfo (up
to 60 s); once three 429s have arrived, Pause is requested and the time until `run()` returns is taken.
Before the one-retry-layer change, a backoff slept its full delay, so Pause waited for it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

import qsync
from qsync.app.jobs import make_runner
from qsync.spec.settings import RunSettings
from qsync.testing.emulator import GeminiEmulator

KEY = "bench-key"


def trial(work: Path) -> float:
    emulator = GeminiEmulator(api_key=KEY, texts_per_minute=50, window_s=60.0, retry_info_share=1.0).start()
    os.environ.update(GOOGLE_GEMINI_BASE_URL=emulator.url, GEMINI_API_KEY=KEY)
    try:
        frame = pd.DataFrame({"id": [f"r{i}" for i in range(300)], "text": [f"text {i}" for i in range(300)]})
        db = work / "q.duckdb"
        job = qsync.prepare(frame, db=db, collection="c", batch_size=50, embedder="gemini", dimensions=32,
                            qdrant_path=":memory:")  # fmt: skip
        runner = make_runner(job, db=db, settings=RunSettings(concurrency=4, max_attempts=20))
        thread = threading.Thread(target=runner.run)
        thread.start()
        while emulator.requests["429"] < 3:
            time.sleep(0.01)
        asked = time.perf_counter()
        runner.request_stop()
        thread.join()
        return time.perf_counter() - asked
    finally:
        emulator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    times = [trial(Path(tempfile.mkdtemp(prefix="qsync-pause-"))) for _ in range(args.trials)]
    print(json.dumps({
        "trials": args.trials,
        "pause_to_return_s_median": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
