"""Gemini through the real google-genai SDK against the local emulator: faults, quotas, cost, secrets."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qsync_testing import (
    ledger_rows,
    make_records,
    qdrant_points,
    qsync_env,
    run_qsync,
    sdk_emulator,
    wait_for,
    write_records,
)

import qsync
from qsync.app import reading
from qsync.app.jobs import create_job
from qsync.engine.events import BatchFinished
from qsync.engine.runner import RunResult
from qsync.errors import ConfigError
from qsync.ledger.run import LeasedJob
from qsync.spec.settings import RunSettings
from qsync.spec.target import point_id
from qsync.testing.emulator import GeminiEmulator
from qsync.testing.gemini_model import count_tokens, emulated_vector

SECRET = "AIzaTEST-secret-key-0123456789"
MODEL = "gemini-embedding-001"
FAST = RunSettings(
    concurrency=4, retry_base_s=0.01, retry_max_s=0.05, heartbeat_s=0.2, max_attempts=12, texts_per_minute=10**7
)


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[GeminiEmulator]:
    with sdk_emulator(monkeypatch, SECRET, window_s=1.0, seed=3) as emu:
        yield emu


def _job(tmp_path: Path, n: int = 600, job: str = "g", **options: Any) -> tuple[Path, list[dict[str, Any]]]:
    records = make_records(n)
    src, db = tmp_path / f"{job}.jsonl", tmp_path / "q.duckdb"
    write_records(src, records)
    create_job(
        src, collection="c", job=job, db=db, qdrant_path=tmp_path / "qdrant", dimensions=options.pop("dims", 64),
        batch_size=50, **options,
    )  # fmt: skip
    return db, records


def _run(db: Path, job: str = "g", **kw: Any) -> RunResult:
    return qsync.resume(job, db=db, settings=replace(FAST, **kw.pop("settings", {})), **kw)


def _assert_vectors(tmp_path: Path, records: list[dict[str, Any]], dims: int = 64) -> None:
    by_id = {pid: vector for pid, (vector, _) in qdrant_points(tmp_path / "qdrant", "c").items()}
    assert len(by_id) == len(records)
    for r in records:
        expected = emulated_vector(MODEL, r["text"], dims)
        np.testing.assert_allclose(by_id[point_id(r["id"])], expected / np.linalg.norm(expected), atol=1e-5)


def test_the_default_embedder_is_gemini_when_a_key_is_set(tmp_path: Path, emulator: GeminiEmulator) -> None:
    db, records = _job(tmp_path, n=120)
    assert reading.stored_job("g", db=db).spec.embedder.kind == "gemini"
    assert _run(db).ok
    _assert_vectors(tmp_path, records)
    assert sum(emulator.texts_embedded.values()) == 120


@pytest.mark.slow
@pytest.mark.reliability
def test_completes_through_5xx_429_timeouts_and_resets_without_paying_twice(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    emulator.server_error_rate = 0.1
    emulator.reset_rate = 0.03
    emulator.slow_rate = 0.03
    emulator.slow_s = 2.5
    emulator.texts_per_minute = 150  # per 1 s window here: the client below asks for twice that
    emulator.retry_info_share = 0.5
    db, records = _job(tmp_path, n=900, embedder_options={"timeout_s": 1.0})
    result = _run(db, settings={"texts_per_minute": 300 * 60, "max_attempts": 20})
    assert result.ok, result.message
    assert emulator.requests["429"] > 0 and emulator.requests["batchEmbedContents"] > 18
    # Answers that failed embedded nothing; every text was embedded exactly once.
    assert set(emulator.texts_embedded) == {r["text"] for r in records}
    assert max(emulator.texts_embedded.values()) == 1
    _assert_vectors(tmp_path, records)


@pytest.mark.reliability
def test_a_per_day_quota_pauses_the_job_and_resume_finishes_it(tmp_path: Path, emulator: GeminiEmulator) -> None:
    emulator.texts_per_day = 300
    db, records = _job(tmp_path, n=600)
    result = _run(db)
    assert result.status == "paused"
    assert "per-day quota is used up" in (result.message or "")
    info = qsync.status("g", db=db)
    # 300 texts were paid for; a batch whose embedding returned as the pause landed is released, not
    # upserted (its vectors are cached, so the resume pays nothing for it): which one happens is timing.
    assert info["status"] == "paused" and info["processed_records"] in (250, 300) and info["batches_failed"] == 0
    emulator.reset_day()
    assert _run(db).ok
    assert max(emulator.texts_embedded.values()) == 1 and len(emulator.texts_embedded) == 600
    _assert_vectors(tmp_path, records)


@pytest.mark.parametrize("usage_metadata", [True, False])
def test_recorded_cost_matches_metered_tokens_and_the_estimate(
    tmp_path: Path, emulator: GeminiEmulator, usage_metadata: bool
) -> None:
    emulator.usage_metadata = usage_metadata
    db, _records = _job(tmp_path, n=500)
    src = tmp_path / "g.jsonl"
    before = qsync.estimate(src, dimensions=64, db=db)
    assert _run(db).ok
    cost = qsync.cost("g", db=db).iloc[0]
    assert cost["tokens"] == emulator.tokens_metered
    assert cost["cost_usd"] == pytest.approx(emulator.tokens_metered * 0.15 / 1e6, rel=0.01)
    assert not cost["tokens_estimated"]
    # The calibration of the estimate recorded when the job was planned, and of `before`: one call of 200 texts
    # each; the run's 10 answers without usage are counted together (engine.counting), not one call each.
    run_counts = emulator.requests["countTokens"] - 1 - 1
    assert run_counts == 0 if usage_metadata else 1 <= run_counts <= 3
    assert before["tokens"] == pytest.approx(cost["tokens"], rel=0.10)
    assert before["cost_usd"] == pytest.approx(cost["cost_usd"], rel=0.10)
    assert before["cost_usd_batch_mode"] == pytest.approx(before["cost_usd"] / 2)
    # A second estimate knows the cache: nothing left to pay for.
    after = qsync.estimate(src, dimensions=64, db=db)
    assert after["texts_to_embed"] == 0 and after["cost_usd"] == 0


def _hold_counts(emulator: GeminiEmulator) -> threading.Event:
    """The emulator answers no countTokens call until the returned event is set (at most a minute)."""
    release = threading.Event()

    def held_back(verb: str, body: dict[str, Any]) -> None:
        if verb == "countTokens":
            release.wait(60)

    emulator.hooks.append(held_back)
    return release


def test_a_run_does_not_wait_for_the_calibration_of_its_estimate(tmp_path: Path, emulator: GeminiEmulator) -> None:
    """A job planned for a run that starts at once has its estimate recorded uncalibrated and its batches run while
    countTokens calibrates it (here held back until a batch is done); the run ends with it calibrated."""
    release = _hold_counts(emulator)
    src, db = tmp_path / "g.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(300))
    batches_done = threading.Event()
    handle = qsync.start(
        src, collection="c", job="g", db=db, qdrant_path=tmp_path / "qdrant", dimensions=64, batch_size=50,
        settings=FAST, listeners=[lambda e: batches_done.set() if isinstance(e, BatchFinished) else None],
    )  # fmt: skip
    try:
        assert batches_done.wait(60), "no batch was done while the calibration was held back"
        early = reading.recorded_estimate("g", db=db)
        assert early is not None and early["tokens_basis"].startswith("estimated at ~4 bytes per token")
    finally:
        release.set()
    result = handle.wait(60)
    assert result is not None and result.ok
    late = reading.recorded_estimate("g", db=db)
    assert late is not None and late["tokens_basis"].startswith("estimate calibrated with countTokens on 200 texts")
    assert late["recorded_at"] == early["recorded_at"] and late["records"] == 300
    assert late["tokens"] == pytest.approx(emulator.tokens_metered, rel=0.10)
    assert early["tokens"] != late["tokens"]


def test_a_calibration_slower_than_the_run_leaves_the_bytes_estimate_until_it_answers(
    tmp_path: Path, emulator: GeminiEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run waits a little for its estimate's calibration, not for a count that does not answer: it ends with the
    uncalibrated figures, labelled so, and the count, when it answers, replaces them."""
    from qsync.engine import runner

    monkeypatch.setattr(runner, "ALONGSIDE_WAIT_S", 0.2)
    release = _hold_counts(emulator)
    src, db = tmp_path / "g.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(150))
    try:
        result = qsync.run(src, collection="c", job="g", db=db, qdrant_path=tmp_path / "qdrant", dimensions=64,
                           batch_size=50, settings=FAST)  # fmt: skip
        assert result.ok
        ended = reading.recorded_estimate("g", db=db)
        assert ended is not None and ended["tokens_basis"].startswith("estimated at ~4 bytes per token")
    finally:
        release.set()
    wait_for(lambda: (reading.recorded_estimate("g", db=db) or {}).get("tokens_basis", "").startswith(
        "estimate calibrated with countTokens"), timeout=60)  # fmt: skip


