"""Qdrant: verify and repair, incremental re-sync, collection options, named vectors, a sink away for a while."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import models
from qsync_testing import make_records, qsync_env, write_records

import qsync
from qsync.embedders.hashing import hash_vector
from qsync.emulator import GeminiEmulator, emulated_vector
from qsync.sink import _local_client
from qsync.spec import RunSettings

SECRET = "qdrant-test-key"
FAST = RunSettings(concurrency=2, retry_base_s=0.01, retry_max_s=0.05, heartbeat_s=0.2, texts_per_minute=10**7)


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[GeminiEmulator]:
    emu = GeminiEmulator(api_key=SECRET).start()
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", emu.url)
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    yield emu
    emu.stop()


def _embedded(emu: GeminiEmulator) -> int:
    return sum(emu.texts_embedded.values())


def _run(src: Path, tmp_path: Path, **options: Any) -> qsync.RunResult:
    options.setdefault("dimensions", 32)
    return qsync.run(
        src, collection=options.pop("collection", "c"), db=tmp_path / "q.duckdb", qdrant_path=tmp_path / "qdrant",
        settings=FAST, **options,
    )  # fmt: skip


def _collection(tmp_path: Path, name: str = "c", vector: str | None = None) -> dict[str, tuple[Any, dict[str, Any]]]:
    client = _local_client(str(tmp_path / "qdrant"))
    points, _ = client.scroll(name, limit=100_000, with_vectors=True, with_payload=True)
    return {str(p.payload["id"]): (p.vector[vector] if vector else p.vector, p.payload) for p in points if p.payload}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@pytest.mark.reliability
def test_verify_finds_exactly_the_points_removed_behind_its_back_and_repair_needs_no_embedder(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    src = tmp_path / "src.jsonl"
    records = make_records(400)
    write_records(src, records)
    result = _run(src, tmp_path, job="j")
    assert result.ok
    assert qsync.verify("j", db=tmp_path / "q.duckdb").ok

    client = _local_client(str(tmp_path / "qdrant"))
    removed = ["r3", "r77", "r150", "r151", "r399"]
    client.delete("c", points_selector=models.PointIdsList(points=[qsync.point_id(r) for r in removed]), wait=True)
    client.set_payload("c", payload={"id": "someone-else"}, points=[qsync.point_id("r10")], wait=True)
    client.upsert("c", points=[models.PointStruct(id=qsync.point_id("stranger"), vector=[0.1] * 32, payload={})])

    report = qsync.verify("j", db=tmp_path / "q.duckdb")
    assert not report.ok
    assert (report.expected, report.missing, report.wrong_payload, report.unexpected) == (400, 5, 1, 1)
    assert sorted(report.samples["missing"]) == sorted(removed)
    assert report.samples["wrong_payload"] == ["r10"]

    calls_before = emulator.requests.copy()
    repaired = qsync.verify("j", db=tmp_path / "q.duckdb", repair=True)
    assert repaired.ok and repaired.repaired == 6 and repaired.unrepairable == 0
    assert emulator.requests == calls_before  # not one API call
    after = qsync.verify("j", db=tmp_path / "q.duckdb")
    assert (after.missing, after.wrong_payload, after.unexpected) == (0, 0, 1)  # strangers are reported, not deleted
    points = _collection(tmp_path)
    for r in records:
        np.testing.assert_allclose(points[r["id"]][0], _unit(emulated_vector("gemini-embedding-001", r["text"], 32)),
                                   atol=1e-5)  # fmt: skip


def test_resync_after_editing_one_percent_embeds_exactly_that_and_deletes_what_left(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    src = tmp_path / "src.csv"
    records = make_records(2000)
    write_records(src, records)
    assert _run(src, tmp_path).ok
    assert _embedded(emulator) == 2000

    edited = {f"r{i}" for i in range(0, 2000, 100)}  # 20 records: 1%
    gone = {f"r{i}" for i in range(5, 2000, 200)}  # 10 records leave the source
    new_records = [
        {**r, "text": "EDITED " + r["text"]} if r["id"] in edited else r for r in records if r["id"] not in gone
    ]
    write_records(src, new_records)
    result = _run(src, tmp_path, delete_missing=True)
    assert result.ok and result.job_id == "c:src#2"
    assert _embedded(emulator) == 2020  # exactly the 20 edited texts
    info = qsync.status("c:src#2", db=tmp_path / "q.duckdb")
    assert info["unchanged_records"] == 1970 and info["loaded_records"] == 20 and info["deleted_records"] == 10
    assert info["processed_records"] == info["total_records"] == 1990

    points = _collection(tmp_path)
    assert set(points) == {r["id"] for r in new_records}
    for r in new_records:
        np.testing.assert_allclose(points[r["id"]][0], _unit(emulated_vector("gemini-embedding-001", r["text"], 32)),
                                   atol=1e-5)  # fmt: skip
    assert qsync.verify("c:src#2", db=tmp_path / "q.duckdb").ok

    # Nothing changed: the third run writes nothing and costs nothing.
    assert _run(src, tmp_path).ok
    assert _embedded(emulator) == 2020
    assert qsync.status("c:src#3", db=tmp_path / "q.duckdb")["unchanged_records"] == 1990


def test_a_change_of_model_re_embeds_everything_never_skips(tmp_path: Path, emulator: GeminiEmulator) -> None:
    src = tmp_path / "src.jsonl"
    write_records(src, make_records(150))
    assert _run(src, tmp_path).ok
    assert _run(src, tmp_path, model="text-embedding-exp", embedder_options={"price_per_million_tokens": 0.1}).ok
    info = qsync.status("c:src#2", db=tmp_path / "q.duckdb")
    assert info["unchanged_records"] == 0 and info["loaded_records"] == 150
    assert emulator.requests["batchEmbedContents"] == 4  # 2 batches per model


def test_two_models_share_points_through_named_vectors(tmp_path: Path, emulator: GeminiEmulator) -> None:
    src = tmp_path / "src.jsonl"
    records = make_records(120)
    write_records(src, records)
    assert _run(src, tmp_path, job="hash", embedder="hash", dimensions=16, vector_name="hash",
                extra_vectors=["gemini:32"], payload_columns=["n"]).ok  # fmt: skip
    assert _run(src, tmp_path, job="gem", vector_name="gemini", payload_columns=["n"]).ok
    client = _local_client(str(tmp_path / "qdrant"))
    points, _ = client.scroll("c", limit=1000, with_vectors=True, with_payload=True)
    assert len(points) == 120
    for p in points:
        assert p.payload is not None and isinstance(p.vector, dict)
        text = records[int(p.payload["id"][1:])]["text"]
        np.testing.assert_allclose(p.vector["hash"], hash_vector(text, 16), atol=1e-5)
        np.testing.assert_allclose(p.vector["gemini"], _unit(emulated_vector("gemini-embedding-001", text, 32)),
                                   atol=1e-5)  # fmt: skip
    assert qsync.verify("hash", db=tmp_path / "q.duckdb").ok and qsync.verify("gem", db=tmp_path / "q.duckdb").ok
    refused = _run(src, tmp_path, job="third", vector_name="other")
    assert refused.status == "failed" and "cannot add one to an existing collection" in (refused.message or "")
    assert emulator.requests["batchEmbedContents"] == 2  # refused before any embedding


def test_collection_options_and_a_distance_mismatch(tmp_path: Path) -> None:
    src = tmp_path / "src.jsonl"
    write_records(src, make_records(50))
    assert _run(src, tmp_path, embedder="hash", distance="dot", on_disk=True, payload_indexes=["n:integer"],
                payload_columns=["n"]).ok  # fmt: skip
    info = _local_client(str(tmp_path / "qdrant")).get_collection("c")
    vectors = info.config.params.vectors
    assert vectors.distance == models.Distance.DOT and vectors.on_disk  # type: ignore[union-attr]
    result = _run(src, tmp_path, job="cosine", embedder="hash")
    assert result.status == "failed" and "uses Dot distance, but this job asks for Cosine" in (result.message or "")


@pytest.mark.reliability
def test_a_qdrant_folder_held_by_another_process_is_waited_for(tmp_path: Path) -> None:
    src, qdrant = tmp_path / "src.jsonl", tmp_path / "qdrant"
    write_records(src, make_records(200))
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from qdrant_client import QdrantClient
            client = QdrantClient(path={str(qdrant)!r})
            print("holding", flush=True)
            time.sleep(1.5)
        """)],
        stdout=subprocess.PIPE, text=True, env=qsync_env(),
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    started = time.monotonic()
    result = qsync.run(src, collection="c", job="j", db=tmp_path / "q.duckdb", qdrant_path=qdrant, embedder="hash",
                       dimensions=16, settings=RunSettings(concurrency=2, retry_base_s=0.3, retry_max_s=1.0))  # fmt: skip
    assert holder.wait() == 0
    assert result.ok, result.message
    assert time.monotonic() - started > 0.8  # it waited for the folder instead of failing the job
    assert qsync.verify("j", db=tmp_path / "q.duckdb").ok
