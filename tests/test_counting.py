"""Answers without usageMetadata (Google's batchEmbedContents sends none) are priced after the fact, many calls in
one countTokens call, off the batches' path (engine.counting): no round trip per batch, the recorded tokens equal
to the meter, and the spend never under-reported meanwhile, a kill included."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qsync_testing import (
    FAST,
    ledger_rows,
    make_records,
    qsync_cmd,
    qsync_env,
    run_qsync,
    sdk_emulator,
    status_json,
    wait_for,
    write_records,
)

import qsync
from qsync.app.jobs import create_job
from qsync.errors import QsyncError
from qsync.testing.emulator import GeminiEmulator
from qsync.testing.gemini_model import error_body

SECRET = "AIzaCOUNT-key-0123456789"


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[GeminiEmulator]:
    with sdk_emulator(monkeypatch, SECRET, latency_s=0.05, usage_metadata=False, seed=24) as emu:
        yield emu


def _plan(tmp_path: Path, n: int, **options: Any) -> Path:
    src, db = tmp_path / "c.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(n))
    create_job(src, collection="c", job="c", db=db, qdrant_path=tmp_path / "qdrant", dimensions=32, batch_size=50,
               **options)  # fmt: skip
    return db


def _assert_exact(db: Path, emulator: GeminiEmulator) -> None:
    """Every token the API metered is recorded, exactly, in the batches and in the cache; nothing is left at its
    bound."""
    cost = qsync.cost("c", db=db).iloc[0]
    assert cost["tokens"] == emulator.tokens_metered
    assert cost["cost_usd"] == pytest.approx(emulator.tokens_metered * 0.15 / 1e6)
    assert not cost["tokens_estimated"] and cost["unconfirmed_tokens"] == 0
    [(cached,)] = ledger_rows(db, "SELECT sum(tokens) FROM embeddings")
    assert cached == emulator.tokens_metered  # what reusing each vector saves is exact too


def test_a_run_counts_many_answers_in_one_count_call(tmp_path: Path, emulator: GeminiEmulator) -> None:
    db = _plan(tmp_path, 2000)
    before = emulator.requests["countTokens"]  # the plan's calibration
    assert qsync.resume("c", db=db, settings=FAST).ok
    embeds, counts = emulator.requests["batchEmbedContents"], emulator.requests["countTokens"] - before
    assert embeds == 40
    assert 2 <= counts <= 10  # 1,000 texts a count call (or fewer after a pause of 2 s): before, 40
    _assert_exact(db, emulator)


def test_a_count_refused_for_its_size_is_made_in_halves(tmp_path: Path, emulator: GeminiEmulator) -> None:
    def small_counts_only(verb: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        if verb == "countTokens" and len(body.get("contents", [])) > 120:
            return 400, error_body(400, "INVALID_ARGUMENT", "Request contains too many contents")
        return None

    db = _plan(tmp_path, 1000)
    emulator.hooks.append(small_counts_only)
    assert qsync.resume("c", db=db, settings=FAST).ok
    _assert_exact(db, emulator)


def test_a_half_counted_then_a_busy_api_settles_each_call_once(tmp_path: Path, emulator: GeminiEmulator) -> None:
    """A count cut in halves whose first half settled and whose second met a busy API (503) waits again with the second
    half only: the first is not counted twice (its tokens added to its batch twice, the spend cap refunded twice)."""
    counted = [0]

    def small_counts_and_one_busy(verb: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        if verb != "countTokens":
            return None
        if len(body.get("contents", [])) > 120:
            return 400, error_body(400, "INVALID_ARGUMENT", "Request contains too many contents")
        counted[0] += 1
        if counted[0] == 2:  # the second half of the first cut
            return 503, error_body(503, "UNAVAILABLE", "The service is currently unavailable.")
        return None

    db = _plan(tmp_path, 2000)  # the first group (1,000 texts) is counted mid-run: its busy half waits, then counts
    emulator.hooks.append(small_counts_and_one_busy)
    assert qsync.resume("c", db=db, settings=FAST).ok
    assert counted[0] > 2
    _assert_exact(db, emulator)


def test_the_budget_counts_before_it_pauses(tmp_path: Path, emulator: GeminiEmulator) -> None:
    # Uncounted calls are charged their bound (a byte a token: ~4x the tokens). A cap of 1.5x the real cost pauses
    # the job unless the cap has the waiting calls counted first, as it does.
    db = _plan(tmp_path, 1000)
    estimate = qsync.estimate(tmp_path / "c.jsonl", dimensions=32, db=db)
    result = qsync.resume("c", db=db, settings=FAST, max_cost_usd=1.5 * estimate["cost_usd"])
    assert result.ok, result.message
    _assert_exact(db, emulator)


@pytest.mark.slow
@pytest.mark.reliability
def test_a_kill_before_the_count_under_reports_nothing_and_the_resume_counts(tmp_path: Path) -> None:
    # countTokens answers 503 until the kill: every answered call is still at its bound when the process dies.
    emulator = GeminiEmulator(api_key=SECRET, latency_s=0.2, usage_metadata=False, seed=24).start()
    refusing = [True]

    def busy(verb: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        if verb == "countTokens" and refusing[0]:
            return 503, error_body(503, "UNAVAILABLE", "The service is currently unavailable.")
        return None

    emulator.hooks.append(busy)
    src, db = tmp_path / "c.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(1200))
    env = qsync_env(GEMINI_API_KEY=SECRET, GOOGLE_GEMINI_BASE_URL=emulator.url)
    args = ["run", "--source", str(src), "--collection", "c", "--db", str(db), "--job", "c", "--dimensions", "32",
            "--batch-size", "50", "--concurrency", "4", "--texts-per-minute", "1000000", "--quiet"]  # fmt: skip
    try:
        proc = subprocess.Popen(qsync_cmd(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _uncounted(db) >= 4, timeout=60, interval=0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        wait_for(lambda: not emulator.stats()["in_progress"].get("batchEmbedContents"), timeout=30, interval=0.02)
        spend = qsync.cost("c", db=db).iloc[0]
        assert spend["tokens"] <= emulator.tokens_metered <= spend["tokens"] + spend["unconfirmed_tokens"]
        refusing[0] = False
        out = run_qsync(*args, env=env)
        assert out.returncode == 0, out.stderr
        assert _uncounted(db) == 0
        spend = qsync.cost("c", db=db).iloc[0]
        assert spend["tokens"] <= emulator.tokens_metered <= spend["tokens"] + spend["unconfirmed_tokens"]
        # Only calls cut off by the kill may remain unconfirmed (each counted exactly, maybe never sent).
        assert spend["tokens"] + spend["unconfirmed_tokens"] - emulator.tokens_metered <= 4 * 50 * 20
        assert status_json(db, "c", env=env)["status"] == "completed"
    finally:
        emulator.stop()


def _uncounted(db: Path) -> int:
    try:
        [(n,)] = ledger_rows(db, "SELECT count(*) FROM spend_intents WHERE state = 'uncounted'")
    except QsyncError:  # not created yet
        return 0
    return int(n)
