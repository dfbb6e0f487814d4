"""A budget cap on an enrichment job spends close to the cap, never past it: each generateContent call asks for at
most max_output_tokens (a setting, shown in the estimate) and the budget reserves exactly that bound; a call that
does not fit beside the calls in flight waits for them instead of pausing the job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qsync_testing import FAST, make_records, sdk_emulator, write_records

import qsync
from qsync.app.jobs import create_job
from qsync.testing.emulator import GeminiEmulator

SECRET = "AIzaTEST-enrich-key-0123456789"
PROMPT = "Summarise in one sentence: {text}"


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[GeminiEmulator]:
    with sdk_emulator(monkeypatch, SECRET, seed=7, latency_s=0.02) as emu:
        yield emu


def test_an_enrichment_job_spends_at_least_nine_tenths_of_its_cap_and_never_more(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    asked: list[Any] = []
    emulator.hooks.append(lambda verb, body: asked.append(body.get("generationConfig")) if verb == "generateContent"
                          else None)  # fmt: skip
    src, db = tmp_path / "e.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(600))
    cap = 0.0005
    create_job(src, collection="c", job="e", db=db, qdrant_path=tmp_path / "qdrant", dimensions=64,
               enrich={"prompt": PROMPT, "max_output_tokens": 64})  # fmt: skip
    for _ in range(3):  # the first run pauses at the cap; resumes find no room for one more call
        result = qsync.resume("e", db=db, settings=FAST, max_cost_usd=cap)
        assert result.status == "paused" and "budget" in (result.message or "")
        info = qsync.status("e", db=db)
        spent = info["cost_usd"] + info["unconfirmed_cost_usd"]
        assert 0.9 * cap <= spent <= cap, spent
    assert asked and all(config == {"maxOutputTokens": 64} for config in asked)


def test_the_estimate_shows_the_answer_cap_and_what_it_bounds(tmp_path: Path) -> None:
    src = tmp_path / "e.jsonl"
    write_records(src, make_records(50))
    found = qsync.estimate(src, enrich={"prompt": PROMPT, "max_output_tokens": 100})
    assert found["enrich_max_output_tokens"] == 100 and found["enrich_calls"] == 50
    answers = 50 * 100 * 0.40 / 1e6  # gemini-2.5-flash-lite: $0.40 per 1M output tokens
    assert answers < found["enrich_cost_usd_at_most"] < answers + found["enrich_prompt_tokens"] * 0.10 / 1e6 + 1e-12
    default = qsync.estimate(src, enrich={"prompt": PROMPT})
    assert default["enrich_max_output_tokens"] == 256
