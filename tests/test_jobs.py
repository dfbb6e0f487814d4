"""One job, one truth: job identity, the budget across resumes, one set of figures, each text paid once,
one retry layer whose waits a Pause cuts short."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from qsync_testing import (
    FAST,
    count_shard_loads,
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
from qsync.app.jobs import create_job, make_runner
from qsync.engine.events import BatchFinished, JobFinished, Notice, Progress
from qsync.engine.runner import RunResult
from qsync.spec.settings import RunSettings
from qsync.testing.emulator import GeminiEmulator

SECRET = "AIzaJOBS-key-0123456789"


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[GeminiEmulator]:
    with sdk_emulator(monkeypatch, SECRET, seed=5) as emu:
        yield emu


def _run(src: Any, tmp_path: Path, settings: RunSettings = FAST, **options: Any) -> RunResult:
    options.setdefault("dimensions", 32)
    options.setdefault("collection", "c")
    result: RunResult = qsync.run(
        src, db=tmp_path / "q.duckdb", qdrant_path=tmp_path / "qdrant", settings=settings, **options
    )
    return result


# -- each distinct text paid once ---------------------------------------------------------------------


def test_a_text_in_two_batches_running_at_once_is_paid_for_once(tmp_path: Path, emulator: GeminiEmulator) -> None:
    emulator.latency_s = 0.2
    distinct = make_records(400)
    # Each text sits in two neighbouring batches of 50: rows i and i+50 share it, so batches 2k and 2k+1
    # (claimed together by 4 workers) hold the same 50 texts.
    rows = []
    for block in range(0, 400, 50):
        chunk = distinct[block : block + 50]
        rows += [{"id": f"a{r['id']}", "text": r["text"]} for r in chunk]
        rows += [{"id": f"b{r['id']}", "text": r["text"]} for r in chunk]
    src = tmp_path / "dup.jsonl"
    write_records(src, rows)
    result = _run(src, tmp_path, batch_size=50, embedder="gemini")
    assert result.ok, result.message
    assert len(emulator.texts_embedded) == 400
    assert max(emulator.texts_embedded.values()) == 1  # not one text paid twice
    info = qsync.status(db=tmp_path / "q.duckdb")
    assert info["loaded_records"] == 800 and info["embedded_texts"] == 400 and info["cache_hits"] == 400


# -- the budget is the job's whole spend, across resumes --------------------------------------------


def test_the_budget_holds_across_resumes_of_an_enrichment_job(tmp_path: Path, emulator: GeminiEmulator) -> None:
    src = tmp_path / "e.jsonl"
    write_records(src, make_records(300))
    options: dict[str, Any] = {
        "batch_size": 50, "embedder": "gemini", "max_cost_usd": 0.0005,  # below the whole job's cost
        "enrich": {"prompt": "Summarise: {text}", "model": "gemini-2.5-flash-lite", "field": "summary"},
    }  # fmt: skip
    statuses = [_run(src, tmp_path, **options).status for _ in range(6)]  # the first run, then 5 resumes
    spent = qsync.cost("c:e", db=tmp_path / "q.duckdb").iloc[0]
    assert statuses.count("paused") >= 2  # the cap, not the data, ended these runs
    assert spent["enrich_cost_usd"] > 0 and spent["cost_usd"] <= 0.0005
    assert qsync.status("c:e", db=tmp_path / "q.duckdb")["cost_usd"] == pytest.approx(spent["cost_usd"])
    # Raising the cap on resume lets the job finish; 'no budget' clears the stored cap explicitly.
    assert _run(src, tmp_path, **{**options, "max_cost_usd": None}).ok
    assert qsync.status("c:e", db=tmp_path / "q.duckdb")["max_cost_usd"] is None


# -- job identity --------------------------------------------------------------------------------------


def _cli_args(src: Path, db: Path, *extra: str) -> list[str]:
    return ["run", "--source", str(src), "--collection", "c", "--db", str(db), "--embedder", "hash",
            "--dimensions", "16", "--batch-size", "50", "--concurrency", "2", "--quiet", *extra]  # fmt: skip


@pytest.mark.slow
def test_the_same_command_resumes_an_unfinished_resync_instead_of_starting_another(tmp_path: Path) -> None:
    src, db = tmp_path / "docs.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(200))
    assert run_qsync(*_cli_args(src, db)).returncode == 0  # c:docs completed
    write_records(src, make_records(200) + make_records(1500, start=200))  # the source grows
    slow = _cli_args(src, db, "--simulate-latency", "0.05")
    proc = subprocess.Popen(qsync_cmd(*slow), env=qsync_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: db.exists() and _processed(db, "c:docs#2") >= 400, timeout=60)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert status_json(db, "c:docs#2")["status"] == "stale"
    again = run_qsync(*slow)
    assert again.returncode == 0, again.stderr
    assert "c:docs#2: completed" in again.stdout
    jobs = json.loads(run_qsync("jobs", "--db", str(db), "--json").stdout)
    assert sorted(j["job"] for j in jobs) == ["c:docs", "c:docs#2"]  # no c:docs#3
    assert status_json(db, "c:docs#2")["loaded_records"] == 1500


def _processed(db: Path, job: str) -> int:
    try:
        return int(qsync.status(job, db=db)["processed_records"])
    except qsync.QsyncError:
        return 0


def test_a_different_spec_for_an_unfinished_job_is_refused_naming_each_difference(tmp_path: Path) -> None:
    src, db = tmp_path / "docs.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(300))
    create_job(src, collection="c", db=db, qdrant_path=tmp_path / "qdrant", embedder="hash", dimensions=16,
                     max_cost_usd=5.0)  # fmt: skip
    with pytest.raises(qsync.SpecMismatch) as refused:
        _run(src, tmp_path, embedder="hash", dimensions=64, payload_columns=["n"])
    message = str(refused.value)
    assert "dimensions: stored 16, given 64" in message and "payload columns: stored [], given ['n']" in message
    assert "qsync resume c:docs" in message and "qsync cancel c:docs" in message
    assert qsync.status("c:docs", db=db)["status"] == "planned"  # nothing ran
    # The same spec resumes it; a new budget given on resume replaces the stored one.
    assert _run(src, tmp_path, embedder="hash", dimensions=16, max_cost_usd=7.0).ok
    assert qsync.status("c:docs", db=db)["max_cost_usd"] == 7.0


def test_cli_budget_none_clears_and_absent_keeps(tmp_path: Path) -> None:
    src, db = tmp_path / "docs.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(60))
    create_job(src, collection="c", db=db, embedder="hash", dimensions=16, batch_size=50, max_cost_usd=3.0)
    out = run_qsync("resume", "c:docs", "--db", str(db), "--quiet", "--concurrency", "1")
    assert out.returncode == 0, out.stderr
    assert status_json(db, "c:docs")["max_cost_usd"] == 3.0
    create_job(src, collection="c", job="other", db=db, embedder="hash", dimensions=16, max_cost_usd=3.0)
    out = run_qsync("resume", "other", "--db", str(db), "--quiet", "--max-cost-usd", "none")
    assert out.returncode == 0, out.stderr
    assert status_json(db, "other")["max_cost_usd"] is None
    refused = run_qsync("resume", "other", "--db", str(db), "--max-cost-usd", "0")
    assert refused.returncode == 2 and "use 'none' for no cap" in refused.stderr


# -- one set of figures -----------------------------------------------------------------------------


def test_every_view_of_a_job_shows_the_same_figures(tmp_path: Path, emulator: GeminiEmulator) -> None:
    emulator.poison = ("POISON",)
    src, db = tmp_path / "f.jsonl", tmp_path / "q.duckdb"
    records = make_records(400)
    write_records(src, records)
    assert _run(src, tmp_path, batch_size=50, embedder="gemini").ok
    # A re-sync over a grown, partly bad source, paused part-way.
    grown = [*records, *make_records(600, start=400)]
    grown[450]["text"] = ""  # skipped at planning
    grown[500]["text"] += " POISON"  # refused by the API: skipped at embedding
    write_records(src, grown)
    events: list[Any] = []
    emulator.latency_s = 0.05
    job = qsync.prepare(src, db=db, collection="c", batch_size=50, embedder="gemini", dimensions=32,
                        qdrant_path=tmp_path / "qdrant")  # fmt: skip

    def stop_after_two_batches(event: Any) -> None:  # part-way, whatever the machine's speed
        events.append(event)
        if sum(isinstance(e, BatchFinished) for e in events) == 2:
            runner.request_stop()

    runner = make_runner(job, db=db, settings=replace(FAST, concurrency=1), listeners=[stop_after_two_batches])
    result = runner.run()
    assert result.status == "paused", result.message
    info = qsync.status(job, db=db)
    assert info["unchanged_records"] == 400 and 0 < info["remaining_records"] < 599
    assert info["total_records"] == (
        info["loaded_records"] + info["skipped_records"] + info["unchanged_records"] + info["remaining_records"]
    )
    assert info["processed_records"] == info["total_records"] - info["remaining_records"]
    listed = qsync.jobs(db=db).set_index("job").loc[job]
    cli = status_json(db, job)
    cost = qsync.cost(job, db=db).iloc[0]
    final = [e for e in events if isinstance(e, JobFinished)][-1].figures
    last_progress = [e for e in events if isinstance(e, Progress)][-1].figures
    for key in ("total_records", "loaded_records", "skipped_records", "unchanged_records", "processed_records",
                "remaining_records", "tokens", "cost_usd"):  # fmt: skip
        assert listed[key] == info[key] == cli[key], key
        if hasattr(final, key):
            assert getattr(final, key) == info[key] == getattr(last_progress, key), key
    assert cost["cost_usd"] == info["cost_usd"] and cost["tokens"] == info["tokens"]
    # Resume to the end: every record in exactly one place.
    assert qsync.resume(job, db=db, settings=FAST).ok
    done = qsync.status(job, db=db)
    assert (done["loaded_records"], done["skipped_records"], done["unchanged_records"]) == (598, 2, 400)
    assert done["remaining_records"] == 0 and done["processed_records"] == done["total_records"] == 1000


# -- options are typed and never leak ---------------------------------------------------------------


def test_the_concurrency_said_before_a_run_is_the_one_its_runner_chooses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`app.options.calls_in_flight` (what the launcher says beside an empty Calls at once) and a Runner built from
    the same options choose alike, whatever the embedder, its price, the limits and the batch size."""
    from qsync.app.options import build_spec, calls_in_flight
    from qsync.embedders.factory import build_embedder
    from qsync.engine.runner import Runner
    from qsync.ledger.ledger import Ledger

    monkeypatch.setenv("GEMINI_API_KEY", "test-key")  # built, never called
    src = tmp_path / "docs.jsonl"
    write_records(src, make_records(3))
    chosen = set()
    for embedder, options in (("hash", {}), ("hash", {"price_per_million_tokens": 0.1}), ("gemini", {})):
        for texts_per_minute in (None, 3_000, 30_000, 10**7):
            for batch_size in (20, 100):
                spec, _ = build_spec(src, collection="c", db=tmp_path / "q.duckdb", embedder=embedder,
                                     embedder_options=options, batch_size=batch_size)  # fmt: skip
                settings = RunSettings(texts_per_minute=texts_per_minute)
                built = build_embedder(spec.embedder)
                runner = Runner(Ledger(tmp_path / "q.duckdb"), "c:docs", spec, built, None, settings, "")  # type: ignore[arg-type]
                said = calls_in_flight(settings, spec.embedder, batch_size)
                assert said == runner.concurrency, (embedder, options, texts_per_minute, batch_size)
                chosen.add(said)
    assert chosen == {4, 5, 16}  # the limits and the price made a difference: tier 1, 30,000 a minute, no limit


