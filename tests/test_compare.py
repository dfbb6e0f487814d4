"""Choosing the model and the size with evidence (`qsync.compare`, `qsync compare`), and what makes it cheap: a
vector cached at a Matryoshka model's full size is every smaller size's vector too, never paid for again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from qsync_testing import make_records, qdrant_points, run_qsync, sdk_emulator, write_records

import qsync
from qsync.app.compare import Comparison, compare
from qsync.errors import QsyncError, SpecMismatch
from qsync.input.sample import sample_records
from qsync.input.sources import as_source
from qsync.notebook.picker import job_choices
from qsync.ops.agreement import recall_at_k
from qsync.sink.shards import open_shard
from qsync.spec.columns import Columns
from qsync.spec.settings import RunSettings
from qsync.spec.target import point_id
from qsync.testing.emulator import GeminiEmulator
from qsync.testing.gemini_model import emulated_vector

SECRET = "compare-test-key"
MODEL = "gemini-embedding-001"
FAST = RunSettings(concurrency=2, retry_base_s=0.01, retry_max_s=0.05, heartbeat_s=0.2, texts_per_minute=10**7)
QUERIES = ["an animal that lives in water", "a tool for cutting", "to speak loudly"]


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[GeminiEmulator]:
    with sdk_emulator(monkeypatch, SECRET, window_s=1.0, seed=5, vectors="words") as emu:
        yield emu


def _source(tmp_path: Path, n: int = 300) -> Path:
    src = tmp_path / "records.jsonl"
    write_records(src, make_records(n))
    return src


def _embedded(emulator: GeminiEmulator) -> int:
    return int(emulator.stats()["texts_embedded"])


def _run(src: Path, db: Path, collection: str, dims: int) -> Any:
    return qsync.run(src, collection=collection, db=db, embedder="gemini", model=MODEL, dimensions=dims,
                     qdrant_path=db.parent / collection, settings=FAST, progress=False)  # fmt: skip


def test_a_smaller_size_is_cut_from_the_cached_full_size_never_paid_again(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    src, db = _source(tmp_path, 200), tmp_path / "q.duckdb"
    assert _run(src, db, "full", 3072).ok
    paid = _embedded(emulator)
    assert paid == 200
    assert qsync.estimate(src, model=MODEL, dimensions=768, db=db)["texts_to_embed"] == 0
    result = _run(src, db, "small", 768)
    assert result.ok and _embedded(emulator) == paid, "768 is the first 768 of 3,072: nothing to pay"
    spent = qsync.cost(result.job_id, db=db).iloc[0]
    assert spent["cost_usd"] == 0 and spent["cache_hits"] == 200
    # The vectors are what the API answers at 768 (its first 768 dimensions), unit length as qsync uses them.
    points = qdrant_points(tmp_path / "small", "small")
    for record in make_records(200)[:20]:
        vector = points[point_id(record["id"])][0]
        expected = emulator_vector(emulator, record["text"], 768)
        np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), atol=1e-5)
    # verify --repair rebuilds lost points of the smaller collection from the full-size cache, paying nothing.
    lost = [point_id(r["id"]) for r in make_records(200)[:30]]
    with open_shard(tmp_path / "small" / "small") as shard:  # behind qsync's back, straight into the shard
        shard.update(0, "delete", lost)
    repaired = qsync.verify(result.job_id, db=db, repair=True)
    assert repaired.repaired == 30 and repaired.unrepairable == 0 and _embedded(emulator) == paid
    assert qsync.verify(result.job_id, db=db).ok
    # Batch Mode at another smaller size submits nothing: the cache holds every text, at full size.
    emulator.batch_job_seconds = 0.1
    batch = qsync.run(src, collection="batch", db=db, embedder="gemini", model=MODEL, dimensions=256,
                      qdrant_path=tmp_path / "batch", batch_mode=True, progress=False,
                      settings=replace(FAST, batch_mode_poll_s=0.1))  # fmt: skip
    assert batch.ok and emulator.requests["asyncBatchEmbedContent"] == 0 and _embedded(emulator) == paid
    # The other way round is not free: a larger size holds more than a smaller one's vector.
    other = tmp_path / "other.jsonl"
    write_records(other, [{**r, "text": r["text"] + " again"} for r in make_records(50)])
    assert _run(other, db, "small-first", 768).ok and _run(other, db, "large-after", 3072).ok
    assert _embedded(emulator) == paid + 100


def emulator_vector(emulator: GeminiEmulator, text: str, dims: int) -> np.ndarray:
    """What the emulator answers for `text` at `dims`, in its mode (words)."""
    from qsync.testing.gemini_model import answer_values

    return np.asarray(answer_values(MODEL, text, dims, text), dtype=np.float32)


def test_compare_pays_for_the_sample_once_measures_every_size_and_the_full_run_reuses_it(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    src, db = _source(tmp_path, 300), tmp_path / "q.duckdb"
    told: list[Comparison] = []
    before = compare(src, db=db, sample=80, queries=QUERIES, dry_run=True, on_sample=told.append)
    assert told and before.sample_records == 80 and _embedded(emulator) == 0 and before.table.empty
    found = compare(src, db=db, sample=80, queries=QUERIES, sizes=(128, 768, 3072), settings=FAST)
    # Each model embedded the 80 sampled records and the 3 queries once, and the ledger has what it cost.
    assert _embedded(emulator) == 2 * (80 + 3)
    assert len(found.jobs) == 4 and found.spent_usd > 0
    recorded = sum(float(qsync.status(job, db=db)["cost_usd"]) for job in found.jobs)
    assert found.spent_usd == pytest.approx(recorded)
    assert found.spent_usd == pytest.approx(sum(before.sample_cost_usd.values()), rel=0.15)
    assert sorted(found.table["model"].unique()) == ["gemini-embedding-001", "gemini-embedding-2"]
    for model in ("gemini-embedding-001", "gemini-embedding-2"):
        kept = _by_size(found.table, model, "neighbours_kept")
        assert kept[3072] == 1.0 and 0 <= kept[128] < kept[768] < 1.0, kept
        assert _by_size(found.table, model, "neighbours_kept_queries")[3072] == 1.0
        assert set(_by_size(found.table, model, "records").values()) == {80}
        storage = _by_size(found.table, model, "storage_gb")
        assert storage[768] == pytest.approx(storage[3072] / 4)
    costs = found.table.groupby("model")["cost_usd"].first()
    assert costs["gemini-embedding-2"] > costs["gemini-embedding-001"]
    # Again: the same sample, already embedded: nothing is paid, the same figures come back.
    again = compare(src, db=db, sample=80, queries=QUERIES, sizes=(128, 768, 3072), settings=FAST)
    assert again.jobs == [] and again.spent_usd == 0 and _embedded(emulator) == 2 * (80 + 3)
    pd.testing.assert_frame_equal(again.table, found.table)
    # The full run at a smaller size pays only for the records outside the sample.
    assert _run(src, db, "docs", 768).ok
    assert _embedded(emulator) == 2 * (80 + 3) + (300 - 80)


def _by_size(table: pd.DataFrame, model: str, column: str) -> dict[int, float]:
    rows = table[table["model"] == model]
    return {int(d): float(v) for d, v in zip(rows["dimensions"], rows[column], strict=True)}


def test_a_capped_comparison_stops_keeps_what_it_paid_and_goes_on_when_called_again(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    src, db = _source(tmp_path, 400), tmp_path / "q.duckdb"
    settings = replace(FAST, concurrency=1)
    cost = compare(src, db=db, sample=300, models=[MODEL], dry_run=True).sample_cost_usd[MODEL]
    with pytest.raises(QsyncError, match=r"embedding the sample stopped .*call compare again"):
        compare(src, db=db, sample=300, models=[MODEL], max_cost_usd=cost / 2, settings=settings)
    partial = _embedded(emulator)
    assert 0 < partial < 300
    [job] = [j for j in qsync.jobs(db=db)["job"] if j.startswith("compare:")]
    paid_before = float(qsync.status(job, db=db)["cost_usd"])
    found = compare(src, db=db, sample=300, models=[MODEL], max_cost_usd=1.0, settings=settings)
    assert _embedded(emulator) == 300, "resumed: no text of the sample paid twice"
    # "Spent now" is what this call paid, not what the job had paid before it.
    assert found.jobs == [job] and 0 < found.spent_usd < float(qsync.status(job, db=db)["cost_usd"])
    assert found.spent_usd == pytest.approx(float(qsync.status(job, db=db)["cost_usd"]) - paid_before)
    assert emulator.stats()["texts_embedded_twice"] == 0
    assert found.table["neighbours_kept"].iloc[-1] == 1.0


def test_the_compare_command_says_the_cost_first_then_the_table(tmp_path: Path, emulator: GeminiEmulator) -> None:
    src, db = _source(tmp_path, 200), tmp_path / "q.duckdb"
    backfill = qsync.run(src, collection="docs", db=db, embedder="hash", dimensions=32, progress=False)
    assert backfill.ok and _embedded(emulator) == 0
    queries = tmp_path / "queries.txt"
    queries.write_text("\n".join(QUERIES) + "\n\n")
    dry = run_qsync("compare", "--source", str(src), "--db", str(db), "--sample", "60", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "A sample of 60 records" in dry.stdout and _embedded(emulator) == 0
    dry_json = run_qsync("compare", "--source", str(src), "--db", str(db), "--sample", "60", "--dry-run", "--json")
    assert json.loads(dry_json.stdout)["sample_cost_usd"][MODEL] > 0
    out = run_qsync("compare", "--source", str(src), "--db", str(db), "--sample", "60", "--models", MODEL,
                    "--sizes", "256", "3072", "--queries", str(queries))  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("A sample of 60 records and 3 queries") and lines[1].startswith(
        "Embedding the sample cost $"
    )
    assert "neighbours kept" in out.stdout and "of your queries" in out.stdout and "100%" in out.stdout
    assert "not relevance" in " ".join(out.stdout.split())
    # How the whole table's tokens were counted (here with the API: a job's what-if table says ~4 bytes a token).
    assert "Its tokens: estimate calibrated with countTokens on" in " ".join(out.stdout.split())
    as_json = run_qsync("compare", "--source", str(src), "--db", str(db), "--sample", "60", "--models", MODEL,
                        "--sizes", "256", "3072", "--json")  # fmt: skip
    rows = json.loads(as_json.stdout)
    assert [r["dimensions"] for r in rows] == [256, 3072] and rows[1]["neighbours_kept"] == 1.0
    assert rows[0]["tokens_basis"].startswith("estimate calibrated with countTokens")
    assert _embedded(emulator) == 60 + 3, "the JSON run found the sample in the cache"
    # A notebook's job picker opens the newest backfill, not the samples compared since.
    choices = [job for _, job in job_choices(db)]
    assert choices[0] == backfill.job_id and len(choices) == 3 and all(c.startswith("compare:") for c in choices[1:])
    small = run_qsync("compare", "--source", str(src), "--db", str(db), "--sample", "5")
    assert small.returncode == 1 and "too small" in small.stderr
    zero = run_qsync("compare", "--source", str(src), "--db", str(db), "--sizes", "0", "768")
    assert zero.returncode == 1 and "positive" in zero.stderr


def test_a_form_at_a_smaller_size_than_its_unfinished_job_is_told_the_vectors_are_cut_not_paid(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    src, db = _source(tmp_path, 100), tmp_path / "q.duckdb"
    options: dict[str, Any] = {"collection": "c", "db": db, "embedder": "gemini", "model": MODEL}
    qsync.prepare(src, dimensions=3072, **options)  # planned, not run: unfinished
    with pytest.raises(SpecMismatch) as refused:
        qsync.prepare(src, dimensions=768, **options)
    assert "cut from the full-size vectors" in refused.value.reuse_note
    with pytest.raises(SpecMismatch) as larger:
        qsync.prepare(src, dimensions=3072, **{**options, "model": "gemini-embedding-2"})
    assert "at full price" in larger.value.reuse_note


def test_recall_is_whole_when_the_first_dimensions_hold_everything() -> None:
    rng = np.random.default_rng(0)
    signal = rng.standard_normal((100, 64))
    full = np.hstack([signal, 1e-4 * rng.standard_normal((100, 192))]).astype(np.float32)
    full /= np.linalg.norm(full, axis=1, keepdims=True)
    assert recall_at_k(full, None, 64) == pytest.approx(1.0)
    assert recall_at_k(full, None, 16) < 0.9
    queries = full[:5] + 0.01
    assert recall_at_k(full, queries / np.linalg.norm(queries, axis=1, keepdims=True), 64) == pytest.approx(1.0)


def test_emulated_vectors_are_nested_like_the_models() -> None:
    full = emulated_vector(MODEL, "a text", None)
    np.testing.assert_array_equal(emulated_vector(MODEL, "a text", 256), full[:256])


def test_the_sample_leaves_out_what_the_planner_skips_and_texts_that_would_tie() -> None:
    frame = pd.DataFrame({
        "id": ["a", "a", "b", "c", "d", " ", "e"],
        "text": [" ", "second row of a", "same", "same", "\t\u00a0", "no id", "fine"],
    })  # fmt: skip
    sampled = sample_records(as_source(frame), Columns("id", "text", None), 10)
    # a: its first row is blank (the planner skips the second as a duplicate id); d: whitespace; " ": no id;
    # b and c share a text: one of them.
    assert sorted(sampled["id"]) in (["b", "e"], ["c", "e"])
    assert list(sample_records(as_source(frame), Columns("id", "text", None), 10)["id"]) == list(sampled["id"])


def test_the_estimate_recorded_at_plan_time_counts_in_the_file_what_an_estimate_counts(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    """A job's recorded estimate is counted in SQL (a million texts never leave the file); it must say what
    `qsync.estimate` says of the same source, and see the full-size cache as every reader does."""
    from qsync.app import reading

    src, db = _source(tmp_path, 300), tmp_path / "q.duckdb"
    before = qsync.estimate(src, model=MODEL, dimensions=768, db=db)
    job = qsync.prepare(src, collection="c", db=db, embedder="gemini", model=MODEL, dimensions=768)
    recorded = reading.recorded_estimate(job, db=db)
    assert recorded is not None and recorded["texts_to_embed"] == before["texts_to_embed"] == 300
    assert recorded["tokens"] == before["tokens"] and recorded["cost_usd"] == pytest.approx(before["cost_usd"])
    assert _run(src, db, "full", 3072).ok
    smaller = qsync.prepare(src, collection="d", db=db, embedder="gemini", model=MODEL, dimensions=256)
    cut = reading.recorded_estimate(smaller, db=db)
    assert cut is not None and (cut["texts_to_embed"], cut["cached_texts"], cut["cost_usd"]) == (0, 300, 0)


def test_a_reader_read_once_is_compared_from_what_was_read(tmp_path: Path, emulator: GeminiEmulator) -> None:
    import pyarrow as pa

    records = make_records(120)
    table = pa.table({"id": [r["id"] for r in records], "text": [r["text"] for r in records]})
    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=50))
    found = compare(reader, db=tmp_path / "q.duckdb", sample=60, models=[MODEL], sizes=(256,), settings=FAST)
    assert found.sample_records == 60 and list(found.table["neighbours_kept"])[-1] == 1.0
