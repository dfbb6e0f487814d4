"""Long texts are cut into chunks, a point each, never skipped for their length: through the real google-genai SDK
against the emulator, which refuses (400) any input over the model's limit as the real API does."""

from __future__ import annotations

import pydoc_data.topics
import re
from collections.abc import Iterator
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pypdf import PdfReader
from qsync_testing import FAST, REPO, ledger_rows, qdrant_points, run_qsync, sdk_emulator

import qsync
from qsync.app.jobs import create_job
from qsync.catalog.tokens import estimate_tokens, upper_tokens
from qsync.errors import ConfigError
from qsync.ledger.batches import point_key
from qsync.sink.shards import open_shard
from qsync.spec.target import point_id
from qsync.testing.emulator import GeminiEmulator
from qsync.testing.gemini_model import MAX_TOKENS_PER_TEXT, count_tokens

SECRET = "AIzaTEST-chunks-0123456789"
TOPICS = pydoc_data.topics.topics  # Python's reference, shipped with CPython (PSF licence): real long documents
LONG = sorted(TOPICS, key=lambda k: len(TOPICS[k]))[-6:]  # 20,000-62,000 characters each
SHORT = ["if", "while", "pass", "break"]


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[GeminiEmulator]:
    with sdk_emulator(monkeypatch, SECRET, window_s=1.0, seed=5) as emu:
        yield emu


