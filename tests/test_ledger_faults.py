"""Hostile files, made real: a vector file truncated or deleted, a checkpoint file with random bytes in it, a Qdrant
shard deleted, a folder moved, rows with blank ids or a 50 MB field. Each ends in a message that says what to run,
and the job finishes, paying again only for what was really lost."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
from qsync_testing import make_records, qsync_env, run_qsync, status_json, write_records

from qsync.embedders.hashing import HashingEmbedder, hash_vector
from qsync.embedders.protocol import EmbedResult
from qsync.ledger.cache import lookup_vectors
from qsync.ledger.hosts import stop_host
from qsync.ledger.ledger import Ledger

pytestmark = pytest.mark.reliability

N = 3000


def _run(src: Path, db: Path, *extra: str) -> Any:
    return run_qsync("run", "--source", str(src), "--collection", "c", "--job", "j", "--db", str(db), "--dimensions",
                     "64", "--embedder", "hash", "--quiet", *extra)  # fmt: skip


def _job(tmp_path: Path) -> tuple[Path, Path]:
    src, db = tmp_path / "src.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(N))
    out = _run(src, db)
    assert out.returncode == 0, out.stderr
    return src, db


def test_a_truncated_vector_file_heals_paying_once_more_for_what_it_lost(tmp_path: Path) -> None:
    src, db = _job(tmp_path)
    vectors = db.with_suffix(".vectors")
    assert vectors.stat().st_size == N * 64 * 4
    os.truncate(vectors, 1000 * 64 * 4 + 100)  # the first 1,000 vectors stay whole
    verify = run_qsync("verify", "j", "--db", str(db), "--json")
    report = json.loads(verify.stdout)
    assert verify.returncode == 1 and report["lost_vectors"] == N - 1000
    assert "embed them anew" in report["advice"]
    again = _run(src, db, "--full")
    assert again.returncode == 0, again.stderr
    assert f"{N - 1000:,} cached vectors were missing" in again.stderr
    info = status_json(db, "j#2")
    assert info["status"] == "completed" and info["embedded_texts"] == N - 1000 and info["cache_hits"] == 1000
    assert run_qsync("verify", "j#2", "--db", str(db)).returncode == 0


def test_a_deleted_vector_file_heals_and_no_cache_row_points_into_the_new_one(tmp_path: Path) -> None:
    src, db = _job(tmp_path)
    db.with_suffix(".vectors").unlink()
    again = _run(src, db, "--full")
    assert again.returncode == 0, again.stderr
    assert status_json(db, "j#2")["embedded_texts"] == N  # everything it lost, paid once more
    third = _run(src, db, "--full")  # and now the cache is whole again: nothing to pay
    assert third.returncode == 0 and status_json(db, "j#3")["embedded_texts"] == 0
    assert run_qsync("verify", "j#3", "--db", str(db)).returncode == 0


def test_a_damaged_checkpoint_file_is_told_by_every_command_and_recovered(tmp_path: Path) -> None:
    src, db = _job(tmp_path)
    stop_host(db)  # damage while nobody has the file open (a host keeps the blocks it has read in memory)
    with duckdb.connect(str(db), read_only=True) as con:  # where the batches table's data blocks are
        blocks = [r[0] for r in con.execute(
            "SELECT DISTINCT block_id FROM pragma_storage_info('batches') WHERE block_id >= 0 ORDER BY 1"
        ).fetchall()]  # fmt: skip
        block_size = con.execute("SELECT block_size FROM pragma_database_size()").fetchone()[0]  # type: ignore[index]
    assert blocks
    with db.open("r+b") as fh:  # random bytes mid-block (after the file's three 4 KiB headers)
        fh.seek(3 * 4096 + blocks[len(blocks) // 2] * block_size + block_size // 2)
        fh.write(os.urandom(4096))
    for command in (["status"], ["jobs"], ["cost", "j"], ["verify", "j"], ["batches", "j"], ["resume", "j"]):
        out = run_qsync(*command, "--db", str(db))
        assert out.returncode == 1, (command, out.stdout)
        assert "is damaged" in out.stderr and f"qsync recover --db {db}" in out.stderr, (command, out.stderr)
        assert "Traceback" not in out.stderr and out.stderr.count("\n") <= 2, out.stderr
    recovered = run_qsync("recover", "--db", str(db))
    assert recovered.returncode == 0, recovered.stderr
    assert "damaged file is kept as" in recovered.stdout
    assert list(tmp_path.glob("q.duckdb.damaged-*"))
    again = _run(src, db)  # a re-sync: what the damage lost is written again, from the cache
    assert again.returncode == 0, again.stderr
    newest = json.loads(run_qsync("status", "--db", str(db), "--json").stdout)
    assert newest["status"] == "completed" and newest["embedded_texts"] <= N
    assert run_qsync("verify", newest["job"], "--db", str(db)).returncode == 0


def test_a_deleted_shard_is_rebuilt_from_the_cache_by_verify_repair(tmp_path: Path) -> None:
    _, db = _job(tmp_path)
    shutil.rmtree(db.with_suffix(".qdrant") / "c")
    report = json.loads(run_qsync("verify", "j", "--db", str(db), "--json").stdout)
    assert report["collection_missing"] and report["missing"] == N and "rebuilds it" in report["advice"]
    repaired = run_qsync("verify", "j", "--db", str(db), "--repair", "--json")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert json.loads(repaired.stdout)["repaired"] == N
    assert run_qsync("verify", "j", "--db", str(db)).returncode == 0


def test_verify_counts_the_job_own_points_and_the_qdrant_folder_moves_with_the_checkpoint(tmp_path: Path) -> None:
    first = tmp_path / "first"
    first.mkdir()
    _, db = _job(first)
    other = first / "other.jsonl"
    write_records(other, make_records(500, start=N))
    out = run_qsync("run", "--source", str(other), "--collection", "c", "--job", "k", "--db", str(db),
                    "--dimensions", "64", "--embedder", "hash", "--quiet")  # fmt: skip
    assert out.returncode == 0, out.stderr
    moved = tmp_path / "moved"
    first.rename(moved)  # the checkpoint, its vectors and its Qdrant folder, together
    report = json.loads(run_qsync("verify", "j", "--db", str(moved / "q.duckdb"), "--json").stdout)
    assert (report["expected"], report["present"], report["other_jobs"], report["ok"]) == (N, N, 500, True)


def test_a_blank_id_is_skipped_with_its_reason_and_a_50_mb_field_cut_into_chunks(tmp_path: Path) -> None:
    src, db = tmp_path / "rows.csv", tmp_path / "q.duckdb"
    with src.open("w") as fh:
        fh.write("id,text\n")
        for i in range(10):
            fh.write(f"r{i},text {i}\n")
        fh.write("   ,a blank id\n")
        fh.write("huge," + "x" * (50 * 1024 * 1024) + "\n")
    out = run_qsync("run", "--source", str(src), "--collection", "c", "--job", "j", "--db", str(db),
                    "--dimensions", "8", "--embedder", "hash", "--quiet")  # fmt: skip
    assert out.returncode == 0, out.stderr[:2000]
    assert len(out.stderr) < 2000  # no megabytes of the field quoted anywhere
    skipped = json.loads(run_qsync("skipped", "j", "--db", str(db), "--json").stdout)
    assert [s["reason"] for s in skipped] == ["id is empty or whitespace"]
    status = status_json(db, "j")
    assert status["loaded_records"] == 11 and status["total_chunks"] > 1000  # the 50 MB field: cut, not skipped


class DamagingEmbedder(HashingEmbedder):
    """The hashing embedder, that truncates (in place: same inode) or deletes the vector file at its first call, as
    a user's `: > q.vectors` or `rm q.vectors` would while a job runs."""

    damaged = False

    def embed(self, texts: list[str]) -> EmbedResult:
        if not DamagingEmbedder.damaged:
            DamagingEmbedder.damaged = True
            path = Path(os.environ["QSYNC_TEST_DAMAGE_PATH"])
            if os.environ["QSYNC_TEST_DAMAGE"] == "truncate":
                os.truncate(path, 0)
            else:
                path.unlink()
        return super().embed(texts)