def test_batches_are_readied_while_the_calls_are_on_the_wire_and_never_more_calls_than_the_concurrency(
    tmp_path: Path, emulator: GeminiEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The calls on the wire are what a kill can make us pay twice: at most `concurrency`, counted by the server.
    # The batches around them (claimed, looked up, recorded) run beside those calls, not between them.
    db, records = _job(tmp_path, n=600)
    third_claimed = threading.Event()
    real_claim = LeasedJob.claim
    claims: list[int] = []

    def claim(self: LeasedJob, batch_no: int) -> Any:
        claims.append(batch_no)
        if len(claims) >= 3:
            third_claimed.set()
        return real_claim(self, batch_no)

    on_the_wire: list[int] = []
    held: list[bool] = []
    pair = threading.Barrier(2)

    def hold(verb: str, body: dict[str, Any]) -> None:
        if verb == "batchEmbedContents":
            on_the_wire.append(emulator.in_progress[verb])
            with contextlib.suppress(threading.BrokenBarrierError):
                pair.wait(timeout=10)  # the calls go out two by two: both slots are used
            held.append(third_claimed.wait(timeout=10))  # and each waits on the wire until a third batch is claimed

    emulator.hooks.append(hold)
    monkeypatch.setattr(LeasedJob, "claim", claim)
    assert _run(db, settings={"concurrency": 2}).ok
    _assert_vectors(tmp_path, records)
    assert len(on_the_wire) == 12 and max(on_the_wire) == 2, on_the_wire
    assert all(held), held  # with one worker per call, no third batch could be claimed while both calls were out


@pytest.mark.reliability
def test_an_invalid_key_stops_the_job_at_once_with_a_clear_message(
    tmp_path: Path, emulator: GeminiEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, _ = _job(tmp_path, n=600)
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-wrong-key-987")
    result = _run(db)
    assert result.status == "failed"
    assert "refused the API key" in (result.message or "") and "GEMINI_API_KEY" in (result.message or "")
    assert "AIza-wrong-key-987" not in (result.message or "")
    assert FAST.concurrency is not None and emulator.requests["batchEmbedContents"] <= FAST.concurrency  # none wasted
    info = qsync.status("g", db=db)
    assert info["batches_failed"] == 0 and info["batches_running"] == 0  # batches are not to blame
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    assert _run(db).ok


@pytest.mark.reliability
def test_a_record_the_api_refuses_is_isolated_and_skipped_with_its_reason(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    emulator.poison = ("POISON",)
    records = make_records(200)
    records[77]["text"] += " POISON"
    src, db = tmp_path / "p.jsonl", tmp_path / "q.duckdb"
    write_records(src, records)
    create_job(
        src, collection="c", job="g", db=db, qdrant_path=tmp_path / "qdrant", dimensions=64, batch_size=50,
    )  # fmt: skip
    assert _run(db).ok
    skipped = qsync.skipped("g", db=db)
    assert list(skipped.record_id) == ["r77"] and list(skipped.stage) == ["embed"]
    assert "unsupported sequence" in skipped.reason.iloc[0]
    info = qsync.status("g", db=db)
    assert info["loaded_records"] == 199 and info["skipped_records"] == 1 and info["total_records"] == 200
    assert info["processed_records"] == 200 and info["remaining_records"] == 0
    good = [r for r in records if r["id"] != "r77"]
    _assert_vectors(tmp_path, good)
    assert max(emulator.texts_embedded.values()) == 1  # the split re-sent refused halves, never paid ones


def test_the_budget_pauses_before_it_is_exceeded_and_resume_raises_it(tmp_path: Path, emulator: GeminiEmulator) -> None:
    db, records = _job(tmp_path, n=600, max_cost_usd=0.0002)
    result = _run(db)
    assert result.status == "paused" and "budget of $0.0002 would be exceeded" in (result.message or "")
    spent = qsync.cost("g", db=db).iloc[0]["cost_usd"]
    assert 0 < spent <= 0.0002
    assert _run(db, max_cost_usd=1.0).ok
    _assert_vectors(tmp_path, records)


@pytest.mark.slow
@pytest.mark.reliability
def test_the_key_never_lands_in_the_store_logs_messages_or_cli_output(
    tmp_path: Path, emulator: GeminiEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    emulator.server_error_rate = 0.2
    src, db, other = tmp_path / "s.jsonl", tmp_path / "q.duckdb", tmp_path / "other.jsonl"
    write_records(src, make_records(300))
    write_records(other, make_records(100, prefix="other"))  # not in the cache: must call the API
    env = qsync_env(GEMINI_API_KEY=SECRET, GOOGLE_GEMINI_BASE_URL=emulator.url)
    outputs = [
        run_qsync("run", "--source", str(src), "--collection", "c", "--db", str(db), "--job", "s", "--dimensions", "64",
                  "--texts-per-minute", "1000000", env=env),
        run_qsync("status", "s", "--db", str(db), "--json", env=env),
        run_qsync("cost", "s", "--db", str(db), env=env),
        run_qsync("estimate", "--source", str(src), "--db", str(db), env=env),
        run_qsync("run", "--source", str(other), "--collection", "c", "--db", str(db), "--job", "bad",
                  "--dimensions", "64", env={**env, "GEMINI_API_KEY": SECRET[::-1]}),
    ]  # fmt: skip
    assert outputs[0].returncode == 0, outputs[0].stderr
    assert outputs[-1].returncode == 1 and "refused the API key" in outputs[-1].stderr
    for out in outputs:
        assert SECRET not in out.stdout + out.stderr and SECRET[::-1] not in out.stdout + out.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SECRET.encode() not in data and SECRET[::-1].encode() not in data, path
    assert SECRET not in caplog.text


def test_estimate_reports_records_tokens_dollars_and_duration(tmp_path: Path, emulator: GeminiEmulator) -> None:
    records = make_records(3000)
    records[5]["text"] = ""
    src = tmp_path / "e.jsonl"
    write_records(src, records)
    out = run_qsync("estimate", "--source", str(src), "--json", env=qsync_env(GEMINI_API_KEY=SECRET,
                    GOOGLE_GEMINI_BASE_URL=emulator.url))  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    actual = sum(count_tokens(r["text"]) for r in records if r["text"])
    assert result["records"] == 3000 and result["skipped_records"] == 1 and result["texts_to_embed"] == 2999
    assert result["skip_reasons"] == {"text is empty or whitespace": 1}
    assert result["tokens"] == pytest.approx(actual, rel=0.10)
    assert result["expected_minutes"] == pytest.approx(2999 / (3000 * 0.97), rel=0.01)
    assert "calibrated with countTokens" in result["tokens_basis"]
    assert sum(emulator.texts_embedded.values()) == 0  # nothing embedded


def test_qdrant_points_carry_gemini_vectors_from_a_cli_run(tmp_path: Path, emulator: GeminiEmulator) -> None:
    src, db = tmp_path / "v.jsonl", tmp_path / "q.duckdb"
    records = make_records(150)
    write_records(src, records)
    env = qsync_env(GEMINI_API_KEY=SECRET, GOOGLE_GEMINI_BASE_URL=emulator.url)
    out = run_qsync(
        "run", "--source", str(src), "--collection", "c", "--db", str(db), "--dimensions", "64",
        "--texts-per-minute", "1000000", env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    points = qdrant_points(db.with_suffix(".qdrant"), "c")
    for r in records:
        vector, _payload = points[point_id(r["id"])]
        expected = emulated_vector(MODEL, r["text"], 64)
        np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), atol=1e-5)


def test_batch_mode_fills_the_cache_at_half_price_and_upserts_from_it(
    tmp_path: Path, emulator: GeminiEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator.batch_job_seconds = 0.3
    db, records = _job(tmp_path, n=600, batch_mode=True)
    assert _run(db, settings={"batch_mode_poll_s": 0.1}).ok
    assert emulator.requests["asyncBatchEmbedContent"] == 1 and emulator.requests["batchEmbedContents"] == 0
    assert max(emulator.texts_embedded.values()) == 1 and len(emulator.texts_embedded) == 600
    cost = qsync.cost("g", db=db).iloc[0]
    assert cost["batch_mode_texts"] == 600 and cost["tokens"] == emulator.tokens_metered
    assert cost["cost_usd"] == pytest.approx(emulator.tokens_metered * 0.075 / 1e6, rel=0.01)
    assert cost["cache_saved_tokens"] == 0  # prefetched vectors are not savings
    _assert_vectors(tmp_path, records)


@pytest.mark.slow
@pytest.mark.reliability
def test_batch_mode_goes_on_polling_after_a_kill_instead_of_paying_again(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    import signal
    import subprocess

    from qsync_testing import qsync_cmd, wait_for

    emulator.batch_job_seconds = 4.0
    src, db = tmp_path / "b.jsonl", tmp_path / "q.duckdb"
    records = make_records(300)
    write_records(src, records)
    env = qsync_env(GEMINI_API_KEY=SECRET, GOOGLE_GEMINI_BASE_URL=emulator.url, QSYNC_BATCH_POLL_S="0.2")
    args = ["run", "--source", str(src), "--collection", "c", "--db", str(db), "--job", "b", "--dimensions", "64",
            "--batch-mode", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(qsync_cmd(*args), env=env)

    def submitted() -> bool:
        try:
            return bool(ledger_rows(db, "SELECT count(*) FROM remote_jobs")[0][0])
        except qsync.QsyncError:  # not planned yet
            return False

    wait_for(submitted, timeout=30)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert emulator.requests["asyncBatchEmbedContent"] == 1
    resumed = run_qsync("resume", "b", "--db", str(db), env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert emulator.requests["asyncBatchEmbedContent"] == 1 and emulator.requests["batchEmbedContents"] == 0
    points = qdrant_points(db.with_suffix(".qdrant"), "c")
    assert len(points) == 300


def test_enrichment_answers_go_to_the_payload_are_embedded_and_never_paid_twice(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    from qsync.testing.gemini_model import TOKEN as _TOKEN

    records = make_records(120)
    src, db = tmp_path / "e.jsonl", tmp_path / "q.duckdb"
    write_records(src, records)
    prompt = "Summarise record {id} briefly: {text}"
    create_job(
        src, collection="c", job="g", db=db, qdrant_path=tmp_path / "qdrant", dimensions=64, batch_size=50,
        payload_columns=["n"],
        enrich={"prompt": prompt, "field": "summary", "embed": "answer"},
    )  # fmt: skip
    assert _run(db).ok
    assert emulator.requests["generated"] == 120

    def answer(r: dict[str, Any]) -> str:  # what the emulator answers: the prompt's last 12 tokens
        return " ".join(_TOKEN.findall(prompt.format(id=r["id"], text=r["text"]))[-12:])

    by_id = {payload["id"]: (vector, payload) for vector, payload in qdrant_points(tmp_path / "qdrant", "c").values()}
    for r in records:
        vector, payload = by_id[r["id"]]
        assert payload["summary"] == answer(r)
        expected = emulated_vector(MODEL, answer(r), 64)
        np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), atol=1e-5)
    cost = qsync.cost("g", db=db).iloc[0]
    assert cost["enrich_tokens"] > 0 and cost["enrich_cost_usd"] > 0
    assert cost["cost_usd"] == pytest.approx(cost["enrich_cost_usd"] + cost["tokens"] * 0.15 / 1e6)

    # A second job with the same prompt reuses every answer and every vector.
    create_job(
        src, collection="c2", job="again", db=db, qdrant_path=tmp_path / "qdrant", dimensions=64, payload_columns=["n"],
        enrich={"prompt": prompt, "field": "summary", "embed": "answer"},
    )  # fmt: skip
    assert _run(db, "again").ok
    assert emulator.requests["generated"] == 120 and max(emulator.texts_embedded.values()) == 1


def test_an_enrichment_prompt_over_unknown_columns_is_refused_at_plan_time(tmp_path: Path) -> None:
    src = tmp_path / "e.jsonl"
    write_records(src, make_records(3))
    with pytest.raises(ConfigError, match="uses title, which the job does not keep"):
        create_job(src, collection="c", db=tmp_path / "q.duckdb", embedder="hash",
                         enrich={"prompt": "Classify {title}: {text}"})  # fmt: skip


@pytest.mark.reliability
def test_a_text_the_plan_let_through_but_the_api_finds_too_long_is_skipped(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    records = make_records(60)
    records[10]["text"] = "a " * 2100  # ~1,050 tokens by qsync's estimate, 2,100 by the API's count
    src, db = tmp_path / "long.jsonl", tmp_path / "q.duckdb"
    write_records(src, records)
    # Without chunking, the plan's ~4 bytes a token lets it through, and the API refuses it: a skip with its reason.
    create_job(
        src, collection="c", job="g", db=db, qdrant_path=tmp_path / "qdrant", dimensions=64, chunk_tokens=0,
    )  # fmt: skip
    assert _run(db).ok
    skipped = qsync.skipped("g", db=db)
    assert list(skipped.record_id) == ["r10"]
    assert "input token count is 2100 but the model supports up to 2048" in skipped.reason.iloc[0]
    assert qsync.status("g", db=db)["loaded_records"] == 59
    # With chunking (the default), the upper estimate that sizes chunks sees it is too long: cut, loaded, no refusal.
    create_job(src, collection="c2", job="chunked", db=db, qdrant_path=tmp_path / "qdrant", dimensions=64)
    assert _run(db, "chunked").ok
    status = qsync.status("chunked", db=db)
    assert (status["loaded_records"], status["skipped_records"], status["total_chunks"]) == (60, 0, 61)


def test_the_emulator_refuses_oversized_requests_like_the_api(emulator: GeminiEmulator) -> None:
    import httpx

    url = f"{emulator.url}/v1/models/{MODEL}:batchEmbedContents"
    headers = {"x-goog-api-key": SECRET}
    one = {"model": f"models/{MODEL}", "content": {"parts": [{"text": "hello"}]}}
    too_many = httpx.post(url, json={"requests": [one] * 101}, headers=headers)
    assert too_many.status_code == 400 and "at most 100" in too_many.json()["error"]["message"]
    huge = {"model": f"models/{MODEL}", "content": {"parts": [{"text": "x" * (5 * 1024 * 1024)}]}}
    too_big = httpx.post(url, json={"requests": [huge]}, headers=headers)
    assert too_big.status_code == 400 and "payload size" in too_big.json()["error"]["message"]
    ok = httpx.post(url.replace("/v1/", "/v1beta/").replace("batchEmbedContents", "embedContent"), json=one,
                    headers=headers)  # fmt: skip
    assert ok.status_code == 200 and len(ok.json()["embedding"]["values"]) == 3072


@pytest.mark.parametrize(
    ("model", "dimensions", "task_type"),
    [("gemini-embedding-001", 768, "RETRIEVAL_DOCUMENT"), ("gemini-embedding-001", 256, None),
     ("gemini-embedding-2", 512, "document:v1")],
)  # fmt: skip
@pytest.mark.parametrize("usage", [True, False])
def test_an_embedding_call_sends_what_the_sdks_method_sends_and_reads_the_same_answer(
    emulator: GeminiEmulator, monkeypatch: pytest.MonkeyPatch, model: str, dimensions: int, task_type: str | None,
    usage: bool,
) -> None:  # fmt: skip
    # The call goes through the SDK's transport as JSON and its answer is read with orjson (the public method's
    # decoding was most of a run's CPU): request for request, and answer for answer, the same as the SDK's method.
    from qsync.embedders.gemini import GeminiEmbedder
    from qsync.embedders.gemini_client import GeminiClient

    emulator.usage_metadata = usage
    embedder = GeminiEmbedder(model=model, dimensions=dimensions, task_type=task_type)
    sent: list[tuple[str, dict[str, Any]]] = []
    api_client = embedder._client._api_client
    transport = api_client.request

    def spy(method: str, path: str, body: dict[str, Any], options: Any = None) -> Any:
        sent.append((path, {k: v for k, v in body.items() if not k.startswith("_")}))  # the SDK drops `_` keys
        return transport(method, path, body, options)

    monkeypatch.setattr(api_client, "request", spy)
    texts = ["a first text", "ünïcödé and more", "third"]
    raw = embedder.embed(texts)
    monkeypatch.setattr(GeminiClient, "post_paid", lambda self, path, body: None)  # the SDK's public method
    public = embedder.embed(texts)
    assert len(sent) == 2 and sent[0] == sent[1]
    assert np.array_equal(raw.vectors, public.vectors) and raw.vectors.dtype == np.float32
    assert (raw.tokens_per_text, raw.tokens_estimated) == (public.tokens_per_text, public.tokens_estimated)
    assert raw.tokens_estimated is not usage


def test_a_paid_call_is_sent_once_whatever_the_sdks_transport_looks_like(
    emulator: GeminiEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from qsync.embedders.gemini import GeminiEmbedder
    from qsync.errors import PermanentError

    embedder = GeminiEmbedder(model=MODEL, dimensions=768)
    api_client = embedder._client._api_client
    transport = api_client.request

    def calls() -> int:
        return int(emulator.stats()["requests"].get("batchEmbedContents", 0))

    class OtherShape:  # a transport that says it takes other arguments (another SDK version)
        __signature__ = inspect.Signature([inspect.Parameter("request", inspect.Parameter.POSITIONAL_ONLY)])

        def __call__(self, *args: Any) -> Any:
            return transport(*args)

    # Not used for the paid call: the public method sends it, once.
    monkeypatch.setattr(api_client, "request", OtherShape())
    before = calls()
    assert embedder.embed(["one", "two"]).vectors.shape == (2, 768) and calls() == before + 1
    # An answer that is not JSON was billed all the same: an error that says so, never a second call.
    monkeypatch.setattr(api_client, "request", lambda *a: (transport(*a), SimpleNamespace(body="<html>"))[1])
    before = calls()
    with pytest.raises(PermanentError, match="not a JSON object") as raised:
        embedder.embed(["one", "two"])
    assert raised.value.maybe_billed and calls() == before + 1
