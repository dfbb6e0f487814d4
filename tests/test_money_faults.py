"""Paid calls that end badly: each failure made to happen against the Gemini emulator (or two writers on one
checkpoint file), and the money checked against the emulator's meter.

- a call the API billed but whose answer never arrived counts against the budget within the run, as it does in the
  checkpoint (before, the cap saw only the retry and the run spent past it);
- an answer the API gave (HTTP 200, billed) that qsync cannot use is recorded unconfirmed, not void;
- the bound of an unanswered call covers what is sent, the model's instruction included (gemini-embedding-2);
- a write retried after another job saved the same text keeps the vectors others saved meanwhile.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
from qsync_testing import FAST, ledger_rows, make_records, sdk_emulator, write_records

import qsync
from qsync.app.jobs import create_job
from qsync.clock import SYSTEM_CLOCK
from qsync.embedders.hashing import HashingEmbedder
from qsync.ledger.cache import lookup_vectors
from qsync.ledger.lease import take_lease
from qsync.ledger.ledger import Ledger
from qsync.ledger.run import LeasedJob
from qsync.testing.emulator import GeminiEmulator
from qsync.testing.gemini_model import count_tokens, error_body

SECRET = "AIzaMONEY-key-0123456789"
MODEL = "gemini-embedding-001"
PRICE = 0.15 / 1e6  # gemini-embedding-001, per token


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[GeminiEmulator]:
    with sdk_emulator(monkeypatch, SECRET, seed=5) as emu:
        yield emu


def _plan(tmp_path: Path, records: list[dict[str, Any]], **options: Any) -> Path:
    src, db = tmp_path / "c.jsonl", tmp_path / "q.duckdb"
    write_records(src, records)
    create_job(src, collection="c", job="c", db=db, qdrant_path=tmp_path / "qdrant", batch_size=50, **options)
    return db


def _recorded(db: Path) -> tuple[int, int]:
    cost = qsync.cost("c", db=db).iloc[0]
    return int(cost["tokens"]), int(cost["unconfirmed_tokens"])


def test_a_call_billed_without_an_answer_counts_against_the_budget_at_once(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    records = make_records(600)
    db = _plan(tmp_path, records, dimensions=64, embedder_options={"timeout_s": 1.0})
    seen: set[str] = set()
    lock = threading.Lock()

    def billed_then_too_late(verb: str, body: dict[str, Any]) -> Any:
        if verb != "batchEmbedContents":
            return None
        first = body["requests"][0]["content"]["parts"][0]["text"]
        with lock:
            if first in seen:  # the retry is answered
                return None
            seen.add(first)
        answer = emulator._embed(MODEL, body["requests"])  # metered: the API billed it
        time.sleep(1.6)  # and the answer comes after the client gave up
        return answer

    emulator.hooks.append(billed_then_too_late)
    every_text_once = sum(count_tokens(r["text"]) for r in records) * PRICE
    cap = 1.2 * every_text_once  # every call is paid twice: the run must pause before it spends past the cap
    result = qsync.resume("c", db=db, settings=FAST, max_cost_usd=cap)
    assert result.status == "paused" and "budget" in (result.message or ""), result.message
    assert 0 < emulator.usd_metered <= cap
    tokens, unconfirmed = _recorded(db)
    assert tokens + unconfirmed >= emulator.tokens_metered


def test_an_answer_billed_but_unusable_stays_in_the_spend(tmp_path: Path, emulator: GeminiEmulator) -> None:
    db = _plan(tmp_path, make_records(100), dimensions=64)
    answered = [0]

    def one_embedding_short(verb: str, body: dict[str, Any]) -> Any:
        if verb != "batchEmbedContents" or answered[0]:
            return None
        answered[0] += 1
        code, answer = emulator._embed(MODEL, body["requests"])  # metered: billed
        answer["embeddings"] = answer["embeddings"][:-1]
        return code, answer

    emulator.hooks.append(one_embedding_short)
    assert qsync.resume("c", db=db, settings=FAST).ok
    tokens, unconfirmed = _recorded(db)
    assert tokens + unconfirmed >= emulator.tokens_metered  # before: the short answer's tokens were void, gone
    assert ledger_rows(db, "SELECT count(*) FROM spend_intents WHERE state = 'unconfirmed'") == [(1,)]


def test_the_bound_of_an_uncounted_call_covers_the_models_instruction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gemini-embedding-2 sends each text behind an instruction ("title: none | text: …"): a text of two bytes is
    # ~7 tokens. With countTokens away, the bound is all the checkpoint has: it must not be below the meter.
    with sdk_emulator(monkeypatch, SECRET, usage_metadata=False, seed=2) as emu:
        db = _plan(tmp_path, [{"id": f"r{i}", "text": f"w{i}"} for i in range(200)], dimensions=128,
                   model="gemini-embedding-2")  # fmt: skip
        emu.hooks.append(
            lambda verb, body: (503, error_body(503, "UNAVAILABLE", "busy")) if verb == "countTokens" else None
        )
        assert qsync.resume("c", db=db, settings=FAST).ok
        tokens, unconfirmed = _recorded(db)
        assert tokens == 0 and unconfirmed >= emu.tokens_metered > 0


@dataclass(frozen=True)
class _Paid:
    """A paid embedder's cache identity (another model than the hashing one)."""

    model: str = "paid-model"
    dimensions: int = 8
    task_type: str = "RETRIEVAL_DOCUMENT"