def damaging_factory(dimensions: int | None = None, latency_s: float = 0.0) -> DamagingEmbedder:
    return DamagingEmbedder(dimensions=dimensions or 64, latency_s=latency_s)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_vector_file_damaged_while_a_job_runs_never_serves_another_texts_vector(tmp_path: Path, damage: str) -> None:
    """Job a caches 300 vectors; job b's first call truncates (or deletes) the vector file, then b appends its own
    from offset 0. No cache row of a may point at b's bytes (a new file may even get the old one's inode)."""
    db = tmp_path / "q.duckdb"
    first, second = make_records(300, prefix="alpha"), make_records(300, start=1000, prefix="beta")
    write_records(tmp_path / "a.jsonl", first)
    write_records(tmp_path / "b.jsonl", second)
    assert _run(tmp_path / "a.jsonl", db).returncode == 0
    env = qsync_env(QSYNC_TEST_DAMAGE=damage, QSYNC_TEST_DAMAGE_PATH=str(db.with_suffix(".vectors")))
    damaged = run_qsync("run", "--source", str(tmp_path / "b.jsonl"), "--collection", "c2", "--job", "b", "--db",
                        str(db), "--dimensions", "64", "--embedder", "test_ledger_faults:damaging_factory", "--quiet",
                        env=env)  # fmt: skip
    assert damaged.returncode == 0, damaged.stderr

    embedder = HashingEmbedder(64)
    with Ledger(db, create=False) as ledger, ledger.reading() as con:
        texts = dict(con.execute("SELECT content_hash, text FROM manifest").fetchall())
        found = lookup_vectors(con, ledger.vectors, embedder, list(texts)).found
    wrong = [h for h, (vector, _) in found.items() if not np.allclose(vector, hash_vector(texts[h], 64), atol=1e-6)]
    assert not wrong, f"{len(wrong)} cached vectors are another text's"
    assert set(found) >= {h for h, t in texts.items() if t in {r["text"] for r in second}}
    again = _run(tmp_path / "a.jsonl", db, "--full")  # a's lost vectors are paid for once more, and right
    assert again.returncode == 0, again.stderr
    assert status_json(db, "j#2")["embedded_texts"] == 300
    assert run_qsync("verify", "j#2", "--db", str(db)).returncode == 0
