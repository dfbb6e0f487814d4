"""Qdrant: verify and repair, incremental re-sync, collection options, named vectors, a sink away for a while."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qsync_testing import make_records, qdrant_points, qsync_env, sdk_emulator, write_records

import qsync
from qsync.embedders.hashing import hash_vector
from qsync.engine.runner import RunResult
from qsync.errors import ConfigError, TransientError
from qsync.sink.factory import open_sink as QdrantSink
from qsync.sink.shards import open_shard
from qsync.spec.settings import RunSettings
from qsync.spec.target import CollectionOptions, SinkSpec, point_id
from qsync.testing.emulator import GeminiEmulator
from qsync.testing.gemini_model import emulated_vector

SECRET = "qdrant-test-key"
FAST = RunSettings(concurrency=2, retry_base_s=0.01, retry_max_s=0.05, heartbeat_s=0.2, texts_per_minute=10**7)


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[GeminiEmulator]:
    with sdk_emulator(monkeypatch, SECRET) as emu:
        yield emu


def _embedded(emu: GeminiEmulator) -> int:
    return sum(emu.texts_embedded.values())


def _run(src: Path, tmp_path: Path, **options: Any) -> RunResult:
    options.setdefault("dimensions", 32)
    result: RunResult = qsync.run(
        src, collection=options.pop("collection", "c"), db=tmp_path / "q.duckdb", qdrant_path=tmp_path / "qdrant",
        settings=FAST, **options,
    )  # fmt: skip
    return result


def _collection(tmp_path: Path, name: str = "c", vector: str | None = None) -> dict[str, tuple[Any, dict[str, Any]]]:
    points = qdrant_points(tmp_path / "qdrant", name, vector)
    return {str(payload["id"]): (v, payload) for v, payload in points.values() if payload}


def _unit(v: np.ndarray) -> np.ndarray:
    unit: np.ndarray = v / np.linalg.norm(v)
    return unit


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

    removed = ["r3", "r77", "r150", "r151", "r399"]
    with open_shard(tmp_path / "qdrant" / "c") as shared:  # behind qsync's back, straight into the shard
        shared.update(0, "delete", [point_id(r) for r in removed])
        shared.update(0, "set_payload", point_id("r10"), {"id": "someone-else"})
        stranger = np.full((1, 32), 0.1, dtype=np.float32)
        shared.durable(shared.upsert([point_id("stranger")], None, stranger, [{}]))

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
    hashed, gemini = qdrant_points(tmp_path / "qdrant", "c", "hash"), qdrant_points(tmp_path / "qdrant", "c", "gemini")
    assert len(hashed) == 120
    for pid, (vector, payload) in hashed.items():
        text = records[int(payload["id"][1:])]["text"]
        np.testing.assert_allclose(vector, hash_vector(text, 16), atol=1e-5)
        np.testing.assert_allclose(gemini[pid][0], _unit(emulated_vector("gemini-embedding-001", text, 32)), atol=1e-5)
    assert qsync.verify("hash", db=tmp_path / "q.duckdb").ok and qsync.verify("gem", db=tmp_path / "q.duckdb").ok

    # Qdrant Edge adds a named vector the shard lacks; the points keep the vectors they had.
    assert _run(src, tmp_path, job="third", embedder="hash", dimensions=8, vector_name="third").ok
    config = json.loads((tmp_path / "qdrant" / "c" / "edge_config.json").read_text())
    assert set(config["vectors"]) == {"hash", "gemini", "third"} and config["vectors"]["third"]["size"] == 8
    third, still = qdrant_points(tmp_path / "qdrant", "c", "third"), qdrant_points(tmp_path / "qdrant", "c", "gemini")
    assert len(third) == 120
    for pid, (vector, payload) in third.items():
        text = records[int(payload["id"][1:])]["text"]
        np.testing.assert_allclose(vector, hash_vector(text, 8), atol=1e-5)
        np.testing.assert_allclose(still[pid][0], gemini[pid][0])
    assert qsync.verify("third", db=tmp_path / "q.duckdb").ok and qsync.verify("gem", db=tmp_path / "q.duckdb").ok
    assert emulator.requests["batchEmbedContents"] == 2


def test_a_qdrant_server_refuses_to_add_a_named_vector(tmp_path: Path) -> None:
    # qdrant-client's in-memory Qdrant behaves as a server does here: no named vector added after creation.
    spec = SinkSpec(path=":memory:")
    first = QdrantSink(spec, "named-refusal", 4, CollectionOptions(vector_name="a"))
    first.ensure_collection()
    second = QdrantSink(spec, "named-refusal", 4, CollectionOptions(vector_name="b"))
    with pytest.raises(ConfigError, match="cannot add one to an existing collection"):
        second.ensure_collection()
    first.close()
    second.close()


def test_collection_options_and_a_distance_mismatch(tmp_path: Path) -> None:
    src = tmp_path / "src.jsonl"
    write_records(src, make_records(50))
    assert _run(src, tmp_path, embedder="hash", distance="dot", on_disk=True, payload_indexes=["n:integer"],
                payload_columns=["n"]).ok  # fmt: skip
    config = json.loads((tmp_path / "qdrant" / "c" / "edge_config.json").read_text())
    assert config["vectors"] == {"": {"size": 32, "distance": "Dot", "on_disk": True}}
    with open_shard(tmp_path / "qdrant" / "c") as shared:
        assert shared.call("payload_schema") == {"n": "PayloadSchemaType.Integer"}
    # Refused before a job is even planned: nothing is left behind that could only fail.
    with pytest.raises(ConfigError, match="holds vectors of size 32, but this job makes 48"):
        _run(src, tmp_path, job="wider", embedder="hash", distance="dot", dimensions=48)
    with pytest.raises(ConfigError, match="uses Dot distance, but this job asks for Cosine"):
        _run(src, tmp_path, job="cosine", embedder="hash")
    assert list(qsync.jobs(db=tmp_path / "q.duckdb")["job"]) == ["c:src"]


# What holds the shard: another qsync process (qsync's own folder lock), or any program using Qdrant Edge
# directly (Edge's lock on wal/). The holder writes after the waiter has tried: a failed second load of an
# open shard deletes files under the holder, so its last flush fails if the waiter ever tried to load.
HOLDERS = {
    "qsync": """
        from qsync.sink.factory import open_sink as QdrantSink
        from qsync.spec.target import SinkSpec
        sink = QdrantSink(SinkSpec(path=QDRANT), "c", 16)
        sink.ensure_collection()
        print("holding", flush=True)
        time.sleep(1.5)
        sink.upsert(["held"], np.ones((1, 16), dtype=np.float32), [{"id": "held"}])
        sink.close()
    """,
    "edge": """
        from qdrant_edge import Distance, EdgeConfig, EdgeShard, EdgeVectorParams, Point, UpdateOperation
        shard = EdgeShard.create(QDRANT + "/c", EdgeConfig(vectors=EdgeVectorParams(16, Distance.Cosine)))
        print("holding", flush=True)
        time.sleep(1.5)
        shard.update(UpdateOperation.upsert_points([Point(1, [1.0] * 16, {"id": "held"})]))
        shard.flush()
        shard.close()
    """,
}


@pytest.mark.reliability
@pytest.mark.parametrize("holder_kind", sorted(HOLDERS))
def test_a_qdrant_folder_held_by_another_process_is_waited_for(tmp_path: Path, holder_kind: str) -> None:
    src, qdrant = tmp_path / "src.jsonl", tmp_path / "qdrant"
    write_records(src, make_records(200))
    code = f"import time\nimport numpy as np\nQDRANT = {str(qdrant)!r}\n" + textwrap.dedent(HOLDERS[holder_kind])
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=qsync_env())
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    started = time.monotonic()
    result = qsync.run(src, collection="c", job="j", db=tmp_path / "q.duckdb", qdrant_path=qdrant, embedder="hash",
                       dimensions=16, settings=RunSettings(concurrency=2, retry_base_s=0.3, retry_max_s=1.0))  # fmt: skip
    assert holder.wait() == 0  # its writes after our attempts were flushed: nothing of its shard was damaged
    assert result.ok, result.message
    assert time.monotonic() - started > 0.8  # it waited for the folder instead of failing the job
    assert qsync.verify("j", db=tmp_path / "q.duckdb").ok
    assert len(qdrant_points(qdrant, "c")) == 201  # the holder's point and the job's


def test_a_busy_shard_is_a_transient_error_naming_the_folder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import time\nQDRANT = {str(tmp_path)!r}\n" + textwrap.dedent("""
            from qsync.sink.factory import open_sink as QdrantSink
            from qsync.spec.target import SinkSpec
            sink = QdrantSink(SinkSpec(path=QDRANT), "c", 4)
            sink.ensure_collection()
            print("holding", flush=True)
            input()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=qsync_env(),
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    try:
        with pytest.raises(TransientError, match=r"shard .*/c is in use by another process"):
            QdrantSink(SinkSpec(path=str(tmp_path)), "c", 4).ensure_collection()
    finally:
        holder.communicate("\n")


