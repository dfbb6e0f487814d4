"""Full and read-only disks, made real: small filesystems mounted for the test (root only; skipped with the reason
otherwise). Qdrant Edge dies with SIGBUS writing to a full disk or a folder made immutable, DuckDB leaves its
database unusable after a failed checkpoint: qsync must stop before, with a message that says where and what to
run, leave the job resumable, and resume it correctly once there is room."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from qsync_testing import make_records, qsync_cmd, qsync_env, run_qsync, status_json, wait_for, write_records

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def _can_mount() -> str | None:
    if os.geteuid() != 0:
        return "mounting a small filesystem needs root"
    if not shutil.which("mount") or not shutil.which("mkfs.ext4") or not shutil.which("chattr"):
        return "mount, mkfs.ext4 or chattr is missing"
    return None


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[object]:
    """mount(kind, size_mb) -> a fresh folder on a filesystem of that size; grow(folder, size_mb) for tmpfs."""
    reason = _can_mount()
    if reason:
        pytest.skip(reason)
    mounted: list[Path] = []

    class Mounts:
        def mount(self, kind: str, size_mb: int) -> Path:
            where = tmp_path / f"fs{len(mounted)}"
            where.mkdir()
            if kind == "tmpfs":
                subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)], check=True)
            else:
                image = tmp_path / f"fs{len(mounted)}.img"
                subprocess.run(["truncate", "-s", f"{size_mb}M", str(image)], check=True)
                subprocess.run(["mkfs.ext4", "-q", "-m", "0", str(image)], check=True)
                subprocess.run(["mount", "-o", "loop", str(image), str(where)], check=True)
            mounted.append(where)
            return where

        def grow(self, where: Path, size_mb: int) -> None:
            subprocess.run(["mount", "-o", f"remount,size={size_mb}m", str(where)], check=True)

    yield Mounts()
    for where in reversed(mounted):
        subprocess.run(["chattr", "-R", "-i", str(where)], check=False, capture_output=True)
        subprocess.run(["umount", "-l", str(where)], check=False)


def _run_args(src: Path, db: Path, qdrant: Path, *extra: str) -> list[str]:
    return ["run", "--source", str(src), "--collection", "c", "--job", "j", "--db", str(db), "--qdrant-path",
            str(qdrant), "--dimensions", "768", "--embedder", "hash", "--quiet", *extra]  # fmt: skip


def _assert_clean_stop(out: subprocess.CompletedProcess[str], where: str) -> None:
    assert out.returncode == 1, (out.returncode, out.stderr[-2000:])  # not -7: no SIGBUS
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert where in out.stderr and "qsync resume j" in out.stderr, out.stderr[-2000:]


def test_a_full_disk_under_the_qdrant_shard_stops_cleanly_and_the_job_resumes(tmp_path: Path, small_fs: object) -> None:
    mounts = small_fs
    qdrant = mounts.mount("tmpfs", 48) / "qdrant"  # type: ignore[attr-defined]
    src, db = tmp_path / "src.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(20000))
    out = run_qsync(*_run_args(src, db, qdrant), timeout=300)
    _assert_clean_stop(out, "the disk is full at")
    info = status_json(db, "j")
    assert info["status"] == "paused" and 0 < info["loaded_records"] < 20000, info
    mounts.grow(qdrant.parent, 200)  # type: ignore[attr-defined]
    again = run_qsync("resume", "j", "--db", str(db), "--quiet", timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    done = status_json(db, "j")
    assert done["status"] == "completed" and done["loaded_records"] == 20000
    assert done["embedded_texts"] == 20000  # the vectors of the stopped batches came from the cache
    assert run_qsync("verify", "j", "--db", str(db)).returncode == 0


def test_a_full_disk_under_the_checkpoint_file_stops_cleanly_and_the_job_resumes(
    tmp_path: Path, small_fs: object
) -> None:
    mounts = small_fs
    folder = mounts.mount("tmpfs", 48)  # type: ignore[attr-defined]
    src, db = tmp_path / "src.jsonl", folder / "q.duckdb"
    write_records(src, make_records(20000))
    out = run_qsync(*_run_args(src, db, tmp_path / "qdrant"), timeout=300)
    _assert_clean_stop(out, "the disk is full at")
    info = status_json(db, "j")
    assert info["status"] in ("paused", "stale") and info["loaded_records"] < 20000, info
    mounts.grow(folder, 300)  # type: ignore[attr-defined]
    again = run_qsync("resume", "j", "--db", str(db), "--quiet", timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    done = status_json(db, "j")
    assert done["status"] == "completed" and done["loaded_records"] == 20000
    assert run_qsync("verify", "j", "--db", str(db)).returncode == 0


def test_a_shard_made_read_only_mid_run_stops_cleanly_and_the_job_resumes(tmp_path: Path, small_fs: object) -> None:
    mounts = small_fs
    qdrant = mounts.mount("ext4", 200) / "qdrant"  # type: ignore[attr-defined]
    src, db = tmp_path / "src.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(4000))
    # 40 calls of 0.25 s, 2 at a time: the run cannot end within 4.5 s of its first 200 records, time enough to
    # make the shard read-only mid-run even on a busy machine.
    args = _run_args(src, db, qdrant, "--simulate-latency", "0.25", "--concurrency", "2")
    proc = subprocess.Popen(qsync_cmd(*args), env=qsync_env(), stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (db.exists() and _loaded(db)) >= 200, timeout=120)
        subprocess.run(["chattr", "-R", "+i", str(qdrant / "c")], check=True)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1 and proc.returncode != -signal.SIGBUS, (proc.returncode, err[-2000:])
    assert "read-only or not permitted" in err and "Traceback" not in err, err[-2000:]
    subprocess.run(["chattr", "-R", "-i", str(qdrant / "c")], check=True)
    again = run_qsync("resume", "j", "--db", str(db), "--quiet", timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert status_json(db, "j")["loaded_records"] == 4000
    assert run_qsync("verify", "j", "--db", str(db)).returncode == 0


def _loaded(db: Path) -> int:
    out = run_qsync("status", "j", "--db", str(db), "--json")
    if out.returncode != 0:
        return 0
    import json

    return int(json.loads(out.stdout)["loaded_records"])
