"""An existing Qdrant Edge shard loads (seconds at millions of points) while a job is planned, not before; the
collection is still checked before the plan commits, and a refusal leaves nothing planned."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from qsync_testing import make_records, write_records

from qsync.app.jobs import create_job, prepare
from qsync.errors import ConfigError, QsyncError
from qsync.ledger.ledger import Ledger


def test_an_existing_shard_loads_while_the_job_is_planned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qsync.input import plan
    from qsync.sink import shards

    src, db = tmp_path / "docs.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(60))
    options: dict[str, Any] = {"collection": "c", "db": db, "embedder": "hash", "dimensions": 16}
    create_job(src, job="first", **options)  # the shard exists from here on
    planning, loading_started = threading.Event(), threading.Event()
    during: list[bool] = []
    acquire, check_records = shards.acquire, plan.check_records

    def loading(path: Path, new_config: dict[str, Any] | None = None) -> shards.SharedShard:
        loading_started.set()
        during.append(planning.wait(timeout=60))  # a load finished before the planning would wait here in vain
        return acquire(path, new_config)

    def checking(*args: Any, **kwargs: Any) -> Any:
        planning.set()
        during.append(loading_started.wait(timeout=60))  # and one started after it, here
        return check_records(*args, **kwargs)

    monkeypatch.setattr(shards, "acquire", loading)
    monkeypatch.setattr(plan, "check_records", checking)
    write_records(src, make_records(80))
    assert prepare(src, job="second", **options) == "second"
    assert during == [True, True]  # loaded once, while the source was read and checked


def test_a_collection_refused_before_the_plan_commits_leaves_nothing_planned(tmp_path: Path) -> None:
    src, db = tmp_path / "docs.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(30))
    create_job(src, collection="c", job="narrow", db=db, embedder="hash", dimensions=32)
    with pytest.raises(ConfigError, match="holds vectors of size 32, but this job makes 64"):
        create_job(src, collection="c", job="wide", db=db, embedder="hash", dimensions=64)
    with Ledger(db) as ledger:
        jobs = ledger.query_rows("SELECT job_id FROM jobs")
        rows = ledger.query_rows("SELECT count(*) FROM manifest WHERE job_id = 'wide'")
    assert jobs == [("narrow",)] and rows == [(0,)]


def test_a_shard_that_cannot_be_loaded_ahead_is_told_by_its_first_use_and_nothing_is_planned(tmp_path: Path) -> None:
    # The shard's config is damaged: its load in the background fails (silently: told by the first use), the check
    # before the plan commits loads it again, and its error says which shard and which file.
    src, db = tmp_path / "docs.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(30))
    options: dict[str, Any] = {"collection": "c", "db": db, "embedder": "hash", "dimensions": 16}
    create_job(src, job="first", **options)
    config = tmp_path / "q.qdrant" / "c" / "edge_config.json"
    config.write_text('{"garbage')
    with pytest.raises(QsyncError, match=r"Qdrant Edge failed on the shard .*q\.qdrant/c: .*edge_config\.json"):
        prepare(src, job="second", **options)
    with Ledger(db) as ledger:
        assert ledger.query_rows("SELECT job_id FROM jobs") == [("first",)]


def test_a_load_ahead_that_fails_once_is_made_again_by_the_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qsync.sink import shards

    src, db = tmp_path / "docs.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(30))
    options: dict[str, Any] = {"collection": "c", "db": db, "embedder": "hash", "dimensions": 16}
    create_job(src, job="first", **options)
    acquire, calls = shards.acquire, []

    def failing_once(path: Path, new_config: dict[str, Any] | None = None) -> shards.SharedShard:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            raise OSError("Too many open files")  # the load ahead meets a passing fault
        return acquire(path, new_config)

    monkeypatch.setattr(shards, "acquire", failing_once)
    write_records(src, make_records(40))
    assert prepare(src, job="second", **options) == "second"
    assert calls[0] == "qsync-edge-open" and len(calls) == 2  # loaded again by the check, once


def test_in_memory_qdrant_is_imported_while_the_job_is_planned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # qdrant-client's import (~0.6 s) happens on a thread while the source is read and checked, not before planning.
    from qsync.input import plan
    from qsync.sink import client

    src, db = tmp_path / "docs.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(40))
    planning, making_started = threading.Event(), threading.Event()
    during: list[tuple[str, bool]] = []
    memory_client, check_records = client._memory_client, plan.check_records

    def making() -> Any:
        if not making_started.is_set():  # the first making; the first use asks for the client made, later
            making_started.set()
            during.append((threading.current_thread().name, planning.wait(timeout=60)))
        return memory_client()

    def checking(*args: Any, **kwargs: Any) -> Any:
        planning.set()
        during.append(("planning", making_started.wait(timeout=60)))
        return check_records(*args, **kwargs)

    monkeypatch.setattr(client, "_memory_client", making)
    monkeypatch.setattr(plan, "check_records", checking)
    collection = f"ahead_{tmp_path.name}"  # one in-memory Qdrant per process, shared by the tests it runs
    prepare(src, job="mem", collection=collection, db=db, qdrant_path=":memory:", embedder="hash", dimensions=16)
    assert sorted(during) == [("planning", True), ("qsync-qdrant-import", True)]


def test_an_in_memory_collection_refused_before_the_plan_commits_leaves_nothing_planned(tmp_path: Path) -> None:
    src, db = tmp_path / "docs.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(30))
    options: dict[str, Any] = {"collection": f"narrow_{tmp_path.name}", "db": db, "qdrant_path": ":memory:"}
    create_job(src, job="narrow", embedder="hash", dimensions=32, **options)
    with pytest.raises(ConfigError, match="holds vectors of size 32, but this job makes 64"):
        create_job(src, job="wide", embedder="hash", dimensions=64, **options)
    with Ledger(db) as ledger:
        assert ledger.query_rows("SELECT job_id FROM jobs") == [("narrow",)]


def test_a_server_is_asked_before_planning_not_during_it() -> None:
    from qsync.sink.client import ClientSink
    from qsync.sink.protocol import open_soon
    from qsync.spec.target import CollectionOptions, SinkSpec

    sink = ClientSink(SinkSpec(url="http://127.0.0.1:9"), "c", 8, CollectionOptions())
    assert open_soon(sink) is False and sink._opening is None  # nothing started: the check comes first, outside