def test_options_are_checked_and_settings_are_never_changed_behind_the_callers_back(tmp_path: Path) -> None:
    src = tmp_path / "s.jsonl"
    write_records(src, make_records(10))
    with pytest.raises(TypeError, match="dimension"):
        qsync.run(src, collection="c", db=tmp_path / "q.duckdb", dimension=64)  # type: ignore[call-overload]
    create_job(src, collection="c", db=tmp_path / "q.duckdb", embedder="hash")
    mine = RunSettings(concurrency=2)
    runner = make_runner("c:s", db=tmp_path / "q.duckdb", settings=mine, concurrency=5)
    assert runner.settings.concurrency == 5 and mine.concurrency == 2
    with pytest.raises(AttributeError):
        mine.concurrency = 3  # type: ignore[misc]


# -- one retry layer, and every wait interruptible ---------------------------------------------------


def test_retries_do_not_nest_a_failing_call_is_tried_max_attempts_times(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    emulator.server_error_rate = 1.0  # every call answers 5xx
    src = tmp_path / "r.jsonl"
    write_records(src, make_records(100))
    settings = replace(FAST, concurrency=1, max_attempts=3)
    result = _run(src, tmp_path, settings=settings, batch_size=50, embedder="gemini")
    assert result.status == "failed"
    assert emulator.requests["batchEmbedContents"] == 2 * 3  # two batches, three attempts each: no nesting
    assert qsync.batches("c:r", db=tmp_path / "q.duckdb").attempts.tolist() == [1, 1]


def test_pause_during_a_long_backoff_takes_effect_within_a_second(tmp_path: Path, emulator: GeminiEmulator) -> None:
    emulator.texts_per_minute = 50  # the first call of 50 texts passes, every later one is told to wait
    emulator.window_s = 60.0
    emulator.retry_info_share = 1.0  # ... with RetryInfo of up to 60 s
    src = tmp_path / "p.jsonl"
    write_records(src, make_records(300))
    job = qsync.prepare(src, db=tmp_path / "q.duckdb", collection="c", batch_size=50, embedder="gemini",
                        dimensions=32, qdrant_path=tmp_path / "qdrant")  # fmt: skip
    long_waits: list[str] = []  # "…; trying again in 59s": a worker is about to wait out a long RetryInfo
    done: list[int] = []  # the batch that got through

    def hear(event: object) -> None:
        if isinstance(event, Notice):
            waits = re.search(r"trying again in (\d+)s", event.text)
            if waits and int(waits.group(1)) >= 10:
                long_waits.append(event.text)
        elif isinstance(event, BatchFinished) and event.outcome == "done":
            done.append(event.batch_no)

    runner = make_runner(job, db=tmp_path / "q.duckdb", settings=replace(FAST, max_attempts=20), listeners=[hear])
    outcome: list[RunResult] = []
    thread = threading.Thread(target=lambda: outcome.append(runner.run()))
    thread.start()
    wait_for(lambda: long_waits and done, timeout=30)
    asked = time.monotonic()
    runner.request_stop()
    thread.join(timeout=10)
    took = time.monotonic() - asked
    assert not thread.is_alive() and took < 1.0, took
    assert outcome[0].status == "paused"
    info = qsync.status(job, db=tmp_path / "q.duckdb")
    assert info["batches_running"] == 0 and info["loaded_records"] == 50


def test_a_run_loads_its_qdrant_edge_shard_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The collection checked before a new job is planned is the one its run writes to: one Edge host process, one
    load of the shard (seconds at millions of points), for a new job and for a re-sync alike."""
    loads = count_shard_loads(monkeypatch)
    src = tmp_path / "docs.jsonl"
    write_records(src, make_records(300))
    assert _run(src, tmp_path, embedder="hash").status == "completed"
    assert len(loads) == 1
    write_records(src, make_records(400))  # a re-sync: 100 new records
    result = _run(src, tmp_path, embedder="hash")
    assert (result.status, result.run_records, len(loads)) == ("completed", 100, 2)
    assert qsync.status(result.job_id, db=tmp_path / "q.duckdb")["loaded_records"] == 100


def test_a_run_from_a_notebook_loads_its_shard_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a Jupyter kernel runs (`qsync.start`, and `qsync.run` showing its progress) opens the job as `qsync run`
    does: the shard that checked the collection before planning is the one the run writes to, loaded once."""
    from qsync import api

    loads = count_shard_loads(monkeypatch)
    src, db = tmp_path / "docs.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(300))
    options: dict[str, Any] = {"db": db, "qdrant_path": tmp_path / "qdrant", "collection": "c", "embedder": "hash",
                               "dimensions": 32, "settings": FAST}  # fmt: skip
    handle = qsync.start(src, progress=False, **options)
    result = handle.wait(60)
    assert result is not None and result.ok and len(loads) == 1
    write_records(src, make_records(400))  # a re-sync, run as in a kernel: its progress shown where the cell is
    monkeypatch.setattr(api, "_in_notebook", lambda: True)
    result = qsync.run(src, **options)
    assert (result.status, result.run_records, len(loads)) == ("completed", 100, 2)
    assert qsync.status(result.job_id, db=db)["loaded_records"] == 100


def test_a_resync_keeps_one_points_row_per_point_for_changed_and_new_records(tmp_path: Path) -> None:
    """Batches of a re-sync's new records skip deleting earlier `points` rows (a scan of the whole table); batches of
    changed records still replace theirs: the ledger says once what the collection holds, and the next re-sync finds
    every record unchanged."""
    from qsync.ledger.ledger import Ledger

    src = tmp_path / "docs.jsonl"
    records = make_records(400)
    write_records(src, records)
    assert _run(src, tmp_path, embedder="hash", batch_size=50).ok
    edited = [{**r, "text": "EDITED " + r["text"]} if i % 10 == 0 else r for i, r in enumerate(records)]
    write_records(src, edited + make_records(200, start=400))  # 40 changed records, 200 new ones
    result = _run(src, tmp_path, embedder="hash", batch_size=50)
    assert (result.ok, result.run_records) == (True, 240)
    with Ledger(tmp_path / "q.duckdb") as ledger:
        rows, points = ledger.query_rows("SELECT count(*), count(DISTINCT point_id) FROM points")[0]
    assert rows == points == 600
    again = _run(src, tmp_path, embedder="hash", batch_size=50)
    assert qsync.status(again.job_id, db=tmp_path / "q.duckdb")["unchanged_records"] == 600


def test_a_resync_rewrites_a_record_whose_payload_alone_changed_without_embedding_it(tmp_path: Path) -> None:
    """A point remembers the hash of its payload as planned: a re-sync where only a payload column changed writes
    those records again (nothing embedded: their texts are cached) and leaves the others unchanged; the re-sync after
    it finds every record unchanged."""
    from qsync_testing import qdrant_points

    from qsync.ledger.ledger import Ledger

    src = tmp_path / "docs.jsonl"
    records = make_records(300)
    write_records(src, records)
    assert _run(src, tmp_path, embedder="hash", batch_size=50, payload_columns=["n"]).ok
    write_records(src, [{**r, "n": r["n"] + 1000} if i % 10 == 0 else r for i, r in enumerate(records)])
    result = _run(src, tmp_path, embedder="hash", batch_size=50, payload_columns=["n"])
    info = qsync.status(result.job_id, db=tmp_path / "q.duckdb")
    assert (result.ok, result.run_records, info["unchanged_records"], info["embedded_texts"]) == (True, 30, 270, 0)
    points = qdrant_points(tmp_path / "qdrant", "c")
    assert sorted(payload["n"] for _, payload in points.values())[-3:] == [1270, 1280, 1290]
    with Ledger(tmp_path / "q.duckdb") as ledger:  # computed when read, not written with the plan (a 2M plan's WAL)
        assert ledger.query_rows("SELECT count(payload_hash) FROM manifest") == [(0,)]
    again = _run(src, tmp_path, embedder="hash", batch_size=50, payload_columns=["n"])
    assert qsync.status(again.job_id, db=tmp_path / "q.duckdb")["unchanged_records"] == 300


def _count_whole_file_reads(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[Path]]:
    """The CLI's module, and the list each integrity check (a read of the whole checkpoint file) appends its file to,
    wherever it runs: the CLI's start-up, app.jobs, the runner."""
    import importlib

    from qsync.app import jobs
    from qsync.engine import runner
    from qsync.ledger import integrity

    cli = importlib.import_module("qsync.cli.main")  # the module (qsync.cli's `main` is its function)
    checks: list[Path] = []
    check = integrity.check

    def counting(ledger: Any) -> None:
        checks.append(ledger.path)
        check(ledger)

    for module in (jobs, runner):
        monkeypatch.setattr(module, "check_integrity", counting, raising=False)
    # The CLI's start-up: its name for the check if it imported one, else the check it imports when it runs.
    monkeypatch.setattr(cli, "check", counting, raising=False)
    monkeypatch.setattr(integrity, "check", counting)
    return cli, checks


def test_qsync_run_reads_the_whole_checkpoint_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The integrity check (every block of every table read: seconds at 2M records) runs once for `qsync run`, before
    anything is planned into the file; and a damaged file is still told before planning (test_ledger_faults)."""
    cli, checks = _count_whole_file_reads(monkeypatch)
    src, db = tmp_path / "docs.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(120))
    for _ in range(2):  # a new job, then a re-sync of a file that holds one
        code = cli.main(["run", "--source", str(src), "--collection", "c", "--db", str(db), "--embedder", "hash",
                         "--dimensions", "16", "--quiet"])  # fmt: skip
        assert code == 0
    assert checks == [db, db]


def test_qsync_resume_reads_the_whole_checkpoint_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`qsync resume` checks the file before it runs (as every command that reads one does), and its runner does not
    read it all again."""
    cli, checks = _count_whole_file_reads(monkeypatch)
    src, db = tmp_path / "docs.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(120))
    planned = create_job(src, db=db, collection="c", embedder="hash", dimensions=16, qdrant_path=tmp_path / "qdrant")
    assert checks == []  # planned, not run
    assert cli.main(["resume", planned.job_id, "--db", str(db), "--quiet"]) == 0
    assert checks == [db]
    assert qsync.status(planned.job_id, db=db)["loaded_records"] == 120
