"""Gemini Batch Mode at its edges, through the real google-genai SDK against the emulator: a runner SIGKILLed the
instant Google accepted its job, the spend of such a job counted exactly, what a run says it did, polling."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from qsync_testing import (
    ledger_rows,
    make_records,
    qdrant_points,
    qsync_cmd,
    qsync_env,
    run_qsync,
    sdk_emulator,
    wait_for,
    write_records,
)

import qsync
from qsync.testing.emulator import GeminiEmulator
from qsync.testing.gemini_model import count_tokens

SECRET = "AIzaTEST-batch-key-0123456789"


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[GeminiEmulator]:
    with sdk_emulator(monkeypatch, SECRET, seed=5) as emu:
        yield emu


def _intent_tokens(db: Path) -> list[tuple[str, str, int, bool]]:
    return [
        (str(i), str(s), int(t), bool(c))
        for i, s, t, c in ledger_rows(
            db, "SELECT intent_id, state, tokens, counted FROM spend_intents WHERE kind = 'batch_mode'"
        )
    ]


@pytest.mark.slow
@pytest.mark.reliability
def test_a_runner_killed_the_instant_its_batch_job_is_accepted_adopts_it_on_resume_and_pays_once(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    records = make_records(400)
    src, db = tmp_path / "b.jsonl", tmp_path / "q.duckdb"
    write_records(src, records)
    env = qsync_env(GEMINI_API_KEY=SECRET, GOOGLE_GEMINI_BASE_URL=emulator.url, QSYNC_BATCH_POLL_S="0.1",
                    QSYNC_BATCH_POLL_MAX_S="0.4")  # fmt: skip
    emulator.batch_job_seconds = 3600.0  # still running when the resume adopts it: its spend is then unconfirmed
    proc = subprocess.Popen(
        qsync_cmd("run", "--source", str(src), "--collection", "c", "--db", str(db), "--job", "b",
                  "--dimensions", "64", "--batch-mode", "--quiet"),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    # Google has the job; the runner dies before it hears its name.
    emulator.batch_jobs.on_created.append(lambda name: os.kill(proc.pid, signal.SIGKILL))
    assert proc.wait(timeout=120) == -signal.SIGKILL
    assert emulator.requests["asyncBatchEmbedContent"] == 1
    assert ledger_rows(db, "SELECT count(*) FROM remote_jobs") == [(0,)]  # the name never reached the ledger
    [(_, state, bound, _)] = _intent_tokens(db)
    assert state == "open" and bound == sum(len(r["text"].encode()) for r in records)  # at most a token a byte

    emulator.batch_jobs.on_created.clear()
    resume = subprocess.Popen(qsync_cmd("resume", "b", "--db", str(db), "--quiet"), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for(lambda: ledger_rows(db, "SELECT count(*) FROM remote_jobs") == [(1,)], timeout=60)
        # Adopted under its display name, and its spend counted exactly (countTokens) while it runs.
        [(name, state, tokens, counted)] = _intent_tokens(db)
        assert name.startswith("batches/") and state == "unconfirmed" and counted
        assert tokens == sum(count_tokens(r["text"]) for r in records)
        assert emulator.requests["list"] >= 1
        emulator.batch_job_seconds = 0.0  # Google finishes it
        _, err = resume.communicate(timeout=120)
    finally:
        if resume.poll() is None:
            resume.kill()
    assert resume.returncode == 0, err
    assert emulator.requests["asyncBatchEmbedContent"] == 1 and emulator.requests["batchEmbedContents"] == 0
    assert len(emulator.texts_embedded) == 400 and max(emulator.texts_embedded.values()) == 1
    cost = qsync.cost("b", db=db).iloc[0]
    assert cost["tokens"] == emulator.tokens_metered and cost["unconfirmed_tokens"] == 0
    assert cost["cost_usd"] == pytest.approx(emulator.usd_metered)
    assert len(qdrant_points(db.with_suffix(".qdrant"), "c")) == 400


@pytest.mark.slow
@pytest.mark.reliability
def test_a_submission_google_never_created_is_closed_and_sent_again(tmp_path: Path, emulator: GeminiEmulator) -> None:
    records = make_records(120)
    src, db = tmp_path / "n.jsonl", tmp_path / "q.duckdb"
    write_records(src, records)
    env = qsync_env(GEMINI_API_KEY=SECRET, GOOGLE_GEMINI_BASE_URL=emulator.url, QSYNC_BATCH_POLL_S="0.1")
    proc = subprocess.Popen(
        qsync_cmd("run", "--source", str(src), "--collection", "c", "--db", str(db), "--job", "n",
                  "--dimensions", "64", "--batch-mode", "--quiet"),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def kill_before_creating(verb: str, body: object) -> tuple[int, dict[str, object]] | None:
        if verb == "asyncBatchEmbedContent":  # the request arrived; the runner dies before Google makes the job
            os.kill(proc.pid, signal.SIGKILL)
            return 503, {"error": {"code": 503, "status": "UNAVAILABLE", "message": "gone"}}
        return None

    emulator.hooks.append(kill_before_creating)
    assert proc.wait(timeout=120) == -signal.SIGKILL
    emulator.hooks.clear()
    resumed = run_qsync("resume", "n", "--db", str(db), env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(state for _, state, _, _ in _intent_tokens(db)) == ["settled", "void"]
    assert len(emulator.texts_embedded) == 120 and max(emulator.texts_embedded.values()) == 1
    cost = qsync.cost("n", db=db).iloc[0]
    assert cost["tokens"] == emulator.tokens_metered and cost["unconfirmed_tokens"] == 0


def test_batch_mode_texts_are_told_as_embedded_by_batch_mode_never_as_cache_hits(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    emulator.batch_job_seconds = 0.2  # ready at the first poll after the default first wait (2 s)
    records = make_records(150)
    src, db = tmp_path / "s.jsonl", tmp_path / "q.duckdb"
    write_records(src, records)
    env = qsync_env(GEMINI_API_KEY=SECRET, GOOGLE_GEMINI_BASE_URL=emulator.url)
    env.pop("QSYNC_BATCH_POLL_S", None)
    out = run_qsync("run", "--source", str(src), "--collection", "c", "--db", str(db), "--job", "s",
                    "--dimensions", "64", "--batch-mode", env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    cost = qsync.cost("s", db=db).iloc[0]
    phrase = f"150 texts embedded by Batch Mode: {emulator.tokens_metered:,} tokens, "
    assert phrase in out.stdout and "embedding cache" not in out.stdout
    assert cost["texts_embedded"] == 150 and cost["batch_mode_texts"] == 150 and cost["cache_hits"] == 0
    status = qsync.status("s", db=db)
    assert status["embedded_texts"] == 150 and status["cache_hits"] == 0
    assert qsync.batches("s", db=db)["cache_hits"].sum() == 0
    from qsync.app import reading
    from qsync.notebook import CostPanel, JobMonitor  # the widgets say it in the same words

    monitor = JobMonitor("s", db=db)
    monitor.show(reading.figures("s", db=db), "completed", force=True, live=False)
    assert phrase in monitor.cost.value
    assert phrase in CostPanel("s", db=db).summary.value

    # A second job over the same texts: those are cache hits (another job paid for them), not Batch Mode's.
    out = run_qsync("run", "--source", str(src), "--collection", "c2", "--db", str(db), "--job", "t",
                    "--dimensions", "64", "--batch-mode", env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    again = qsync.cost("t", db=db).iloc[0]
    assert again["cache_hits"] == 150 and again["texts_embedded"] == 0 and "by Batch Mode" not in out.stdout


def test_polls_start_quickly_and_back_off_to_the_setting(tmp_path: Path, emulator: GeminiEmulator) -> None:
    from dataclasses import replace

    from qsync.app.jobs import create_job, make_runner
    from qsync.engine.control import Control
    from qsync.spec.settings import RunSettings

    emulator.batch_job_seconds = 3600.0
    src, db = tmp_path / "p.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(20))
    create_job(src, collection="c", job="p", db=db, qdrant_path=tmp_path / "qdrant", dimensions=64, batch_mode=True)
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # recorded, not slept; Google finishes the job after the sixth wait
        waits.append(seconds)
        if len(waits) == 6:
            emulator.batch_job_seconds = 0.0

    settings = replace(RunSettings(), batch_mode_poll_s=2.0, batch_mode_poll_max_s=20.0)
    runner = make_runner("p", db=db, settings=settings)
    runner.control = Control(sleep=sleep)
    assert runner.run().ok
    assert waits == [2.0, 4.0, 8.0, 16.0, 20.0, 20.0]
    assert emulator.requests["get"] == 7


def test_a_submit_whose_answer_is_lost_is_found_by_its_name_not_sent_twice(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    from dataclasses import replace

    from qsync.app.jobs import create_job
    from qsync.spec.settings import RunSettings

    created: list[str] = []

    def drop_the_first_answer(name: str) -> None:  # Google made the job; the answer never reaches the client
        created.append(name)
        if len(created) == 1:
            raise ConnectionResetError("dropped")

    emulator.batch_jobs.on_created.append(drop_the_first_answer)
    emulator.batch_job_seconds = 0.0
    src, db = tmp_path / "l.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(80))
    create_job(src, collection="c", job="l", db=db, qdrant_path=tmp_path / "qdrant", dimensions=64, batch_mode=True)
    settings = replace(RunSettings(), retry_base_s=0.01, retry_max_s=0.02, batch_mode_poll_s=0.05)
    assert qsync.resume("l", db=db, settings=settings).ok
    assert len(created) == 1 and emulator.requests["list"] >= 1  # looked for, found: not submitted again
    assert len(emulator.texts_embedded) == 80 and max(emulator.texts_embedded.values()) == 1
    assert ledger_rows(db, "SELECT name FROM remote_jobs") == [(created[0],)]
