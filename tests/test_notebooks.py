"""The notebook layer: notebooks executed headlessly, widgets driven from Python, a kernel that dies."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient
from qsync_testing import (
    REPO,
    EmulatorProcess,
    count_shard_loads,
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
from qsync.app import reading
from qsync.app.jobs import create_job, make_runner
from qsync.app.session import JobHandle
from qsync.embedders.hashing import HashingEmbedder, hash_vector
from qsync.engine.events import BatchFinished
from qsync.formatting import gigabytes, usd
from qsync.notebook import BatchInspector, CostPanel, JobMonitor, Launcher, RateMeter
from qsync.notebook.costs import versus_html
from qsync.notebook.form import parse_budget
from qsync.notebook.formatting import humanize, show
from qsync.spec.settings import RunSettings
from qsync.spec.target import point_id

NOTEBOOKS = REPO / "notebooks"


def _execute(name: str, env: dict[str, str]) -> nbformat.NotebookNode:
    nb: nbformat.NotebookNode = nbformat.read(NOTEBOOKS / name, as_version=4)  # type: ignore[no-untyped-call]
    old = dict(os.environ)
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
        ).execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    return nb


def _text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.extend(str(v) for v in out.get("data", {}).values())
    return "\n".join(parts)


def _printed_lines_fit(nb: nbformat.NotebookNode) -> None:
    """What the cells print fits in PRINTED_WIDTH characters a line: JupyterLab breaks a longer line anywhere, even
    mid-word ("stay in t / he cache")."""
    from qsync.formatting import PRINTED_WIDTH

    long = [line for cell in nb.cells for out in cell.get("outputs", []) if out.get("output_type") == "stream"
            for line in out.get("text", "").splitlines() if len(line) > PRINTED_WIDTH]  # fmt: skip
    assert not long, f"printed lines over {PRINTED_WIDTH} characters: {long}"


def _widget_text(nb: nbformat.NotebookNode) -> str:
    """Outputs plus the widget state nbclient stores (HTML widgets' values live there)."""
    import json

    return _text(nb) + json.dumps(nb.metadata.get("widgets", {}))


@pytest.mark.slow
def test_every_notebook_runs_top_to_bottom_headless(tmp_path: Path) -> None:
    env = {"QSYNC_NB_DB": str(tmp_path / "nb.duckdb"), "QSYNC_NB_DIMENSIONS": "64", "QSYNC_NB_SAMPLE": "60"}
    # Before any job exists, 02 and 03 say so in a sentence (no StoreError traceback).
    empty = _widget_text(_execute("02_inspect_batches.ipynb", env))
    assert "No jobs in" in empty and "Traceback" not in empty and "StoreError" not in empty
    assert "No jobs in" in _widget_text(_execute("03_cost_analysis.ipynb", env))
    first = _execute("01_backfill.ipynb", {**env, "QSYNC_NB_AUTOSTART": "1"})
    assert "wordnet:wordnet_sample: completed, 5,000 records this run in" in _text(first)
    info = qsync.status(db=tmp_path / "nb.duckdb")
    assert info["status"] == "completed" and info["processed_records"] == 5000
    assert "score" in _widget_text(first), "01 searches the collection once the job completed"
    second = _widget_text(_execute("02_inspect_batches.ipynb", env))
    assert "wordnet:wordnet_sample" in second and "page 1 of 3" in second and "NaN" not in second
    third = _execute("03_cost_analysis.ipynb", env)
    for nb in (first, third):
        _printed_lines_fit(nb)
    text = _widget_text(third)
    assert "estimate (plan time)" in text and "Batch Mode" in text and "cost in Batch Mode" in text
    # The what-if of a free job counts ~4 bytes a token, the comparison below with Gemini: it says so.
    assert "at ~4 bytes a token; a model comparison counts with Gemini" in text
    estimate = _widget_value(third, "estimate_table(before)")
    assert "cost_usd" not in estimate and not re.search(r"\d\.\d{7,}", estimate), "figures a person reads"
    images = [o for c in third.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "03 draws its plot"
    # The comparison: the sample's cost said first, then a row per model and size, the full size keeping 100%.
    assert "A sample of 60 records and 3 queries" in _text(third)
    compared = _widget_text(third)
    assert "neighbours kept" in compared and "gemini-embedding-2" in compared and "100%" in compared
    assert "nothing paid now" in compared, "the first (empty-DB) run of 03 embedded the sample: this one reuses it"


def _widget_value(nb: nbformat.NotebookNode, cell_text: str) -> str:
    """The value of the widget a cell displayed (an HTML widget's HTML), from the state nbclient stored."""
    [cell] = [c for c in nb.cells if c.cell_type == "code" and cell_text in c.source]
    [view] = [o["data"]["application/vnd.jupyter.widget-view+json"] for o in cell.outputs if "data" in o]
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    return str(state[view["model_id"]]["state"]["value"])


def test_the_images_notebook_loads_the_sample_skips_the_bad_rows_and_shows_thumbnails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GEMINI_BASE_URL"):
        monkeypatch.delenv(key, raising=False)  # no key: the notebook starts the emulator itself
    db = tmp_path / "nb.duckdb"
    nb = _execute("04_images.ipynb", {"QSYNC_NB_DB": str(db)})  # 768 dimensions, as a user runs it
    _printed_lines_fit(nb)
    text = _widget_text(nb)
    assert "Gemini is emulated locally" in text and "Traceback" not in text
    images, documents = qsync.status("media:images", db=db), qsync.status("media:documents", db=db)
    assert (images["status"], images["loaded_records"], images["skipped_records"]) == ("completed", 31, 3)
    assert (documents["status"], documents["loaded_records"], documents["skipped_records"]) == ("completed", 5, 0)
    assert documents["total_chunks"] == 6  # the 8-page PDF: two windows of pages
    reasons = " | ".join(qsync.skipped("media:images", db=db)["reason"])
    assert "no_such_photo.jpg does not exist" in reasons and "corrupt JPEG" in reasons
    assert "not_an_image.jpg is not a PNG or JPEG image" in reasons
    assert "no_such_photo.jpg does not exist" in text, "the notebook shows the skips with their reasons"
    # The plan-time estimate counted the images: it is near what the job spent (emulator: exactly metered).
    versus = reading.estimate_vs_actual("media:images", db=db).set_index("figure")
    assert abs(float(versus["error_pct"].loc["cost_usd"])) < 5 and "estimated by qsync" in text
    assert "text / media split</th>" in text and "cost_usd</th>" not in text, "the modality table's headers read"
    # "a cat": the two best hits are the photo of Chelsea the cat, an inline thumbnail, and the cat-care
    # PDF, shown as a page (offline, the emulator ranks by caption words: both captions say "cat").
    top = _widget_value(nb, '"a cat"').split('class="qsync-thumbnail"')[1:3]
    [photo] = [card for card in top if "Chelsea the cat" in card]
    assert '<img src="data:image/jpeg;base64,' in photo
    [page] = [card for card in top if "Looking after a house cat" in card]
    assert "PDF, 1 page" in page and "<img" not in page
    espresso = _widget_value(nb, '"a cup of espresso"').split('class="qsync-thumbnail"')[1:3]
    assert any("A cup of espresso" in card and "<img" in card for card in espresso)


def test_the_long_documents_notebook_cuts_chunks_and_finds_records_by_a_passage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GEMINI_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    db = tmp_path / "nb.duckdb"
    nb = _execute("05_long_documents.ipynb", {"QSYNC_NB_DB": str(db)})
    _printed_lines_fit(nb)
    text = _widget_text(nb)
    assert "Traceback" not in text and "79 records loaded as" in text
    status = qsync.status("reference:python_reference", db=db)
    assert (status["status"], status["loaded_records"], status["skipped_records"]) == ("completed", 79, 0)
    assert status["total_chunks"] > 79
    compared = _widget_value(nb, "compare_models(SOURCE").replace(",", "")
    assert f">{status['total_chunks']}<" in compared  # the estimate cut the chunks the run cut
    assert "time of work</th>" in compared and "expected_minutes" not in compared, "a duration is not headed minutes"
    hits = _widget_value(nb, "iterable of a for loop")
    assert re.search(r">\d+/\d+<", hits), "a hit is a passage of a long record, labelled with its chunk"


def _launcher(tmp_path: Path, n: int = 1500, **defaults: Any) -> Launcher:
    src = tmp_path / "src.jsonl"
    if not src.exists():
        write_records(src, make_records(n))
    return Launcher(source=str(src), collection="c", db=tmp_path / "q.duckdb", dimensions=32, batch_size=50,
                    concurrency=2, **defaults)  # fmt: skip


def test_the_form_offers_the_source_columns_and_only_the_embedders_fields(tmp_path: Path) -> None:
    launcher = _launcher(tmp_path)
    assert launcher.form.id_column.value == "id" and launcher.form.text_column.value == "text"
    assert (
        set(launcher.form.payload_columns.options) == {"id", "text", "n"} and launcher.form.payload_columns.value == ()
    )
    assert launcher.form.gemini_fields.layout.display == "none", "no model or rate fields for the hashing embedder"
    launcher.form.embedder.value = "gemini"
    assert launcher.form.gemini_fields.layout.display == ""
    assert launcher.form.media_fields.layout.display == "none", "media columns need gemini-embedding-2"
    assert launcher.form.spec_options()["image_column"] is None
    launcher.form.model.value = "gemini-embedding-2"
    assert launcher.form.media_fields.layout.display == ""
    assert [v for _, v in launcher.form.image_column.options] == ["", "id", "text", "n"]
    launcher.form.image_column.value = "text"
    assert launcher.form.spec_options()["image_column"] == "text"
    assert launcher.form.spec_options()["document_column"] is None
    assert parse_budget("") is None and parse_budget(" $2.50 ") == 2.5
    with pytest.raises(ValueError, match="empty for no cap"):
        parse_budget("0")


def test_start_pause_resume_from_the_widgets_answer_at_once(tmp_path: Path) -> None:
    launcher = _launcher(tmp_path, embedder_options={"latency_s": 0.1})
    launcher.form.payload_columns.value = ("n",)
    started = time.monotonic()
    launcher.start_button.click()
    assert time.monotonic() - started < 1.0 and "planning" in launcher.message.value
    assert launcher.monitor.job == "c:src", "the monitor shows the job being started, never the previous one"
    db = tmp_path / "q.duckdb"
    wait_for(lambda: _processed(db) >= 200, timeout=60)
    clicked = time.monotonic()
    launcher.pause_button.click()
    assert time.monotonic() - clicked < 1.0
    assert "in flight" in launcher.message.value or launcher.message.value.startswith("Pausing")
    assert "pausing" in launcher.monitor.label.value
    result = launcher.wait(30)
    assert result is not None and result.status == "paused"
    info = qsync.status(db=db)
    assert info["status"] == "paused" and info["batches_running"] == 0 and info["processed_records"] < 1500
    assert not launcher.resume_button.disabled and "Press <b>Resume</b>" in launcher.message.value
    history = len(launcher.monitor._history)
    launcher.resume_button.click()
    assert "Resuming" in launcher.message.value
    result = launcher.wait(60)
    assert result is not None and result.ok
    assert len(launcher.monitor._history) > history, "the plot keeps its history across Pause and Resume"
    assert launcher.monitor.progress.value == launcher.monitor.progress.max == 1500
    assert "completed" in launcher.monitor.label.value and "completed" in launcher.message.value
    assert launcher.message.value.count("completed") == 1, "a message is said once"
    assert launcher.monitor.plot.outputs and "image/png" in launcher.monitor.plot.outputs[0]["data"]
    assert launcher.search.widget.layout.display == "", "a search box once the job completed"
    launcher.search.query.value = "text 7 violin maple river"
    launcher.search.button.click()
    assert "r7" in launcher.search.results.value


def test_cancel_asks_first_and_differs_from_pause(tmp_path: Path) -> None:
    launcher = _launcher(tmp_path, embedder_options={"latency_s": 0.1})
    launcher.start_button.click()
    wait_for(lambda: _processed(tmp_path / "q.duckdb") >= 100, timeout=60)
    launcher.cancel_button.click()
    assert launcher.confirm.layout.display == "" and "cannot be resumed" in launcher.confirm_text.value
    launcher.confirm_no.click()
    assert launcher.confirm.layout.display == "none" and launcher.handle is not None and launcher.handle.running
    launcher.cancel_button.click()
    launcher.confirm_yes.click()
    assert "ancelling" in launcher.message.value
    result = launcher.wait(30)
    assert result is not None and result.status == "cancelled"
    assert "qsync cancel" not in launcher.message.value and "was cancelled" in launcher.message.value


def test_a_rerun_notebook_finds_its_job_and_a_resync_resumes_as_itself(tmp_path: Path) -> None:
    # Runs that must be paused part-way take calls of 0.1 s, two at a time: what is left after the pause point is
    # at least ~1.3 s of calls, time enough for the pause on a busy machine.
    db = tmp_path / "q.duckdb"
    first = _launcher(tmp_path, n=600)
    first.form.payload_columns.value = ("n",)
    first.form.budget.value = "3"
    first.start()
    assert first.wait(60) is not None
    # A re-sync (c:src#2) paused part-way, as a kernel restart would leave it after the notebook re-ran.
    write_records(tmp_path / "src.jsonl", make_records(1500, prefix="changed"))
    second = _launcher(tmp_path, embedder_options={"latency_s": 0.1})
    assert second.form.payload_columns.value == ("n",) and second.form.budget.value == "3", (
        "the form shows the stored job"
    )
    second.start()
    wait_for(lambda: second.job == "c:src#2" and _processed(db, "c:src#2") >= 200, 60)
    second.pause()
    paused = second.wait(30)
    assert paused is not None and paused.status == "paused"
    third = _launcher(tmp_path, embedder_options={"latency_s": 0.1})  # Run All after a kernel restart
    assert third.job == "c:src#2" and not third.resume_button.disabled
    assert "already done" in third.message.value and "already paid" in third.message.value
    third.start_button.click()
    result = third.wait(60)
    assert result is not None and result.job_id == "c:src#2" and result.ok, "Start resumed the re-sync, not #3"
    assert "Resuming" in third.message.value or "completed" in third.message.value
    assert sorted(qsync.jobs(db=db)["job"]) == ["c:src", "c:src#2"]


def test_start_loads_the_jobs_shard_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Start opens the job as `qsync run` does: the Qdrant Edge shard that checked the collection before the job was
    planned is the one its run writes to (a load takes seconds at millions of points)."""
    loads = count_shard_loads(monkeypatch)
    launcher = _launcher(tmp_path, n=300)
    launcher.start()
    result = launcher.wait(60)
    assert result is not None and result.ok
    assert len(loads) == 1, loads


def test_calls_at_once_left_empty_is_chosen_from_the_limits_as_every_run_chooses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The launcher's Calls at once starts empty, not at a fixed 4: its run keeps in flight what `qsync run` and
    `qsync.run` choose from the limits, and the form says that number before Start; a number typed in is kept."""
    with sdk_emulator(monkeypatch, "test-key"):
        src, db = tmp_path / "src.jsonl", tmp_path / "q.duckdb"
        write_records(src, make_records(600))
        launcher = Launcher(source=str(src), collection="c", db=db, dimensions=32, batch_size=50, embedder="gemini",
                            texts_per_minute=30_000)  # fmt: skip
        form = launcher.form
        assert form.concurrency.value == "" and form.settings().concurrency is None
        # 30,000 texts a minute in batches of 50, calls of up to 1 s: 10 in flight reach the limit
        assert form.concurrency.placeholder == "auto: 10" and "<b>10</b>" in form.concurrency_help.value
        launcher.start()
        result = launcher.wait(60)
        assert result is not None and result.ok and launcher.handle is not None
        assert launcher.handle.concurrency == 10
        api = qsync.start(src, db=db, collection="d", dimensions=32, batch_size=50, embedder="gemini",
                          settings=qsync.RunSettings(texts_per_minute=30_000), progress=False)  # fmt: skip
        assert api.wait(60) is not None and api.concurrency == 10  # the API, no concurrency given: the same choice
        form.concurrency.value = "3"
        assert form.settings().concurrency == 3 and form.concurrency.placeholder == "auto: 10"
        write_records(src, make_records(700))  # a re-sync, with the number typed in
        launcher.start()
        result = launcher.wait(60)
        assert result is not None and result.ok and launcher.handle.concurrency == 3
        form.texts_per_minute.value = 3_000  # Gemini's tier 1: the limit, not the calls, bounds the run
        assert form.concurrency.placeholder == "auto: 4"
        form.concurrency.value = "three"
        launcher.start()
        assert "calls at once must be a whole number" in launcher.message.value


def test_a_form_that_differs_from_the_unfinished_job_offers_two_ways_on(tmp_path: Path) -> None:
    launcher = _launcher(tmp_path, embedder_options={"latency_s": 0.1})
    launcher.start()
    wait_for(lambda: launcher.job and _processed(tmp_path / "q.duckdb", launcher.job), 60)
    launcher.pause()
    launcher.wait(30)
    launcher.form.dimensions.value = 48
    launcher.start()
    launcher.wait(30)
    assert launcher.mismatch.layout.display == ""
    text = launcher.mismatch_text.value
    assert "dimensions: the job has 32, this form has 48" in text and "Resume as stored" in text and "--" not in text
    # Another size makes other vectors: starting afresh pays for every text again, and the panel says so.
    assert "reused either way" not in text and "embeds every text again" in text and "full price" in text
    launcher.as_stored_button.click()
    assert launcher.form.dimensions.value == 32
    result = launcher.wait(60)
    assert result is not None and result.ok and result.job_id == "c:src"


def test_the_inspector_pages_filters_shows_a_failed_batch_and_retries_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QSYNC_TEST_FAIL_ONCE", str(tmp_path / "failed-once"))
    empty = BatchInspector(db=tmp_path / "q.duckdb")
    assert "No jobs in" in empty.picker.empty.value and empty.body.layout.display == "none"
    launcher = _launcher(tmp_path, n=600, embedder="qsync_testing:fail_once_factory",
                         embedder_options={"word": "text 321 "})  # fmt: skip
    launcher.start()
    result = launcher.wait(60)
    assert result is not None and result.status == "failed"
    assert "1 failed batch" in launcher.monitor.label.value and "Press <b>Resume</b>" in launcher.message.value
    inspector = BatchInspector(db=tmp_path / "q.duckdb", page_size=5)
    assert inspector.job == result.job_id and "page 1 of 3" in inspector.page_label.value
    inspector.next_button.click()
    assert "page 2 of 3" in inspector.page_label.value
    inspector.status.value = "failed"
    assert "refused a batch mentioning" in inspector.table.value and "NaN" not in inspector.table.value
    assert inspector.batch_no.value == 6 and inspector.retry_button.description == "Retry 1 failed batch"
    inspector.show_button.click()
    assert "text 321 " in inspector.records.value
    inspector.retry(wait=True)
    assert inspector.result is not None and inspector.result.ok
    assert "Retry finished: the job is <b>completed</b>" in inspector.message.value
    assert "No batches match" in inspector.table.value, "the retried batch left the failed filter by itself"
    assert qsync.status(result.job_id, db=tmp_path / "q.duckdb")["status"] == "completed"
    panel = CostPanel(result.job_id, db=tmp_path / "q.duckdb")
    assert "estimate (plan time)" in panel.versus.value and "resumes did not redo" in panel.summary.value
    assert "Batch Mode" in panel.what_if.value and panel.plot.outputs


def test_retrying_a_batch_of_a_cancelled_job_says_why_and_frees_the_buttons(tmp_path: Path) -> None:
    db = tmp_path / "q.duckdb"
    src = tmp_path / "src.jsonl"
    write_records(src, make_records(300))
    qsync.prepare(src, collection="c", job="j", db=db, qdrant_path=tmp_path / "qdrant", dimensions=32, batch_size=100)
    assert qsync.cancel("j", db=db) == "cancelled"
    inspector = BatchInspector(db=db)
    inspector.batch_no.value = 1
    assert not inspector.retry_one_button.disabled, "a pending batch is offered for a retry"
    inspector.retry([1])  # the run is refused in its thread: the job was cancelled
    wait_for(lambda: "was cancelled" in inspector.message.value, timeout=30)
    assert not inspector.retry_one_button.disabled, "the buttons are not left as for a retry in progress"
    assert "3 batches (3 pending)" in inspector.summary.value


def test_a_paused_job_shows_its_estimate_beside_what_it_spent_without_an_error(tmp_path: Path) -> None:
    db = tmp_path / "q.duckdb"
    src = tmp_path / "src.jsonl"
    write_records(src, make_records(3000))
    qsync.prepare(src, collection="c", job="j", db=db, qdrant_path=tmp_path / "qdrant", dimensions=32, batch_size=100)
    runner = make_runner("j", db=db, settings=RunSettings(concurrency=1))
    runner.listeners.append(lambda e: runner.request_stop() if isinstance(e, BatchFinished) else None)
    assert runner.run().status == "paused"
    versus = reading.estimate_vs_actual("j", db=db).set_index("figure")
    spent, estimated = float(versus["actual"].loc["tokens"]), float(versus["estimate"].loc["tokens"])
    assert 0 < spent < estimated, "part of the texts were embedded"
    assert versus["error_pct"].isna().all(), "the estimate of all the texts is not held against a part of them"
    assert "once the job completes (it is paused" in versus_html("j", db=db)


def test_a_resume_refused_because_another_runner_has_the_job_frees_the_launcher(tmp_path: Path) -> None:
    src, db = tmp_path / "src.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(3000))
    qsync.prepare(src, collection="c", db=db, qdrant_path=db.with_suffix(".qdrant"), dimensions=32, batch_size=50)
    other = make_runner(
        "c:src", db=db, embedder=HashingEmbedder(32, latency_s=0.05), settings=RunSettings(concurrency=1)
    )
    thread = threading.Thread(target=lambda: setattr(other, "result", other.run()))
    thread.start()
    try:
        wait_for(lambda: qsync.status("c:src", db=db)["status"] == "running", 30)
        launcher = _launcher(tmp_path)
        assert launcher.job == "c:src"
        launcher.resume()  # refused in the run's thread: another runner holds the job's lease
        wait_for(lambda: "Stopped:" in launcher.message.value, 30)
        assert "is being run by process" in launcher.message.value
        assert launcher.pause_button.disabled and not launcher.resume_button.disabled, "not left as for a run"
        assert launcher.monitor.status == "stopped", "the monitor no longer says resuming…"
    finally:
        other.request_stop()
        thread.join(30)


def test_tables_read_as_people_read_them() -> None:
    table = show(pd.DataFrame({"model": ["m"], "cost_usd": [0.0123], "expected_minutes": [0.14], "records": [5000.0]}))
    assert ">$0.012<" in table.value and ">8 s<" in table.value and ">5,000<" in table.value, table.value
    assert [gigabytes(g) for g in (0.0036, 0.0143, 0.5, 2.25)] == ["3.7 MB", "14.6 MB", "512 MB", "2.25 GB"]


def test_rate_and_eta_do_not_jump_after_resume() -> None:
    meter = RateMeter(window_s=30, min_span_s=4)
    for t in range(61):
        meter.add(float(t), 50 * t)  # 50 records/s
    assert meter.rate() == pytest.approx(50)
    meter.restart(100.0, 3000)  # Resume: the first seconds finish the batches in flight together
    meter.add(100.5, 3400)
    assert meter.rate() is None, "no rate from a burst"
    for t in range(1, 31):
        meter.add(100.0 + t, 3400 + 50 * t)
    rate = meter.rate()
    assert rate is not None and rate == pytest.approx(50, rel=0.3)
    assert meter.eta_s(1000) == pytest.approx(1000 / rate)


def test_dollars_read_the_same_everywhere() -> None:
    assert [usd(x) for x in (0, 0.00821025, 1.815e-05, 0.013390949999999999, 2.5, 1234.5, None)] == [
        "$0", "$0.0082", "$0.000018", "$0.013", "$2.50", "$1,234.50", "—"
    ]  # fmt: skip
    assert humanize("resume it (`qsync resume j`) or use --dimensions 768") == (
        "resume it (press Resume) or use set Dimensions to 768"
    )


def test_search_and_background_runs_from_a_cell(tmp_path: Path) -> None:
    src, db = tmp_path / "src.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(800))
    started = threading.Event()
    handles: list[JobHandle] = []

    def pause_at_the_first_batch(event: Any) -> None:  # part-way, whatever the machine's speed
        if isinstance(event, BatchFinished) and started.wait(10):
            handles[0].pause()

    handle = qsync.run(src, background=True, db=db, collection="c", dimensions=32, batch_size=50,
                       payload_columns=["n"], embedder_options={"latency_s": 0.05},
                       listeners=[pause_at_the_first_batch])  # fmt: skip
    assert isinstance(handle, JobHandle) and handle.job_id == "c:src"
    handles.append(handle)
    started.set()
    result = handle.wait(30)
    assert result is not None and result.status == "paused"
    again = qsync.start(src, db=db, collection="c", dimensions=32, batch_size=50, payload_columns=["n"])
    assert again.job_id == "c:src"
    again_result = again.wait(60)
    assert again_result is not None and again_result.ok
    assert reading.recorded_estimate("c:src", db=db) is not None
    found = qsync.search("c:src", "text 7 violin maple river", limit=3, db=db)
    assert list(found.columns) == ["score", "id", "n", "text"] and found["id"].iloc[0] == "r7"
    out = run_qsync("search", "c:src", "text 7 violin maple river", "--limit", "2", "--db", str(db), "--json")
    assert out.returncode == 0, out.stderr
    import json

    assert next(r["id"] for r in json.loads(out.stdout)) == "r7"


def test_the_emulator_cli_offers_its_faults() -> None:
    out = subprocess.run([sys.executable, "-m", "qsync.testing", "--help"], capture_output=True, text=True,
                         env=qsync_env(), check=True)  # fmt: skip
    for option in ("--server-error-rate", "--texts-per-minute", "--tokens-per-minute", "--slow-rate",
                   "--reset-rate", "--invalid-key", "--texts-per-day"):  # fmt: skip
        assert option in out.stdout


def test_attach_follows_a_job_run_by_the_cli(tmp_path: Path) -> None:
    src, db = tmp_path / "src.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(1200))
    proc = subprocess.Popen(qsync_cmd("run", "--source", str(src), "--collection", "c", "--db", str(db), "--job", "j",
                                      "--embedder", "hash", "--dimensions", "32", "--simulate-latency", "0.1",
                                      "--batch-size", "50", "--quiet"), env=qsync_env())  # fmt: skip
    try:
        wait_for(db.exists, timeout=30)
        monitor = JobMonitor.attach("j", db=db, interval_s=0.3)
        wait_for(lambda: "running" in monitor.label.value, timeout=30)
        assert proc.wait(timeout=120) == 0
        wait_for(lambda: "completed" in monitor.label.value, timeout=10)
        monitor.stop()
        assert monitor.progress.value == monitor.progress.max == 1200
    finally:
        proc.kill()


@pytest.mark.slow
@pytest.mark.reliability
def test_a_job_whose_kernel_dies_resumes_from_a_fresh_kernel(tmp_path: Path) -> None:
    from jupyter_client.manager import start_new_kernel
    from jupyter_client.provisioning.local_provisioner import LocalProvisioner

    src, db = tmp_path / "src.jsonl", tmp_path / "q.duckdb"
    records = make_records(1500)
    write_records(src, records)
    start = f"""
from qsync.notebook import Launcher
launcher = Launcher(source={str(src)!r}, collection="c", db={str(db)!r}, dimensions=32, batch_size=50,
                    concurrency=2, job="nb", embedder_options={{"latency_s": 0.05}})
launcher.start()
"""
    manager, client = start_new_kernel(kernel_name="python3", env=qsync_env())
    try:
        client.execute_interactive(start, timeout=60)
        wait_for(lambda: _processed(db, "nb") >= 300, timeout=60)
        provisioner = manager.provisioner
        assert isinstance(provisioner, LocalProvisioner) and provisioner.pid is not None
        os.kill(provisioner.pid, signal.SIGKILL)  # the kernel dies mid-job (a zombie until reaped)
        wait_for(lambda: qsync.status("nb", db=db)["status"] == "stale", timeout=30)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    done_before = qsync.status("nb", db=db)["processed_records"]
    assert done_before < 1500
    manager, client = start_new_kernel(kernel_name="python3", env=qsync_env())
    try:
        reply = client.execute_interactive(
            f"import qsync\nresult = qsync.resume('nb', db={str(db)!r})\nassert result.ok, result",
            timeout=120,
        )
        assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    points = qdrant_points(db.with_suffix(".qdrant"), "c")
    assert len(points) == 1500
    for r in records:
        vector, _ = points[point_id(r["id"])]
        assert abs(float(vector @ hash_vector(r["text"], 32)) - 1.0) < 1e-5
    assert qsync.cost("nb", db=db).iloc[0]["resume_skipped_records"] >= done_before


def _processed(db: Path, job: str | None = None) -> int:
    """Records processed so far; 0 while the job is not planned yet (the file may exist before it is)."""
    try:
        return int(qsync.status(job, db=db)["processed_records"])
    except qsync.QsyncError:
        return 0


# -- the rough edges a person met (issue 23) ------------------------------------------------------------------


def _bad_csv(path: Path, n: int = 300) -> Path:
    """A CSV of other column names (doc, body) with one line that is not UTF-8."""
    rows = b"".join(f"{path.stem}{i},{path.stem} text {i} violin maple\n".encode() for i in range(n))
    path.write_bytes(b"doc,body\n" + rows + b"d-bad,caf\xe9 \xff\xfe au lait\n")
    return path


def test_a_csv_with_a_bad_utf8_line_is_read_and_launched_from_the_form(tmp_path: Path) -> None:
    launcher = _launcher(tmp_path, n=200)  # the form opens on src.jsonl: id, text, n
    launcher.form.source.value = str(_bad_csv(tmp_path / "docs.csv"))
    launcher.form.read_button.click()
    assert list(launcher.form.id_column.options) == ["doc", "body"], launcher.message.value
    assert launcher.form.text_column.value == "body" and "Source:" not in launcher.message.value
    launcher.start_button.click()
    result = launcher.wait(60)
    assert result is not None and result.ok and result.job_id == "c:docs"
    [reason] = qsync.skipped("c:docs", db=tmp_path / "q.duckdb")["reason"]
    assert reason.startswith("line 302") and "unicode" in reason.lower(), reason
    # A typed source whose columns were not read: Start reads them first, never naming the old source's.
    _bad_csv(tmp_path / "more.csv", n=60)
    launcher.form.source.value = str(tmp_path / "more.csv")
    launcher.form.id_column.options = ["id"]  # what the fields held for the previous source
    launcher.start_button.click()
    result = launcher.wait(60)
    assert result is not None and result.ok and result.job_id == "c:more"
    assert qsync.status("c:more", db=tmp_path / "q.duckdb")["loaded_records"] == 60
    # A source that cannot be read leaves no column fields of the previous one, and Start plans nothing.
    launcher.form.source.value = str(tmp_path / "missing.csv")
    launcher.form.read_button.click()
    assert launcher.form.id_column.options == () and "Source:" in launcher.message.value
    assert "No job" in launcher.message.value or "does not exist" in launcher.message.value
    launcher.start_button.click()
    assert launcher.wait(10) is not None  # the previous result: nothing new ran
    assert sorted(qsync.jobs(db=tmp_path / "q.duckdb")["job"]) == ["c:docs", "c:more"]


def test_the_form_after_a_kernel_restart_shows_the_job_typed_into_it(tmp_path: Path) -> None:
    db = tmp_path / "q.duckdb"
    launcher = _launcher(tmp_path, n=100, embedder_options={"latency_s": 0.05})
    launcher.form.source.value = str(_bad_csv(tmp_path / "docs.csv", n=1500))
    launcher.form.read_button.click()
    launcher.start()
    wait_for(lambda: _processed(db, "c:docs") >= 200, 60)
    launcher.pause()
    paused = launcher.wait(30)
    assert paused is not None and paused.status == "paused"
    launcher.monitor.stop()
    # A restarted kernel runs the notebook again: its form holds the default source, not docs.csv.
    restarted = _launcher(tmp_path)
    # The form shows the path relative to the notebook when it is near (then it names the same file).
    assert restarted.job == "c:docs" and Path(restarted.form.source.value).resolve() == tmp_path / "docs.csv"
    assert restarted.form.id_column.value == "doc" and not restarted.resume_button.disabled
    assert "already done" in restarted.message.value and "paused" in restarted.monitor.label.value
    restarted.resume_button.click()
    done = restarted.wait(60)
    assert done is not None and done.ok and done.job_id == "c:docs"
    # Once it is completed, a fresh form opens on its default source; typing docs.csv and pressing Read columns
    # finds the job (before, it appeared only on Start).
    fresh = _launcher(tmp_path)
    assert fresh.job is None and "No job yet" in fresh.monitor.label.value
    fresh.form.source.value = str(tmp_path / "docs.csv")
    fresh.form.read_button.click()
    assert _shown(fresh) == "c:docs" and "completed" in fresh.message.value
    assert fresh.search.widget.layout.display == "" and "1,501 / 1,501 records" in fresh.monitor.label.value
    fresh.form.source.value = str(tmp_path / "src.jsonl")
    fresh.form.read_button.click()
    assert _shown(fresh) is None and "No job <b>c:src</b>" in fresh.message.value
    assert fresh.search.widget.layout.display == "none" and not fresh.start_button.disabled


def _shown(launcher: Launcher) -> str | None:
    """The job a launcher shows (a function: mypy would keep what an earlier assert narrowed it to)."""
    return launcher.job


def test_a_stopped_form_follows_a_retry_made_in_another_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QSYNC_TEST_FAIL_ONCE", str(tmp_path / "failed-once"))
    db = tmp_path / "q.duckdb"
    launcher = _launcher(tmp_path, n=600, embedder="qsync_testing:fail_once_factory",
                         embedder_options={"word": "text 321 "})  # fmt: skip
    read_failed = threading.Event()  # the form's follow has read the stopped job from the ledger and shown it
    polled = JobMonitor._polled

    def spy(self: JobMonitor, info: dict[str, Any], *args: Any) -> None:
        polled(self, info, *args)
        if info["status"] == "failed":
            read_failed.set()

    monkeypatch.setattr(JobMonitor, "_polled", spy)
    launcher.start()
    result = launcher.wait(60)
    assert result is not None and result.status == "failed" and "1 failed batch" in launcher.monitor.label.value
    # The follow's first read finds the job as the run left it: the run's own words stay (they name the failure).
    assert read_failed.wait(30)
    assert "1 batch failed" in launcher.message.value and "02_inspect_batches" in launcher.message.value
    # 02 in another kernel (here: `qsync resume` in a process of its own) retries the failed batch.
    out = run_qsync("resume", result.job_id, "--db", str(db), "--quiet")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: "completed" in launcher.message.value, timeout=30)
    assert "0 failed batches" in launcher.monitor.label.value and "600 / 600" in launcher.monitor.label.value
    # The figures once, in the monitor; the message says what comes next.
    assert "re-sync" in launcher.message.value and "600" not in launcher.message.value
    assert launcher.resume_button.disabled
    assert launcher.search.widget.layout.display == ""


def test_the_status_line_says_the_api_is_down_instead_of_a_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = EmulatorProcess("--latency", "0.3").start()
    try:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", emulator.url)
        monkeypatch.setenv("GEMINI_API_KEY", "test-key")
        monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
        monkeypatch.setenv("QSYNC_RETRY_BASE_S", "0.5")
        launcher = _launcher(tmp_path, n=1500, embedder="gemini")
        launcher.form.dimensions.value = 128
        launcher.form.concurrency.value = "1"
        launcher.start()
        wait_for(lambda: "records/s" in launcher.monitor.label.value, timeout=60)
        emulator.kill()  # the API goes away: connections refused
        wait_for(lambda: "waiting for the API" in launcher.monitor.label.value, timeout=60)
        label = launcher.monitor.label.value
        assert "records/s" not in label and "left" not in label, label
        assert "trying again in" in launcher.monitor.notice.value
        emulator.start()  # back, on the same port
        result = launcher.wait(120)
        assert result is not None and result.ok, result
        assert "waiting" not in launcher.monitor.label.value and "completed" in launcher.monitor.label.value
    finally:
        emulator.kill()


def test_small_figures_read_as_a_person_reads_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qsync.notebook import costs, estimate_table
    from qsync.notebook.costs import versus_html

    launcher = _launcher(tmp_path, n=120)
    launcher.start()
    result = launcher.wait(60)
    assert result is not None and result.ok
    assert "re-sync" in launcher.message.value and "120" not in launcher.message.value, "the figures are below it"
    table = versus_html(result.job_id, tmp_path / "q.duckdb")
    assert "time of work" in table and " s<" in table and "0.0<" not in table  # seconds, never "0.0"
    from qsync.app.versus import work_time

    # The digits the error beside it needs: 0.62 s against 0.38 s is +64%, which "0.6 s / 0.4 s" is not.
    assert [work_time(s / 60) for s in (0.62, 0.376, 4.25, 75)] == ["0.62 s", "0.38 s", "4.2 s", "1 min 15 s"]
    assert "Time of work is estimated only for a Gemini model" in table  # why its estimate is a dash
    shown = estimate_table(qsync.estimate(tmp_path / "src.jsonl", db=tmp_path / "q.duckdb")).value
    assert "cost in Batch Mode" in shown and "$0" in shown and "time at the rate limits" in shown
    assert not re.search(r"\d\.\d{7,}", shown), "no raw float"
    inspector = BatchInspector(result.job_id, db=tmp_path / "q.duckdb")
    assert "0 records skipped" in inspector.summary.value
    inspector.error_filter.value = "no such error"
    assert "no batch matches these filters" in inspector.page_label.value and "0 to 0" not in inspector.page_label.value
    drawn: list[Any] = []

    def keep(fig: Any) -> tuple[()]:
        drawn.append(fig)
        return ()

    monkeypatch.setattr(costs, "figure_output", keep)
    panel = CostPanel(result.job_id, db=tmp_path / "q.duckdb")
    assert ">128<" in panel.what_if.value and ">256<" in panel.what_if.value
    spent = drawn[-1].axes[1]  # a free job's spending: said, not a flat line under empty dollar ticks
    assert [t.get_text() for t in spent.texts] == ["$0: nothing was paid for\n(a free embedder, or all from the cache)"]
    assert not spent.lines
    one = tmp_path / "one"  # a paid job of one batch: one point, no curve to draw
    one.mkdir()
    write_records(one / "src.jsonl", make_records(40))
    create_job(one / "src.jsonl", collection="c", job="one", db=one / "q.duckdb", dimensions=32, batch_size=50)
    assert make_runner("one", db=one / "q.duckdb", embedder=HashingEmbedder(32, price_per_million_tokens=0.15)).run().ok
    CostPanel("one", db=one / "q.duckdb")
    spent = drawn[-1].axes[1]
    assert not spent.lines and [t.get_text() for t in spent.texts] == [
        f"{usd(qsync.status('one', db=one / 'q.duckdb')['cost_usd'])}, in one batch"
    ]


def test_a_job_that_skipped_rows_at_planning_starts_as_new_not_resumed(tmp_path: Path) -> None:
    src = tmp_path / "src.jsonl"
    records = make_records(300)
    for r in records[:5]:
        r["text"] = ""  # skipped while planning
    write_records(src, records)
    launcher = _launcher(tmp_path, embedder_options={"latency_s": 0.05})
    seen: list[str] = []
    launcher.start()
    wait_for(lambda: launcher.handle is not None, timeout=30)
    assert launcher.handle is not None
    launcher.handle.add_listener(lambda _: seen.append(launcher.message.value))
    result = launcher.wait(60)
    assert result is not None and result.ok
    said = " ".join(seen) + launcher.message.value
    assert "Resuming" not in said and "already done" not in said
    assert "5 records skipped while planning" in " ".join(seen) or "Running" in " ".join(seen)
    inspector = BatchInspector(result.job_id, db=tmp_path / "q.duckdb")
    assert "5 records skipped" in inspector.summary.value


def test_a_handle_says_pausing_and_resumes(tmp_path: Path) -> None:
    src, db = tmp_path / "src.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(800))
    started = threading.Event()
    handles: list[JobHandle] = []
    states: list[str] = []

    def pause_at_the_first_batch(event: Any) -> None:  # part-way, whatever the machine's speed
        if isinstance(event, BatchFinished) and not states and started.wait(10):
            handles[0].pause()
            states.append(handles[0].state + " " + repr(handles[0]))

    handle = qsync.start(src, db=db, collection="c", dimensions=32, batch_size=50, progress=False,
                         embedder_options={"latency_s": 0.05}, listeners=[pause_at_the_first_batch])  # fmt: skip
    handles.append(handle)
    started.set()
    wait_for(lambda: bool(states), timeout=60)
    assert states[0].startswith(("pausing", "paused")) and "running" not in states[0], states
    paused = handle.wait(30)
    assert paused is not None and paused.status == "paused"
    assert repr(handle) == "<JobHandle 'c:src': paused>"
    handle.resume()
    done = handle.wait(60)
    assert done is not None and done.ok and handle.state == "completed"


def test_two_unrelated_dataframes_into_one_collection_are_two_jobs(tmp_path: Path) -> None:
    import pandas as pd

    db = tmp_path / "q.duckdb"
    books = pd.DataFrame({"id": ["b1", "b2"], "title": ["a book", "another book"]})
    films = pd.DataFrame({"film_id": ["f1"], "plot": ["a film"]})
    first = qsync.run(books, collection="c", db=db, dimensions=32, text_column="title", progress=False)
    second = qsync.run(films, collection="c", db=db, dimensions=32, id_column="film_id", text_column="plot",
                       progress=False)  # fmt: skip
    assert first.ok and second.ok and first.job_id != second.job_id
    assert "#" not in second.job_id and second.job_id.startswith("c:dataframe-")
    again = qsync.run(books.assign(title=["a book", "a changed book"]), collection="c", db=db, dimensions=32,
                      text_column="title", progress=False)  # fmt: skip
    assert again.job_id == first.job_id + "#2", "the same frame again is a re-sync of its own job"


def test_a_notebook_run_twice_without_a_key_says_both_times_that_gemini_is_emulated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first run's emulator sets a placeholder key in the kernel: a second Run All once read it as the user's key.
    import qsync.testing
    from qsync.testing import gemini_for_this_kernel

    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GEMINI_BASE_URL"):
        monkeypatch.setenv(name, "")  # remembered as it was (start_offline sets two of them): put back afterwards
        monkeypatch.delenv(name)
    monkeypatch.setattr(qsync.testing, "_offline", None)
    first = gemini_for_this_kernel()
    emulator = qsync.testing.offline_emulator()
    try:
        second = gemini_for_this_kernel()
    finally:
        assert emulator is not None
        emulator.stop()
    assert first == second and "Gemini is emulated locally" in first and "nothing is billed" in first
    assert max(map(len, first.splitlines())) <= 96  # JupyterLab breaks longer output lines mid-word


def test_a_picker_opens_the_newest_job_that_did_something_not_a_start_pressed_again(tmp_path: Path) -> None:
    # Start pressed again after a job completed makes a re-sync with every record unchanged: no batch. 02 and 03
    # opened it (nothing to inspect, an empty plot); they open the job that did the work, and list the other.
    from qsync.notebook.picker import JobPicker

    src, db = tmp_path / "src.jsonl", tmp_path / "q.duckdb"
    records = make_records(50)
    write_records(src, records)

    def run() -> Any:
        return qsync.run(src, collection="c", db=db, qdrant_path=tmp_path / "qdrant", embedder="hash", dimensions=8)

    first, again = run(), run()
    assert again.job_id != first.job_id and qsync.status(again.job_id, db=db)["batches_total"] == 0
    picker = JobPicker(db=db)
    assert picker.job == first.job_id and picker.dropdown.options[1][1] == again.job_id
    records[0]["text"] = ""  # a re-sync that only skips (the same bad rows again, or a newly bad one) embeds nothing
    write_records(src, records)
    run()
    assert JobPicker(db=db).job == first.job_id
    bad = tmp_path / "bad.jsonl"  # a new job whose every record is skipped: there is something to see, it opens
    write_records(bad, [{**r, "text": ""} for r in make_records(3)])
    skipped = qsync.run(bad, collection="c", db=db, qdrant_path=tmp_path / "qdrant", embedder="hash", dimensions=8)
    assert JobPicker(db=db).job == skipped.job_id


def test_a_search_box_over_a_hashing_job_says_it_matches_words_not_meaning(tmp_path: Path) -> None:
    # Offline, 01's job is the hashing embedder's: "a musical instrument with strings" found "slow" and "copper",
    # which read as broken to a newcomer who was not told why.
    from qsync.notebook import SearchBox

    src, db = tmp_path / "src.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(20))
    job = qsync.run(src, collection="c", db=db, qdrant_path=tmp_path / "qdrant", embedder="hash", dimensions=8).job_id
    title = SearchBox(job, db=db).title.value
    assert "<b>Search collection c</b>" in title and "share words with yours, not meaning" in title
