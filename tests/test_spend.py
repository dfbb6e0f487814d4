"""Cost truth after a crash: every paid call is recorded before it is sent, so what qsync reports is never
less than what the API metered, and the budget counts what a crash left unconfirmed."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qsync_testing import make_records, qsync_cmd, qsync_env, run_qsync, status_json, wait_for, write_records

import qsync
from qsync.testing.emulator import GeminiEmulator

pytestmark = [pytest.mark.slow, pytest.mark.reliability]
SECRET = "AIzaSPEND-key-0123456789"


@pytest.fixture
def emulator() -> Iterator[GeminiEmulator]:
    # Like the real batchEmbedContents: no usageMetadata in the answer, so tokens come from countTokens.
    emu = GeminiEmulator(api_key=SECRET, latency_s=0.4, usage_metadata=False, seed=15).start()
    yield emu
    emu.stop()


def _args(src: Path, db: Path, *extra: str) -> list[str]:
    return ["run", "--source", str(src), "--collection", "c", "--db", str(db), "--job", "s", "--dimensions", "32",
            "--batch-size", "50", "--concurrency", "4", "--texts-per-minute", "1000000", "--quiet", *extra]  # fmt: skip


def _quiet(emulator: GeminiEmulator) -> None:
    """Wait until the emulator has answered (and metered) every request it received."""
    wait_for(lambda: not emulator.stats()["in_progress"], timeout=30, interval=0.02)


def _spend(db: Path, env: dict[str, str]) -> dict[str, Any]:
    """`qsync cost s --json`, as a user would read it."""
    out = run_qsync("cost", "s", "--db", str(db), "--json", env=env)
    assert out.returncode == 0, out.stderr
    spend: dict[str, Any] = json.loads(out.stdout)
    return spend


def _spend_in_process(db: Path) -> dict[str, Any]:
    """The same figures as `_spend` (the CLI prints qsync.cost), without starting a process for them."""
    return {str(k): v.item() if hasattr(v, "item") else v for k, v in qsync.cost("s", db=db).iloc[0].to_dict().items()}


def test_reported_spend_is_never_less_than_metered_across_kills(tmp_path: Path, emulator: GeminiEmulator) -> None:
    src, db = tmp_path / "s.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(1200))
    env = qsync_env(GEMINI_API_KEY=SECRET, GOOGLE_GEMINI_BASE_URL=emulator.url)
    rng = random.Random(15)
    unconfirmed_seen = 0
    for _ in range(4):
        proc = subprocess.Popen(qsync_cmd(*_args(src, db)), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        wait_for(lambda p=proc: emulator.stats()["in_progress"].get("batchEmbedContents", 0) >= 2 or p.poll() is not None,
                 timeout=60, interval=0.01)  # fmt: skip
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _quiet(emulator)  # calls that were on the wire are metered now, whether qsync saw the answer or not
        spend = _spend_in_process(db)
        assert spend["tokens"] <= emulator.tokens_metered  # confirmed: only what answers said
        assert spend["tokens"] + spend["unconfirmed_tokens"] >= emulator.tokens_metered  # never less than billed
        unconfirmed_seen += spend["unconfirmed_tokens"] > 0
    assert unconfirmed_seen >= 3  # the kills did cut calls off mid-flight
    left = _spend_in_process(db)["unconfirmed_cost_usd"]
    final = run_qsync(*_args(src, db), env=env)
    assert final.returncode == 0, final.stderr
    # The resume says what was spent as `qsync cost` does: what may have been billed too (before: "$0.0000").
    assert "already spent" in final.stderr and ("unconfirmed)" in final.stderr) == (left > 0), final.stderr
    _quiet(emulator)
    spend = _spend(db, env)
    assert spend["tokens"] <= emulator.tokens_metered <= spend["tokens"] + spend["unconfirmed_tokens"]
    # After the resume counted them, unconfirmed calls are priced exactly: within a cut-off call of the meter.
    assert spend["tokens"] + spend["unconfirmed_tokens"] - emulator.tokens_metered <= 4 * 50 * 20
    info = status_json(db, "s", env=env)
    assert info["status"] == "completed" and info["unconfirmed_cost_usd"] == spend["unconfirmed_cost_usd"]


def test_the_budget_counts_unconfirmed_spend(tmp_path: Path, emulator: GeminiEmulator) -> None:
    emulator.latency_s = 1.0  # calls stay on the wire long enough to be cut off
    src, db = tmp_path / "s.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(600))
    env = qsync_env(GEMINI_API_KEY=SECRET, GOOGLE_GEMINI_BASE_URL=emulator.url)
    proc = subprocess.Popen(qsync_cmd(*_args(src, db)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: _processed(db) >= 100, timeout=60)
    wait_for(lambda: emulator.stats()["in_progress"].get("batchEmbedContents", 0) >= 1, timeout=30, interval=0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _quiet(emulator)
    spend = _spend(db, env)
    assert spend["unconfirmed_cost_usd"] > 0
    calls = emulator.requests["batchEmbedContents"]
    # A cap above what was confirmed, below what may have been billed: the resume must not spend a cent.
    cap = spend["cost_usd"] + spend["unconfirmed_cost_usd"] / 100
    out = run_qsync("resume", "s", "--db", str(db), "--max-cost-usd", f"{cap:.10f}", env=env)
    assert out.returncode == 3, out.stderr  # paused
    assert "budget" in out.stderr
    assert emulator.requests["batchEmbedContents"] == calls  # not one new paid call
    assert status_json(db, "s", env=env)["status"] == "paused"


def _processed(db: Path) -> int:
    try:
        return int(qsync.status("s", db=db)["processed_records"])
    except qsync.QsyncError:  # not planned yet: the file can exist a moment before the job does
        return 0