def test_an_old_local_mode_folder_is_refused_with_how_to_move(tmp_path: Path) -> None:
    from qdrant_client import QdrantClient

    src, old = tmp_path / "src.jsonl", tmp_path / "qdrant"
    write_records(src, make_records(60))
    client = QdrantClient(path=str(old))  # the format qsync wrote before Qdrant Edge
    client.close()
    assert (old / "meta.json").exists()
    with pytest.raises(ConfigError, match="old format") as refused:  # before a job is even planned
        _run(src, tmp_path, job="j", embedder="hash")
    assert "new --qdrant-path" in str(refused.value)
    moved = qsync.run(src, collection="c", job="moved", db=tmp_path / "q.duckdb", qdrant_path=tmp_path / "edge",
                      embedder="hash", dimensions=32, settings=RunSettings(**FAST.__dict__))  # fmt: skip
    assert moved.ok and qsync.verify("moved", db=tmp_path / "q.duckdb").ok


def test_query_finds_the_nearest_point_on_edge_and_in_memory(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    ids = [f"p{i}" for i in range(50)]
    for spec, options in [
        (SinkSpec(path=str(tmp_path)), CollectionOptions()),
        (SinkSpec(path=str(tmp_path)), CollectionOptions(vector_name="v", extra_vectors=("w:3",))),
        (SinkSpec(path=":memory:"), CollectionOptions(distance="euclid")),
    ]:
        collection = f"q-{options.vector_name}-{options.distance}"
        sink = QdrantSink(spec, collection, 8, options)
        sink.ensure_collection()
        sink.upsert(ids, vectors, [{"id": i} for i in ids])
        hits = sink.query(vectors[17] + 0.01, limit=3)
        assert len(hits) == 3 and hits[0].point_id == point_id("p17") and hits[0].payload == {"id": "p17"}
        sink.delete([point_id("p17")])
        assert point_id("p17") not in {h.point_id for h in sink.query(vectors[17], limit=3)}
        assert sum(1 for _ in sink.scan(page=7)) == 49
        sink.close()


def test_backfill_locally_then_publish_to_another_qdrant_with_no_api_call(
    tmp_path: Path, emulator: GeminiEmulator
) -> None:
    """Edge cannot export to a server: publishing is the same job run against the server's URL, every vector
    from the cache. A server is stood in for by qdrant-client's in-memory mode (same client, same calls)."""
    src = tmp_path / "src.jsonl"
    records = make_records(300)
    write_records(src, records)
    assert _run(src, tmp_path, payload_columns=["n"]).ok
    paid = emulator.requests.copy()
    published = qsync.run(src, collection="c", job="publish", db=tmp_path / "q.duckdb", qdrant_path=":memory:",
                          dimensions=32, payload_columns=["n"], settings=FAST)  # fmt: skip
    assert published.ok, published.message
    assert emulator.requests == paid  # not one API call: every vector came from the cache
    info = qsync.status("publish", db=tmp_path / "q.duckdb")
    assert info["loaded_records"] == 300 and info["embedded_texts"] == 0 and info["cache_hits"] == 300
    report = qsync.verify("publish", db=tmp_path / "q.duckdb")
    assert report.ok and report.present == report.expected == 300