def _frame(texts: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({"id": list(texts), "text": list(texts.values()), "topic": list(texts)})


def _sync(db: Path, texts: dict[str, str], **options: Any) -> dict[str, Any]:
    settings = options.pop("settings", FAST)
    qsync.run(
        _frame(texts), collection="docs", job="docs", db=db, qdrant_path=db.parent / "qdrant", dimensions=64,
        payload_columns=["topic"], settings=settings, **options,
    )  # fmt: skip
    return qsync.status(db=db)


def _points_of(db: Path) -> dict[str, tuple[Any, dict[str, Any]]]:
    return qdrant_points(db.parent / "qdrant", "docs")


def test_long_records_load_as_chunks_none_over_the_limit_together_covering_the_record(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    texts = {k: TOPICS[k] for k in [*SHORT, *LONG]}
    status = _sync(tmp_path / "q.duckdb", texts)
    assert status["status"] == "completed" and status["skipped_records"] == 0
    assert status["loaded_records"] == len(texts) and status["total_chunks"] > len(texts)
    assert max(map(count_tokens, emulator.texts_embedded)) <= MAX_TOKENS_PER_TEXT  # none refused, none over
    points = _points_of(tmp_path / "q.duckdb")
    assert len(points) == status["total_chunks"]
    for key in SHORT:  # a record that fits: one point, its own id, its payload as before chunking existed
        assert points[point_id(key)][1] == {"id": key, "topic": key}
    for key in LONG:
        text = texts[key]
        chunks = [p for _, p in points.values() if p["id"] == key]
        count = chunks[0]["chunk_count"]
        assert count > 1 and sorted(p["chunk_no"] for p in chunks) == list(range(count))
        covered = bytearray(len(text))
        for no in range(count):
            payload = points[point_id(point_key(key, no))][1]  # ids from (record id, chunk number)
            assert payload["topic"] == key and payload["chunk_no"] == no
            start, end = payload["char_start"], payload["char_end"]
            assert text[start:end].strip() == text[start:end]  # a passage, cut at whitespace
            assert not (start and text[start - 1].isalnum() and text[start].isalnum())  # never mid-word
            covered[start:end] = b"\x01" * (end - start)
        assert all(covered[i] or c.isspace() for i, c in enumerate(text))  # together they cover the record


def test_a_one_word_edit_repays_its_chunk_a_shortened_record_loses_its_surplus_a_deleted_one_loses_all(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    db = tmp_path / "q.duckdb"
    edited, shortened, deleted = LONG[-1], LONG[-2], LONG[-3]
    texts = {k: TOPICS[k] for k in LONG}
    first = _sync(db, texts)
    points_before = _points_of(db)
    counts = {k: next(p["chunk_count"] for _, p in points_before.values() if p["id"] == k) for k in LONG}
    paid_before = sum(emulator.texts_embedded.values())
    middle = len(texts[edited]) // 2
    word = re.compile(r"\b[a-z]{5,}\b").search(texts[edited], middle)
    assert word is not None
    texts[edited] = texts[edited][: word.start()] + "zebra" + texts[edited][word.end() :]
    texts[shortened] = texts[shortened][: len(texts[shortened]) // 3]
    del texts[deleted]
    second = _sync(db, texts, delete_missing=True)
    assert second["job"] == "docs#2" and second["status"] == "completed"
    paid = sum(emulator.texts_embedded.values()) - paid_before
    assert 1 <= paid <= 3  # the edited word's chunk (two if it shifted a boundary) and the shortened record's last
    points = _points_of(db)
    by_record: dict[str, list[int]] = {}
    for _, payload in points.values():
        by_record.setdefault(payload["id"], []).append(payload.get("chunk_no", 0))
    assert deleted not in by_record
    assert len(by_record[shortened]) < counts[shortened]
    assert sorted(by_record[shortened]) == list(range(len(by_record[shortened])))
    assert sorted(by_record[edited]) == list(range(counts[edited]))
    assert second["deleted_records"] == 1 and len(points) == second["total_chunks"]
    assert first["total_chunks"] - second["total_chunks"] == counts[deleted] + counts[shortened] - len(
        by_record[shortened]
    )
    # What the ledger says the collection holds is what it holds (verify knows chunks), and a lost chunk is repaired
    # under its own id.
    assert qsync.verify("docs#2", db=db).ok
    lost = point_id(point_key(edited, 1))
    with open_shard(tmp_path / "qdrant" / "docs") as shard:
        shard.durable(shard.update(0, "delete", [lost]))
    report = qsync.verify("docs#2", db=db, repair=True)
    assert (report.missing, report.repaired, report.ok) == (1, 1, True) and lost in _points_of(db)
    assert qsync.verify("docs#2", db=db).ok


def test_search_answers_records_from_a_passage_in_their_middle(tmp_path: Path) -> None:
    db = tmp_path / "q.duckdb"
    texts = {k: TOPICS[k] for k in [*SHORT, *LONG]}
    qsync.run(_frame(texts), collection="docs", job="docs", db=db, qdrant_path=tmp_path / "qdrant", embedder="hash")
    target = LONG[2]
    payloads = [p for _, p in _points_of(db).values() if p["id"] == target]
    middle = next(p for p in payloads if p["chunk_no"] == p["chunk_count"] // 2)
    passage = texts[target][middle["char_start"] : middle["char_end"]]
    query = " ".join(passage.split()[40:90])
    hits = qsync.search("docs", query, limit=3, db=db)
    assert hits["id"].iloc[0] == target and hits["id"].is_unique
    assert hits["chunk"].iloc[0] == f"{middle['chunk_no'] + 1}/{middle['chunk_count']}"
    assert query in " ".join(hits["text"].iloc[0].split())  # the passage, not the whole record
    chunks = qsync.search("docs", query, limit=8, chunks=True, db=db)
    assert len(chunks) == 8 and not chunks["id"].is_unique  # a row per chunk: a long record comes back more than once


def test_chunk_options_sizes_overlap_and_the_old_rule(tmp_path: Path) -> None:
    db = tmp_path / "q.duckdb"
    text = TOPICS[LONG[0]]
    frame = _frame({"doc": text, "short": "a short text"})
    qsync.run(frame, collection="c", job="small", db=db, qdrant_path=tmp_path / "qdrant", embedder="hash",
              chunk_tokens=300, chunk_overlap=50)  # fmt: skip
    rows = ledger_rows(db, "SELECT text, chunk_no FROM manifest WHERE job_id = 'small' AND record_id = 'doc' "
                           "ORDER BY chunk_no")  # fmt: skip
    assert len(rows) > 10 and max(upper_tokens(t) for t, _ in rows) <= 300
    shared = [a.split()[-1] in b for (a, _), (b, _) in pairwise(rows)]
    assert sum(shared) >= len(shared) * 0.8  # neighbours overlap
    # --chunk-tokens 0: the rule before chunking, a text over the limit is skipped with its reason.
    result = run_qsync("run", "--source", _write(tmp_path, frame), "--collection", "c", "--job", "old", "--db", str(db),
                       "--embedder", "hash", "--chunk-tokens", "0")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert ledger_rows(db, "SELECT record_id, reason FROM skipped WHERE job_id = 'old'")[0][1].startswith(
        "text too long"
    )
    with pytest.raises(ConfigError, match="at least 16"):
        qsync.run(frame, collection="c", job="bad", db=db, embedder="hash", chunk_tokens=5)
    with pytest.raises(ConfigError, match="enrichment works on whole records"):
        create_job(frame, collection="c", job="enrich", db=db, qdrant_path=tmp_path / "qdrant", embedder="hash",
                   enrich={"prompt": "Summarise: {text}"})  # fmt: skip
    assert not ledger_rows(db, "SELECT * FROM jobs WHERE job_id = 'enrich'")  # nothing half-planned


def _write(tmp_path: Path, frame: pd.DataFrame) -> str:
    path = tmp_path / "records.parquet"
    frame.to_parquet(path)
    return str(path)


def test_the_upper_estimate_bounds_the_emulators_tokenizer_and_never_exceeds_the_bytes() -> None:
    samples = [
        *TOPICS.values(),
        "naïve café 日本語の文章 😀🎉 ½ ©",
        "1234567890 " * 50,
        "a, b; c. d! " * 40,
        "x" * 5000,
    ]
    for text in samples:
        for piece in (text, text[: len(text) // 3], text[-500:]):
            assert count_tokens(piece) <= upper_tokens(piece) <= len(piece.encode("utf-8"))


def test_settings_resume_as_stored(tmp_path: Path) -> None:
    db = tmp_path / "q.duckdb"
    frame = _frame({"doc": TOPICS[LONG[0]]})
    create_job(frame, collection="c", job="j", db=db, qdrant_path=tmp_path / "qdrant", embedder="hash",
               chunk_tokens=500)  # fmt: skip
    with pytest.raises(Exception, match="chunk tokens"):  # a resume with another size is another job
        qsync.run(frame, collection="c", job="j", db=db, qdrant_path=tmp_path / "qdrant", embedder="hash",
                  chunk_tokens=400)  # fmt: skip
    result = qsync.resume("j", db=db, settings=replace(FAST, texts_per_minute=None))
    assert result.status == "completed"


def test_a_chunk_the_api_refuses_is_skipped_with_its_number_and_the_rest_of_the_record_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "q.duckdb"
    text = TOPICS[LONG[0]]
    poison = "qsync-poison-word"
    middle = text.index(" ", len(text) // 2)
    texts = {"doc": text[:middle] + f" {poison} " + text[middle:], "short": "a short text"}
    with sdk_emulator(monkeypatch, SECRET, window_s=1.0, poison=(poison,)):
        status = _sync(db, texts)
    [reason] = list(qsync.skipped("docs", db=db)["reason"])
    count = status["total_chunks"] - 1
    assert re.match(rf"chunk \d+ of {count}: refused by the embedder: ", reason), reason
    assert (status["loaded_records"], status["skipped_records"]) == (1, 1)  # the record is incomplete: skipped
    points = _points_of(db)
    assert len(points) == status["total_chunks"] - 1  # every other chunk of it is in the collection


def test_a_pdf_longer_than_the_model_reads_is_cut_into_page_windows(tmp_path: Path, emulator: GeminiEmulator) -> None:
    db, qdrant = tmp_path / "q.duckdb", tmp_path / "qdrant"
    source = REPO / "data" / "documents.csv"  # five PDFs; one has 8 pages, two more than gemini-embedding-2 reads
    options: dict[str, Any] = {"collection": "pdfs", "db": db, "qdrant_path": qdrant, "model": "gemini-embedding-2",
                               "dimensions": 128, "text_column": "title", "document_column": "document"}  # fmt: skip
    qsync.run(source, job="pdfs", settings=FAST, **options)
    status = qsync.status("pdfs", db=db)
    assert (status["loaded_records"], status["skipped_records"], status["total_chunks"]) == (5, 0, 6)
    windows = sorted(
        (p["page_start"], p["page_end"], p["chunk_no"], p["chunk_count"])
        for _, p in qdrant_points(qdrant, "pdfs").values()
        if p["id"] == "field_guide_8_pages"
    )
    assert windows == [(1, 6, 0, 2), (7, 8, 1, 2)]  # pages 1-6 and 7-8, each a chunk embedded with its caption
    pages = sum(len(PdfReader(path).pages) for path in (REPO / "data" / "documents").glob("*.pdf"))
    assert emulator.tokens_by_modality["DOCUMENT"] == 258 * pages  # every page of every PDF paid once
    # The old rule with --chunk-tokens 0: skipped with its reason.
    qsync.run(source, job="pdfs-whole", chunk_tokens=0, settings=FAST, **{**options, "collection": "pdfs2"})
    assert "has too many pages (8;" in qsync.skipped("pdfs-whole", db=db)["reason"].iloc[0]


def test_batch_mode_submits_the_chunks_like_any_texts(tmp_path: Path, emulator: GeminiEmulator) -> None:
    emulator.batch_job_seconds = 0.3
    db = tmp_path / "q.duckdb"
    texts = {k: TOPICS[k] for k in [*SHORT, *LONG[:3]]}
    status = _sync(db, texts, batch_mode=True, settings=replace(FAST, batch_mode_poll_s=0.1))
    assert status["status"] == "completed" and status["total_chunks"] > len(texts)
    assert emulator.requests["asyncBatchEmbedContent"] == 1 and emulator.requests["batchEmbedContents"] == 0
    assert len(emulator.texts_embedded) == status["batch_mode_texts"] == status["total_chunks"]
    assert len(_points_of(db)) == status["total_chunks"]


def test_a_text_the_model_took_whole_before_is_not_cut_and_paid_again(tmp_path: Path) -> None:
    db = tmp_path / "q.duckdb"
    text = TOPICS["types"][:8000]  # ~2,000 tokens at ~4 bytes each: one point before chunking; over 2,048 by the bound
    assert estimate_tokens(text) <= 2048 < upper_tokens(text)
    frame = _frame({"doc": text, "short": "a short text"})
    options: dict[str, Any] = {"collection": "c", "db": db, "qdrant_path": tmp_path / "qdrant", "embedder": "hash"}
    qsync.run(frame, job="before", chunk_tokens=0, **options)  # loaded whole, as before chunking existed
    qsync.run(frame, job="after", **options)  # the default now: its vector is cached, so the model took it whole
    after = qsync.status("after", db=db)
    assert (after["unchanged_records"], after["total_chunks"], after["embedded_texts"]) == (2, 2, 0)
    qsync.run(frame, job="smaller", chunk_tokens=512, **options)  # a size the user asks for cuts regardless
    assert qsync.status("smaller", db=db)["total_chunks"] > 2
