"""gemini-embedding-2 through the real google-genai SDK against the local emulator: the task given as an
instruction in the input, one Content per record, 8,192-token texts, its price, no cache mixing with -001."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qsync_testing import FAST, make_records, qdrant_points, qsync_env, run_qsync, sdk_emulator, write_records

import qsync
from qsync.app.jobs import create_job
from qsync.app.options import build_spec
from qsync.engine.runner import RunResult
from qsync.errors import ConfigError
from qsync.money import estimate as costs
from qsync.money.what_if import what_if
from qsync.spec.target import point_id
from qsync.testing.emulator import GeminiEmulator
from qsync.testing.gemini_model import count_tokens, emulated_vector

SECRET = "AIzaTEST-secret-key-0123456789"
G2 = "gemini-embedding-2"
G1 = "gemini-embedding-001"
DOC = "title: none | text: "
# ~6,000 tokens by both counts: 3-letter words are one emulator token and 4 bytes (one plan token) each.
LONG_TEXT = " ".join(["cat", "dog", "owl", "elk", "yak"] * 1200)


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[GeminiEmulator]:
    with sdk_emulator(monkeypatch, SECRET, window_s=1.0, seed=5) as emu:
        yield emu


def _source(tmp_path: Path, records: list[dict[str, Any]], name: str = "s") -> Path:
    src = tmp_path / f"{name}.jsonl"
    write_records(src, records)
    return src


def _job(tmp_path: Path, src: Path, job: str, model: str, collection: str = "c", dims: int = 128) -> Path:
    db = tmp_path / "q.duckdb"
    create_job(
        src, collection=collection, job=job, db=db, qdrant_path=tmp_path / "qdrant", dimensions=dims,
        model=model, batch_size=50,
    )  # fmt: skip
    return db


def _run(db: Path, job: str, **settings: Any) -> RunResult:
    result = qsync.resume(job, db=db, settings=replace(FAST, **settings))
    assert result.ok, result.message
    return result


def _expected(model: str, sent: str, dims: int = 128) -> np.ndarray:
    vector = emulated_vector(model, sent, dims)
    unit: np.ndarray = vector / np.linalg.norm(vector)
    return unit


def _assert_vectors(tmp_path: Path, collection: str, records: list[dict[str, Any]], model: str, prefix: str) -> None:
    points = qdrant_points(tmp_path / "qdrant", collection)
    assert len(points) == len(records)
    for r in records:
        vector, _payload = points[point_id(r["id"])]
        np.testing.assert_allclose(vector, _expected(model, prefix + r["text"]), atol=1e-5)


def test_a_job_sends_one_content_per_record_with_the_document_instruction_and_no_task_type(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    records = make_records(120)
    db = _job(tmp_path, _source(tmp_path, records), "g2", G2)
    _run(db, "g2")
    # What reached the API: one request per record (never several strings merged into one Content), each
    # one text part in the document format, and no taskType (the model does not support it).
    received = [r for r in emulator.received if r["resource"] == G2]
    assert len(received) == 120 and emulator.task_types_ignored == 0
    assert all(len(r["content"]["parts"]) == 1 for r in received)
    assert sorted(r["content"]["parts"][0]["text"] for r in received) == sorted(DOC + r["text"] for r in records)
    assert all("taskType" not in r and r["outputDimensionality"] == 128 for r in received)
    _assert_vectors(tmp_path, "c", records, G2, DOC)
    # The record's own text is kept as it was: the instruction changes what is sent, not what is stored.
    hits = qsync.search("g2", records[3]["text"], limit=3, db=db)
    assert set(hits["text"]) <= {r["text"] for r in records}


def test_cost_is_the_metered_tokens_at_twenty_cents_per_million(tmp_path: Path, emulator: GeminiEmulator) -> None:
    records = make_records(300)
    src = _source(tmp_path, records)
    db = _job(tmp_path, src, "g2", G2)
    before = qsync.estimate(src, model=G2, dimensions=128, db=db)
    _run(db, "g2")
    cost = qsync.cost("g2", db=db).iloc[0]
    metered = emulator.tokens_by_model[G2]
    assert metered == sum(count_tokens(DOC + r["text"]) for r in records)  # the instruction is billed too
    assert cost["tokens"] == metered and not cost["tokens_estimated"]
    assert cost["price_usd_per_million_tokens"] == 0.20
    assert cost["cost_usd"] == pytest.approx(emulator.usd_metered, rel=1e-6)
    assert cost["cost_usd"] == pytest.approx(metered * 0.20 / 1e6, rel=1e-6)
    assert before["cost_usd"] == pytest.approx(cost["cost_usd"], rel=0.10)
    assert before["cost_usd_batch_mode"] == pytest.approx(before["cost_usd"] / 2)


def test_a_6000_token_text_is_embedded_whole_by_2_and_cut_into_chunks_by_001(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    records = make_records(40)
    records[7]["text"] = LONG_TEXT
    src = _source(tmp_path, records)
    assert 5500 < count_tokens(DOC + LONG_TEXT) < 8192
    db = _job(tmp_path, src, "one", G1, collection="c1")
    one = qsync.status("one", db=db)
    assert one["skipped_records"] == 0 and one["total_chunks"] >= 40 + 2  # 2,048 tokens a text: three chunks or more
    _job(tmp_path, src, "two", G2, collection="c2")
    assert qsync.status("two", db=db)["total_chunks"] == 40  # 8,192 tokens: whole
    _run(db, "two")
    assert emulator.texts_embedded[DOC + LONG_TEXT] == 1
    _assert_vectors(tmp_path, "c2", records, G2, DOC)
    # The estimate compares the two models on the same source: the chunks each cuts, what each costs.
    table = costs.compare_models(src, dimensions=128, db=tmp_path / "fresh.duckdb").set_index("model")
    assert table.loc[G1, "chunks"] == one["total_chunks"] and table.loc[G2, "chunks"] == 40
    assert (table["skipped_records"] == 0).all()
    tokens = table["tokens"]
    assert int(tokens.loc[G2]) > int(tokens.loc[G1])  # the instruction -2 receives with every text
    assert table.loc[G2, "cost_usd"] == pytest.approx(int(tokens.loc[G2]) * 0.20 / 1e6)


def test_the_other_model_re_embeds_and_a_re_run_of_the_same_model_pays_nothing(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    records = make_records(100)
    src = _source(tmp_path, records)
    db = _job(tmp_path, src, "one", G1, collection="c1")
    _run(db, "one")
    _job(tmp_path, src, "two", G2, collection="c2")
    _run(db, "two")
    # Same texts, same dimensions, another model: every record paid again, no -001 vector reused.
    assert qsync.cost("two", db=db).iloc[0]["cache_hits"] == 0
    assert all(
        emulator.texts_embedded[t] == 1 for t in [r["text"] for r in records] + [DOC + r["text"] for r in records]
    )
    _assert_vectors(tmp_path, "c1", records, G1, "")
    _assert_vectors(tmp_path, "c2", records, G2, DOC)
    # The same model again (another collection): every vector from the cache, nothing sent.
    sent = emulator.requests["batchEmbedContents"]
    _job(tmp_path, src, "again", G2, collection="c3")
    _run(db, "again")
    assert emulator.requests["batchEmbedContents"] == sent
    assert qsync.cost("again", db=db).iloc[0]["cache_hits"] == 100
    _assert_vectors(tmp_path, "c3", records, G2, DOC)


def test_search_embeds_the_query_in_the_query_form(tmp_path: Path, emulator: GeminiEmulator) -> None:
    records = make_records(60)
    db = _job(tmp_path, _source(tmp_path, records), "g2", G2)
    _run(db, "g2")
    hits = qsync.search("g2", "a musical instrument with strings", limit=5, db=db)
    query = [r for r in emulator.received if r["content"]["parts"][0]["text"].startswith("task:")]
    assert [q["content"]["parts"][0]["text"] for q in query] == [
        "task: search result | query: a musical instrument with strings"
    ]
    assert "taskType" not in query[0] and len(hits) == 5
    # The score of each hit is the cosine of the record's document vector with the query vector.
    q = _expected(G2, "task: search result | query: a musical instrument with strings")
    by_id = {r["id"]: r["text"] for r in records}
    for _, hit in hits.iterrows():
        assert hit["score"] == pytest.approx(float(_expected(G2, DOC + by_id[hit["id"]]) @ q), abs=1e-4)


def test_batch_mode_sends_one_instructed_request_per_record_at_ten_cents(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    emulator.batch_job_seconds = 0.2
    records = make_records(150)
    src = _source(tmp_path, records)
    db = tmp_path / "q.duckdb"
    create_job(src, collection="c", job="b", db=db, qdrant_path=tmp_path / "qdrant", dimensions=128,
                     model=G2, batch_mode=True)  # fmt: skip
    _run(db, "b", batch_mode_poll_s=0.1)
    assert emulator.requests["asyncBatchEmbedContent"] == 1 and emulator.requests["batchEmbedContents"] == 0
    assert set(emulator.texts_embedded) == {DOC + r["text"] for r in records}
    cost = qsync.cost("b", db=db).iloc[0]
    assert cost["cost_usd"] == pytest.approx(emulator.usd_metered, rel=0.01)
    assert cost["cost_usd"] == pytest.approx(emulator.tokens_by_model[G2] * 0.10 / 1e6, rel=0.01)
    _assert_vectors(tmp_path, "c", records, G2, DOC)


def test_the_spec_checks_dimensions_and_task_per_model(tmp_path: Path) -> None:
    src = _source(tmp_path, make_records(3))
    common: dict[str, Any] = {"collection": "c", "db": tmp_path / "q.duckdb", "embedder": "gemini"}
    for dims in (64, 4096):
        with pytest.raises(ConfigError, match="128 to 3072 dimensions"):
            build_spec(src, model=G2, dimensions=dims, **common)
    with pytest.raises(ConfigError, match="takes no Gemini task_type"):
        build_spec(src, model=G2, dimensions=768, task_type="RETRIEVAL_DOCUMENT", **common)
    spec, _ = build_spec(src, model=G2, dimensions=768, **common)
    assert spec.embedder.resolved_task_type == "document:v1"
    # -001 keeps its task type and its looser dimension check (64 worked before and still does).
    old, _ = build_spec(src, model=G1, dimensions=64, **common)
    assert old.embedder.resolved_task_type == "RETRIEVAL_DOCUMENT"


def test_the_cli_estimate_compares_the_two_models(tmp_path: Path, emulator: GeminiEmulator) -> None:
    records = make_records(200)
    records[0]["text"] = LONG_TEXT
    src = _source(tmp_path, records)
    env = qsync_env(GEMINI_API_KEY=SECRET, GOOGLE_GEMINI_BASE_URL=emulator.url)
    out = run_qsync("estimate", "--source", str(src), "--compare-models", "--json", env=env)
    assert out.returncode == 0, out.stderr
    rows = {r["model"]: r for r in json.loads(out.stdout)}
    assert set(rows) == {G1, G2}
    assert rows[G1]["skipped_records"] == 0 and rows[G2]["skipped_records"] == 0  # -001 cuts it into chunks
    assert rows[G1]["chunks"] > 200 and rows[G2]["chunks"] == 200
    actual = {G1: sum(count_tokens(r["text"]) for r in records),
              G2: sum(count_tokens(DOC + r["text"]) for r in records)}  # fmt: skip
    for model, price in ((G1, 0.15), (G2, 0.20)):
        assert rows[model]["tokens"] == pytest.approx(actual[model], rel=0.10)
        assert rows[model]["cost_usd"] == pytest.approx(rows[model]["tokens"] * price / 1e6)
    old_rule = run_qsync("estimate", "--source", str(src), "--chunk-tokens", "0", "--json", env=env)
    assert json.loads(old_rule.stdout)["skipped_records"] == 1  # --chunk-tokens 0: too long is a skip
    assert sum(emulator.texts_embedded.values()) == 0


def test_the_what_if_table_prices_each_model_with_its_limit_and_instruction() -> None:
    # A -001 job of 10 texts, 1,000 tokens; one distinct text of 9,000 tokens would be too long for both,
    # none in between: without chunking, the table must leave it out and add -2's instruction (5 tokens) to the others.
    table = what_if(1000, 10, 10, job_model=G1, text_tokens=[100] * 9 + [9000], chunking=False)
    table = table.set_index(["model", "mode"])
    table = table[table["dimensions"] == 768]
    assert table.loc[(G1, "standard"), "too_long"] == 1 and table.loc[(G2, "standard"), "too_long"] == 1
    share = 900 / 9900
    assert table.loc[(G1, "standard"), "cost_usd"] == pytest.approx(round(1000 * share) * 0.15 / 1e6)
    assert table.loc[(G2, "standard"), "cost_usd"] == pytest.approx((round(1000 * share) + 9 * 5) * 0.20 / 1e6)
    assert table.loc[(G2, "Batch Mode"), "cost_usd"] == pytest.approx(
        float(table["cost_usd"].loc[(G2, "standard")]) / 2
    )
    # A 6,000-token text fits -2 but not -001.
    mid = what_if(1000, 2, 2, job_model=G2, text_tokens=[10, 6000], chunking=False).set_index(["model", "mode"])
    too_long = mid["too_long"]  # one row per dimensions: each (model, mode) selects several
    assert int(too_long.loc[(G1, "standard")].iloc[0]) == 1 and int(too_long.loc[(G2, "standard")].iloc[0]) == 0
    # With chunking (the default), -001 cuts it into 3 texts of 2,048 tokens or fewer: every token priced, more points.
    cut = what_if(1000, 2, 2, job_model=G2, text_tokens=[10, 6000])
    row = {(r.model, r.mode, r.dimensions): r for r in cut.itertuples()}
    assert row[(G1, "standard", 768)].too_long == 1
    assert row[(G1, "standard", 768)].cost_usd == pytest.approx((1000 - 2 * 5) * 0.15 / 1e6)
    assert str(row[(G1, "standard", 3072)].qdrant_storage) != str(row[(G2, "standard", 3072)].qdrant_storage)


def test_the_what_if_table_of_a_media_job_lists_only_media_models_and_prices_media_apart() -> None:
    # 10 captioned images: 2,580 image tokens (258 each) of 2,640 in all, 60 of them captions and instructions.
    table = what_if(2640, 10, 10, job_model=G2, text_tokens=[1] * 10, media_tokens=2580)
    assert set(table["model"]) == {G2}  # gemini-embedding-001 embeds no images
    assert set(table["mode"]) == {"standard"}  # qsync's Batch Mode submits texts only
    row = table[table["dimensions"] == 768].iloc[0]
    assert row["cost_usd"] == pytest.approx((60 * 0.20 + 2580 * 0.45) / 1e6)


@pytest.mark.parametrize("model", [G2, G1])
def test_count_tokens_sends_one_content_per_text_as_the_sdk_makes_it(
    emulator: GeminiEmulator, model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """countTokens's body is built here and sent through the SDK's transport (the public method converts every text
    through pydantic models first): the request must be the one the SDK makes of one Content per text, each text as
    the model receives it, and the count their sum. An SDK without that transport gets the same request through its
    public method."""
    from types import SimpleNamespace

    from google.genai import types

    from qsync.embedders.gemini import GeminiEmbedder

    embedder = GeminiEmbedder(dimensions=128, model=model)
    bodies: list[dict[str, Any]] = []
    emulator.hooks.append(lambda verb, body: bodies.append(body) if verb == "countTokens" else None)
    texts = ["alpha beta", "gamma", "délta ünïcode " * 20]
    total = embedder.count_tokens(texts)
    sent = [embedder.sent_text(t) for t in texts]
    objects = [types.Content(parts=[types.Part(text=t)]) for t in sent]
    embedder._client.models.count_tokens(model=embedder.model, contents=objects)
    no_transport = SimpleNamespace(models=embedder._client.models)  # an SDK's client without `_api_client`
    monkeypatch.setattr(embedder.api, "_sdk", (no_transport, embedder.api.types))
    assert embedder.api.post(f"models/{model}:countTokens", {"contents": []}) is None
    assert embedder.count_tokens(texts) == total
    assert bodies[0] == bodies[1] == bodies[2] == {"contents": [{"parts": [{"text": t}]} for t in sent]}
    assert len(bodies) == 3  # the fallback made one request, not two

    def other_signature(*args: Any) -> Any:
        raise TypeError("request() takes 2 positional arguments")

    for transport in (SimpleNamespace(request=other_signature), SimpleNamespace(request=print, vertexai=True)):
        client = SimpleNamespace(models=no_transport.models, _api_client=transport)
        monkeypatch.setattr(embedder.api, "_sdk", (client, embedder.api.types))
        assert embedder.api.post(f"models/{model}:countTokens", {"contents": []}) is None  # nothing sent
    assert embedder.count_tokens(texts) == total and len(bodies) == 4  # the public method, once
    assert total == sum(count_tokens(t) for t in sent)


def test_an_sdk_that_cannot_start_stops_the_job_at_its_first_call_saying_why(
    tmp_path: Path, emulator: GeminiEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK is imported and its client made on a thread while the job is planned: a failure there is told by the
    first call that needs it, and the job stops (it cannot embed anything) with the SDK's own words."""
    import google.genai

    def broken(**kwargs: Any) -> Any:
        raise ValueError("this SDK cannot start here")

    monkeypatch.setattr(google.genai, "Client", broken)
    src = tmp_path / "g.jsonl"
    write_records(src, make_records(120))
    result = qsync.run(src, collection="c", job="g", db=tmp_path / "q.duckdb", qdrant_path=tmp_path / "qdrant",
                       dimensions=64, batch_size=50, settings=FAST)  # fmt: skip
    assert result.status == "failed"
    assert "google-genai) could not start: ValueError: this SDK cannot start here" in (result.message or "")
    assert emulator.requests["batchEmbedContents"] == 0