def test_a_write_retried_after_a_duplicate_keeps_what_others_saved_meanwhile(tmp_path: Path) -> None:
    """Job g saves a text's vector a second time (another batch of it saved the same text): DuckDB refuses the
    duplicate key, and the write is tried again keeping the first. Between the two tries, job h saves vectors it paid
    for. The retry must not take them for vectors past the file's end (it read the end in its first try)."""
    db = tmp_path / "q.duckdb"
    create_job(pd.DataFrame(make_records(100)), collection="c", job="g", db=db, dimensions=8, batch_size=10)
    create_job(pd.DataFrame(make_records(100, prefix="other")), collection="c2", job="h", db=db, dimensions=8,
               batch_size=10)  # fmt: skip
    with Ledger(db) as lg, Ledger(db) as lh:
        g = LeasedJob(lg, take_lease(lg, "g", SYSTEM_CLOCK, 60, os.getpid())[0], SYSTEM_CLOCK, "", "")
        h = LeasedJob(lh, take_lease(lh, "h", SYSTEM_CLOCK, 60, os.getpid())[0], SYSTEM_CLOCK, "", "")
        free, paid = HashingEmbedder(dimensions=8), _Paid()
        first, second, theirs = g.claim(0), g.claim(1), h.claim(0)
        text = first.hashes[0]
        g.record_embeddings(first, free, [text], np.ones((1, 8), np.float32), [3], False, 0.0)
        tried = g.commit.write_combined

        def others_save_between_tries(kind: Any, many: Any, arg: Any) -> Any:
            try:
                return tried(kind, many, arg)
            except duckdb.ConstraintException:
                h.record_embeddings(theirs, paid, theirs.hashes[:3], np.full((3, 8), 7.0, np.float32), [5, 5, 5],
                                    False, 0.0015)  # fmt: skip
                raise

        g.commit.write_combined = others_save_between_tries  # type: ignore[method-assign]
        g.record_embeddings(second, free, [text], np.full((1, 8), 2.0, np.float32), [3], False, 0.0)
        assert g.lost_vectors == 0  # nothing was lost: the file only grew
        with lh.reading() as con:
            found = lookup_vectors(con, lh.vectors, paid, theirs.hashes[:3]).found
        assert len(found) == 3  # before: all three forgotten, to be paid for again
        assert all(np.allclose(vector, 7.0) for vector, _ in found.values())
