"""Multimodal jobs end to end, through the real google-genai SDK against the emulator: a table of image
paths with captions is planned (bad files skipped with their reasons), embedded, re-synced (a changed file
is paid again, an unchanged one never), and searched with text; DataFrame bytes and PDFs too."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from qsync_testing import REPO, qdrant_points, sdk_emulator
from test_media import pdf, png

import qsync
from qsync.app import reading
from qsync.app.jobs import prepare
from qsync.engine.runner import RunResult
from qsync.errors import ConfigError
from qsync.input.media import MAX_MEDIA_BYTES
from qsync.ledger.ledger import Ledger
from qsync.spec.settings import RunSettings
from qsync.spec.target import point_id
from qsync.testing.emulator import GeminiEmulator
from qsync.testing.gemini_model import TOKENS_PER_IMAGE, count_tokens, emulated_vector, media_key

SECRET = "AIzaTEST-secret-key-0123456789"
G2 = "gemini-embedding-2"
FAST = RunSettings(concurrency=2, retry_base_s=0.01, retry_max_s=0.05, heartbeat_s=0.2, texts_per_minute=10**7)
GOOD = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[GeminiEmulator]:
    with sdk_emulator(monkeypatch, SECRET, window_s=1.0, seed=5) as emu:
        yield emu


@pytest.fixture
def table(tmp_path: Path) -> Path:
    """A JSON-lines table of image paths relative to its folder, three good and five bad."""
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    for name, rgb in GOOD.items():
        (images / f"{name}.png").write_bytes(png(rgb))
    (images / "cut.png").write_bytes(png((9, 9, 9))[:-20])
    (images / "slides.png").write_bytes(pdf(2))
    with (images / "huge.png").open("wb") as f:  # sparse: 21 MB on paper, nothing on disk
        f.write(png((1, 2, 3)))
        f.truncate(MAX_MEDIA_BYTES + 1024**2)
    rows: list[dict[str, str | None]] = [
        {"id": name, "caption": f"a {name} square", "image": f"images/{name}.png"} for name in GOOD
    ]
    rows += [
        {"id": "cut", "caption": "a partial download", "image": "images/cut.png"},
        {"id": "gone", "caption": "a file that is not there", "image": "images/gone.png"},
        {"id": "huge", "caption": "too big", "image": "images/huge.png"},
        {"id": "slides", "caption": "a PDF named .png", "image": "images/slides.png"},
        {"id": "none", "caption": "no image at all", "image": None},
    ]
    src = tmp_path / "data" / "photos.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return src


def _run(src: Path | pd.DataFrame, tmp_path: Path, **options: Any) -> RunResult:
    opts: dict[str, Any] = {
        "collection": "photos", "db": tmp_path / "q.duckdb", "qdrant_path": tmp_path / "qdrant",
        "model": G2, "dimensions": 128, "text_column": "caption", "image_column": "image", "batch_size": 4,
        **options,
    }  # fmt: skip
    result: RunResult = qsync.run(src, settings=FAST, **opts)
    assert result.ok, result.message
    return result


def _rows(tmp_path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with Ledger(tmp_path / "q.duckdb", create=False) as ledger:
        return [tuple(r) for r in ledger.query_rows(sql, list(params))]


def _embed_calls(emu: GeminiEmulator) -> int:
    return int(emu.stats()["requests"].get("batchEmbedContents", 0))


def _expected(caption: str, data: bytes, mime: str = "image/png") -> np.ndarray:
    vector = emulated_vector(G2, "title: none | text: " + caption + media_key(mime, data), 128)
    unit: np.ndarray = vector / np.linalg.norm(vector)
    return unit


def test_an_image_job_loads_the_good_files_and_skips_each_bad_one_with_its_reason(
    tmp_path: Path, table: Path, emulator: GeminiEmulator
) -> None:
    result = _run(table, tmp_path)
    points = qdrant_points(tmp_path / "qdrant", "photos")
    assert sorted(p["id"] for _, p in points.values()) == sorted(GOOD)
    for name, rgb in GOOD.items():
        vector, _ = points[point_id(name)]
        np.testing.assert_allclose(vector, _expected(f"a {name} square", png(rgb)), atol=1e-5)
    skipped = qsync.skipped(result.job_id, db=tmp_path / "q.duckdb")
    reasons = dict(zip(skipped["record_id"], skipped["reason"], strict=True))
    assert set(skipped["stage"]) == {"plan"}
    assert "corrupt PNG" in reasons["cut"]
    assert "gone.png does not exist" in reasons["gone"]
    assert "too big" in reasons["huge"]
    assert "not a PNG or JPEG image" in reasons["slides"] and "application/pdf" in reasons["slides"]
    assert reasons["none"] == "image is missing"
    [(tokens, media_tokens, cost)] = _rows(
        tmp_path, "SELECT sum(tokens), sum(media_tokens), sum(cost_usd) FROM batches WHERE job_id = ?", result.job_id
    )
    captions = sum(count_tokens(f"title: none | text: a {name} square") for name in GOOD)
    assert tokens == 3 * TOKENS_PER_IMAGE + captions  # the API's total, exactly
    # The SDK drops the per-modality split the API sends: qsync splits the exact total by its estimates.
    assert media_tokens == pytest.approx(3 * TOKENS_PER_IMAGE, rel=0.02)
    assert cost == pytest.approx(media_tokens * 0.45e-6 + (tokens - media_tokens) * 0.20e-6)


def test_skips_are_summed_up_by_kind_not_one_line_per_missing_file(
    tmp_path: Path, table: Path, emulator: GeminiEmulator
) -> None:
    from qsync.ledger.queries import skip_reasons
    from qsync.notebook.inspector import BatchInspector

    with table.open("a") as rows:  # two more missing files: three records, one kind of reason
        for name in ("gone2", "gone3"):
            rows.write(json.dumps({"id": name, "caption": "not there either", "image": f"images/{name}.png"}) + "\n")
    result = _run(table, tmp_path)
    with Ledger(tmp_path / "q.duckdb", create=False) as ledger:
        kinds = skip_reasons(ledger, result.job_id)
    assert kinds == {"file does not exist": 3, "file is a corrupt PNG": 1, "file is not a PNG or JPEG image": 1,
                     "file is too big": 1, "image is missing": 1}  # fmt: skip
    summary = BatchInspector(result.job_id, db=tmp_path / "q.duckdb").skips.value.split("</table>")[0]
    assert summary.count("<tr>") == 5, "one row a kind, not one a file"
    assert ">file does not exist</td><td style='text-align:right;padding:2px 12px'>3</td>" in summary
    assert "gone.png does not exist" in summary, "with one of its reasons whole"
    assert "overflow-x:auto" in summary, "a wide table scrolls"


def test_a_resync_with_nothing_to_embed_still_reads_as_an_image_job(
    tmp_path: Path, table: Path, emulator: GeminiEmulator
) -> None:
    # 04 run twice: the re-sync embeds nothing. Its estimate's footnote said "priced at $0.20 per 1M tokens" (the text
    # price alone) and its modality table "all text" beside 0 image tokens.
    from qsync.app.versus import versus

    _run(table, tmp_path)
    again = _run(table, tmp_path)
    assert qsync.status(again.job_id, db=tmp_path / "q.duckdb")["batches_total"] == 0
    shown = versus(again.job_id, db=tmp_path / "q.duckdb")
    assert shown is not None and "with nothing to embed;" in shown.footnote and "cached" not in shown.footnote
    assert "priced at $0.45 per 1M tokens of images and PDF pages, $0.20 of text" in shown.footnote
    modality = reading.tokens_by_modality(again.job_id, db=tmp_path / "q.duckdb")
    assert list(modality["tokens"]) == [0, 0] and modality["split"].isna().all()


def test_a_resync_pays_again_only_for_the_changed_file_and_search_finds_images_by_text(
    tmp_path: Path, table: Path, emulator: GeminiEmulator
) -> None:
    _run(table, tmp_path)
    calls = _embed_calls(emulator)
    assert calls == 1  # three images within one request

    unchanged = _run(table, tmp_path)
    assert _embed_calls(emulator) == calls  # nothing changed: no call at all
    assert unchanged.job_id == "photos:photos#2"

    (table.parent / "images" / "green.png").write_bytes(png((0, 128, 0)))
    changed = _run(table, tmp_path)
    assert _embed_calls(emulator) == calls + 1
    assert emulator.stats()["texts_embedded"] == 4  # red, green, blue, then the new green alone
    assert _rows(tmp_path, "SELECT sum(embedded_texts) FROM batches WHERE job_id = ?", changed.job_id) == [(1,)]
    vector, _ = qdrant_points(tmp_path / "qdrant", "photos")[point_id("green")]
    np.testing.assert_allclose(vector, _expected("a green square", png((0, 128, 0))), atol=1e-5)

    hits = qsync.search(changed.job_id, "a red bicycle", db=tmp_path / "q.duckdb")
    assert sorted(hits["id"]) == sorted(GOOD)
    received = list(emulator.received)[-1]
    assert received["content"]["parts"][0]["text"].startswith("task: search result | query: ")


def test_a_dataframe_of_pdf_bytes_is_kept_beside_the_store_and_a_long_pdf_is_cut_into_page_windows(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    frame = pd.DataFrame(
        {"id": [1, 2, 3], "doc": [pdf(2), pdf(9), b"%PDF-1.4 cut"], "text": ["two pages", "nine pages", None]}
    )
    result = _run(frame, tmp_path, image_column=None, document_column="doc", text_column="text")
    points = qdrant_points(tmp_path / "qdrant", "photos")
    vector, _ = points[point_id("1")]
    np.testing.assert_allclose(vector, _expected("two pages", pdf(2), "application/pdf"), atol=1e-5)
    windows = sorted((p["page_start"], p["page_end"]) for _, p in points.values() if p["id"] == 2)
    assert windows == [(1, 6), (7, 9)] and len(points) == 3  # the 9 pages: two windows, each a point
    reasons = list(qsync.skipped(result.job_id, db=tmp_path / "q.duckdb")["reason"])
    assert len(reasons) == 1 and "corrupt PDF" in reasons[0]
    kept = sorted(p.read_bytes() for p in (tmp_path / "q.duckdb.media").iterdir())
    assert pdf(2) in kept and len(kept) == 3  # the two-page PDF, and the nine-page one's two windows
    assert emulator.tokens_by_modality["DOCUMENT"] == 258 * (2 + 9)  # every page paid once


def test_media_columns_need_gemini_embedding_2(tmp_path: Path, table: Path, emulator: GeminiEmulator) -> None:
    with pytest.raises(ConfigError, match="gemini-embedding-2"):
        _run(table, tmp_path, model="gemini-embedding-001")
    with pytest.raises(ConfigError, match="gemini-embedding-2"):
        _run(table, tmp_path, model=None, embedder="hash")
    with pytest.raises(ConfigError, match=r"Batch Mode yet.*Run the job without Batch Mode"):
        _run(table, tmp_path, batch_mode=True)
    assert not (tmp_path / "q.duckdb").exists() or qsync.jobs(db=tmp_path / "q.duckdb").empty  # nothing planned


def test_a_job_without_captions_embeds_the_images_alone(tmp_path: Path, table: Path, emulator: GeminiEmulator) -> None:
    _run(table, tmp_path, text_column=None)
    vector, _ = qdrant_points(tmp_path / "qdrant", "photos")[point_id("red")]
    expected = emulated_vector(G2, media_key("image/png", png(GOOD["red"])), 128)
    np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), atol=1e-5)


def test_a_parquet_blob_column_holds_the_images_themselves(tmp_path: Path, emulator: GeminiEmulator) -> None:
    src = tmp_path / "photos.parquet"
    pd.DataFrame(
        {"id": ["red", "cut"], "image": [png(GOOD["red"]), png(GOOD["red"])[:-20]], "caption": ["a", "b"]}
    ).to_parquet(src)
    result = _run(src, tmp_path)
    vector, _ = qdrant_points(tmp_path / "qdrant", "photos")[point_id("red")]
    np.testing.assert_allclose(vector, _expected("a", png(GOOD["red"])), atol=1e-5)
    assert "corrupt PNG" in qsync.skipped(result.job_id, db=tmp_path / "q.duckdb")["reason"][0]


# The estimate counts captions at ~4 bytes a token (calibrated here with the emulator's countTokens, as a
# key is set) and each image or PDF page at pricing.json's figure; the emulator meters its own tokenizer
# and its own per-image count. Media are ~95% of the sample's tokens: an estimate that counted captions
# alone would be off by ~95%, so 5% is a tolerance that still catches it.
TOLERANCE = 0.05


@pytest.mark.parametrize(
    ("table", "columns"),
    [
        ("images.csv", {"text_column": "caption", "image_column": "image"}),
        ("documents.csv", {"text_column": "title", "image_column": None, "document_column": "document"}),
    ],
)
def test_the_estimates_of_the_sample_set_count_media_within_five_percent_of_the_meter(
    tmp_path: Path, emulator: GeminiEmulator, table: str, columns: dict[str, Any]
) -> None:
    source = REPO / "data" / table
    db = tmp_path / "q.duckdb"
    before = qsync.estimate(source, model=G2, dimensions=128, db=db, **columns)
    # Planned as a notebook plans (the estimate recorded with the job), then run.
    job = prepare(source, collection="media", db=db, qdrant_path=tmp_path / "qdrant", model=G2, dimensions=128,
                  batch_size=8, **columns)  # fmt: skip
    result = qsync.resume(job, db=db, settings=FAST)
    assert result.ok, result.message
    metered = {"tokens": emulator.tokens_metered, "usd": emulator.usd_metered}
    media = emulator.tokens_by_modality["IMAGE"] + emulator.tokens_by_modality["DOCUMENT"]
    assert media > 0
    assert before["media_tokens"] == media  # the same per-image and per-page figures as the emulator's
    assert before["tokens"] == pytest.approx(metered["tokens"], rel=TOLERANCE)
    assert before["cost_usd"] == pytest.approx(metered["usd"], rel=TOLERANCE)
    assert before["cost_usd_batch_mode"] is None  # Batch Mode takes no media job
    assert "PDF pages at 258" in before["tokens_basis"]
    # The estimate recorded at plan time agrees, and so does the job's own ledger.
    recorded = reading.recorded_estimate(result.job_id, db=db)
    assert recorded is not None and recorded["media_tokens"] == media
    assert recorded["tokens"] == pytest.approx(metered["tokens"], rel=TOLERANCE)
    assert recorded["cost_usd"] == pytest.approx(metered["usd"], rel=TOLERANCE)
    versus = reading.estimate_vs_actual(result.job_id, db=db).set_index("figure")
    assert abs(float(versus["error_pct"].loc["cost_usd"])) < TOLERANCE * 100
    # The SDK drops the API's per-modality split: qsync's split of each batch is marked as estimated.
    batches = qsync.batches(result.job_id, db=db)
    assert batches["media_tokens"].sum() == pytest.approx(media, rel=0.02)
    assert batches.loc[batches["media_tokens"] > 0, "media_tokens_estimated"].all()


def test_estimating_media_needs_a_model_that_embeds_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="text only"):
        qsync.estimate(REPO / "data" / "images.csv", text_column="caption", image_column="image", db=tmp_path / "q")


def test_the_search_box_answers_enter_and_shows_a_media_jobs_hits_as_thumbnails(
    tmp_path: Path, table: Path, emulator: GeminiEmulator
) -> None:
    from qsync.notebook import SearchBox

    result = _run(table, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # Text.on_submit is deprecated in ipywidgets 8
        box = SearchBox(result.job_id, db=tmp_path / "q.duckdb", limit=3)
    assert not box.query.continuous_update
    # It searches a collection, which other jobs may share (04's images and PDFs): its title names the collection.
    assert "<b>Search collection photos</b>" in box.title.value and result.job_id in box.title.value
    assert "<b>Search nothing-yet</b>" in SearchBox("nothing-yet", db=tmp_path / "q.duckdb").title.value
    box.query.value = "a red square"  # what the browser sends on Enter
    assert box.results.value.count('class="qsync-thumbnail"') == 3
    assert box.results.value.count('<img src="data:image/jpeg;base64,') == 3
    assert re.search(r"score \d\.\d{3}<", box.results.value), "a score as everywhere: formatting.score"
    (table.parent / "images" / "red.png").unlink()  # gone since the run: a sentence, not a broken image
    box.button.click()
    assert "red.png is gone" in box.results.value and box.results.value.count("<img") == 2
