"""Real `qsync` processes: SIGKILLed, SIGSTOPped, raced and watched from other processes."""

from __future__ import annotations

import collections
import json
import os
import random
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qsync_testing import (
    ledger_rows,
    make_records,
    qdrant_points,
    qsync_cmd,
    qsync_env,
    read_embed_log,
    run_qsync,
    status_json,
    wait_for,
    write_records,
)

import qsync
from qsync.embedders.hashing import hash_vector
from qsync.ledger.hosts import host_pid, session_holder
from qsync.spec.target import point_id

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

DIMS = 64


def _run_args(src: Path, db: Path, *, batch_size: int = 50, concurrency: int = 3, latency: float = 0.05) -> list[str]:
    return [
        "run", "--source", str(src), "--collection", "docs", "--db", str(db), "--job", "j",
        "--embedder", "qsync_testing:counting_factory", "--dimensions", str(DIMS),
        "--batch-size", str(batch_size), "--concurrency", str(concurrency),
        "--simulate-latency", str(latency), "--payload-columns", "n", "--quiet",
    ]  # fmt: skip


def _processed(db: Path) -> int:
    try:
        return int(qsync.status("j", db=db)["processed_records"])
    except qsync.QsyncError:
        return 0


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(qsync_cmd(*args), env=env, stdout=out, stderr=subprocess.STDOUT)


def _assert_collection_matches(qdrant: Path, expected: dict[str, str], dims: int = DIMS) -> None:
    """Exactly the expected records, once each, each with the vector of its own text."""
    points = qdrant_points(qdrant, "docs")
    assert len(points) == len(expected)
    for record_id, text in expected.items():
        vector, payload = points[point_id(record_id)]
        assert payload["id"] == record_id
        np.testing.assert_allclose(vector, hash_vector(text, dims), atol=1e-5)


def test_sigkill_loop_resumes_exactly_and_never_pays_twice(tmp_path: Path) -> None:
    records = make_records(3000)
    src, db, embed_log = tmp_path / "src.jsonl", tmp_path / "q.duckdb", tmp_path / "embed.log"
    write_records(src, records)
    env = qsync_env(QSYNC_TEST_EMBED_LOG=str(embed_log))
    concurrency, batch_size = 3, 50
    run_args = _run_args(src, db, batch_size=batch_size, concurrency=concurrency)
    rng = random.Random(7)
    kills = 0
    for fraction in (0.1, 0.3, 0.5, 0.7, 0.85):
        proc = _start(run_args, env, tmp_path / "runs.log")
        target = int(fraction * len(records))
        wait_for(lambda t=target, p=proc: _processed(db) >= t or p.poll() is not None, timeout=120, interval=0.01)
        time.sleep(rng.uniform(0, 0.08))  # land anywhere in a batch: mid-embed, mid-upsert, mid-commit
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 4, "the job finished before it could be killed; slow it down"
    final = run_qsync(*run_args, env=env)
    assert final.returncode == 0, final.stderr

    info = qsync.status("j", db=db)
    assert info["status"] == "completed"
    assert info["processed_records"] == len(records)
    _assert_collection_matches(db.with_suffix(".qdrant"), {r["id"]: r["text"] for r in records})

    # Never pay twice: a text may be embedded again only if its first embedding was one of the last
    # `concurrency` calls of a killed process (in flight at the kill, its answer never persisted).
    calls = read_embed_log(embed_log)
    by_pid: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    for call in calls:
        by_pid[call["pid"]].append(call)
    in_flight_at_kill: set[str] = set()
    for pid_calls in list(by_pid.values())[:-1]:
        for call in pid_calls[-concurrency:]:
            in_flight_at_kill.update(call["texts"])
    counts = collections.Counter(t for call in calls for t in call["texts"])
    assert set(counts) == {r["text"] for r in records}
    repeated = {t for t, n in counts.items() if n > 1}
    assert repeated <= in_flight_at_kill, (
        f"{len(repeated - in_flight_at_kill)} texts paid twice outside in-flight calls"
    )
    assert sum(counts.values()) - len(records) <= kills * concurrency * batch_size


def test_resume_finishes_the_planned_snapshot_after_the_source_changed(tmp_path: Path) -> None:
    records = make_records(1200)
    src, db = tmp_path / "src.csv", tmp_path / "q.duckdb"
    write_records(src, records)
    env = qsync_env()
    args = _run_args(src, db, batch_size=40, concurrency=2)
    proc = _start(args, env, tmp_path / "run.log")
    wait_for(lambda: _processed(db) >= 400, timeout=60, interval=0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _processed(db)
    assert 400 <= done_before < 1200

    # Between the kill and the resume: rows deleted (done and not yet done ones), rows inserted at the
    # front (shifting every offset), texts of remaining rows edited.
    changed = [r for r in records if int(r["id"][1:]) % 10 != 3]
    edited = [{**r, "text": "EDITED " + r["text"]} if int(r["id"][1:]) % 11 == 0 else r for r in changed]
    inserted = make_records(150, start=5000, prefix="new")
    write_records(src, inserted + edited)

    resumed = run_qsync("resume", "j", "--db", str(db), env=env)
    assert resumed.returncode == 0, resumed.stderr
    info = qsync.status("j", db=db)
    assert info["status"] == "completed"
    assert info["total_records"] == 1200
    # The collection holds the snapshot taken at plan time: every original row with its original text,
    # none of the rows inserted later.
    _assert_collection_matches(db.with_suffix(".qdrant"), {r["id"]: r["text"] for r in make_records(1200)})


def test_status_from_a_second_process_shows_rising_progress(tmp_path: Path) -> None:
    src, db = tmp_path / "src.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(3000))
    env = qsync_env()
    proc = _start(_run_args(src, db, batch_size=50, concurrency=2, latency=0.25), env, tmp_path / "run.log")
    try:
        seen: list[int] = []
        statuses: set[str] = set()
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline and len(seen) < 6:
            try:
                info = status_json(db, "j", env)
            except AssertionError:
                continue  # not planned yet
            statuses.add(info["status"])
            if info["status"] == "running" and (not seen or info["processed_records"] > seen[-1]):
                seen.append(info["processed_records"])
            time.sleep(0.3)
        assert len(seen) >= 4, f"progress seen from outside: {seen}"
        assert seen == sorted(seen) and len(set(seen)) == len(seen)
        assert statuses <= {"planned", "running", "completed"}  # completed: read while the runner was exiting
    finally:
        assert proc.wait(timeout=120) == 0


def test_second_runner_on_a_live_job_is_refused(tmp_path: Path) -> None:
    src, db = tmp_path / "src.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(1500))
    env = qsync_env()
    proc = _start(_run_args(src, db, concurrency=1, latency=0.2), env, tmp_path / "run.log")
    try:
        wait_for(lambda: _processed(db) > 0, timeout=60)
        second = run_qsync("resume", "j", "--db", str(db), env=env)
        assert second.returncode == 4
        assert f"being run by process {proc.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        third = run_qsync(*_run_args(src, db), env=env)
        assert third.returncode == 4
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_ledger_host_ends_the_run_with_a_message_and_the_job_resumes(tmp_path: Path) -> None:
    """The process that holds the checkpoint file (`python -m qsync.ledger.host`) SIGKILLed mid-run, as a user who
    finds it in `ps` might: the runner stops with a sentence (a new host serves its last writes), and a resume
    finishes the job exactly."""
    src, db, log = tmp_path / "src.jsonl", tmp_path / "q.duckdb", tmp_path / "run.log"
    records = make_records(1500)
    write_records(src, records)
    env = qsync_env()
    proc = _start(_run_args(src, db, concurrency=1, latency=0.3), env, log)
    try:
        wait_for(lambda: _processed(db) >= 100, timeout=60)
        pid = host_pid(db)
        assert pid is not None and pid != proc.pid
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log.read_text()
    assert "ledger host) ended" in out and "Traceback" not in out, out
    resumed = run_qsync("resume", "j", "--db", str(db), env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert qsync.status("j", db=db)["status"] == "completed"
    assert qsync.verify("j", db=db).ok
    _assert_collection_matches(db.with_suffix(".qdrant"), {r["id"]: r["text"] for r in records})


def _stop_while_not_holding_the_store(proc: subprocess.Popen[bytes], db: Path) -> None:
    """SIGSTOP the runner at a moment when it is not inside a transaction (the file's host would serve nobody else
    until it let go of it, 30 s later)."""
    for _ in range(200):
        os.kill(proc.pid, signal.SIGSTOP)
        if session_holder(db) != proc.pid:
            return
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.01 + random.random() * 0.02)
    raise AssertionError("the runner was always inside a transaction")


def test_stale_owner_is_taken_over_and_cannot_write_afterwards(tmp_path: Path) -> None:
    src, db = tmp_path / "src.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(300))
    env = qsync_env(QSYNC_HEARTBEAT_S="0.2", QSYNC_STALE_AFTER_S="1.5")
    # Calls of 1 s: most of the time the runner waits for an answer, outside any transaction, and can be frozen
    # there without holding up the others.
    args = [*_run_args(src, db, batch_size=50, concurrency=1, latency=1.0), "--qdrant-path", ":memory:"]
    old = subprocess.Popen(qsync_cmd(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _processed(db) >= 100, timeout=60)
        time.sleep(0.2)  # into the next embed call
        _stop_while_not_holding_the_store(old, db)
        stale = wait_for(lambda: (s := status_json(db, "j", env))["status"] == "stale" and s, timeout=10)
        assert f"pid {old.pid}" in stale["owner"] and "stopped, or silent too long" in stale["owner"]

        takeover_at = time.time()
        new = run_qsync("resume", "j", "--db", str(db), env=env)
        assert new.returncode == 0, new.stderr
        assert "stopped without finishing" in new.stderr  # the progress bar names the takeover

        before = ledger_rows(db, "SELECT count(*) FROM embeddings")[0][0]
        vectors_before = db.with_suffix(".vectors").read_bytes()
        os.kill(old.pid, signal.SIGCONT)  # it wakes inside an embed call, whose answer it must not save
        _, err = old.communicate(timeout=60)
        assert old.returncode == 1
        assert "stopped without writing" in err.decode()
        assert ledger_rows(db, "SELECT count(*) FROM embeddings")[0][0] == before
        late = ledger_rows(
            db, "SELECT count(*) FROM attempts WHERE owner_pid = ? AND epoch(started_at) > ?", [old.pid, takeover_at]
        )[0][0]
        assert late == 0
        assert db.with_suffix(".vectors").read_bytes() == vectors_before  # not one vector appended by the deposed
        info = status_json(db, "j", env)
        assert info["status"] == "completed" and info["processed_records"] == 300
    finally:
        if old.poll() is None:
            os.kill(old.pid, signal.SIGCONT)
            old.kill()
            old.wait()


def test_demo_runs_offline_and_reports_the_resume(tmp_path: Path) -> None:
    out = run_qsync("demo", "--dir", str(tmp_path / "demo"), timeout=300)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "killed pid" in out.stdout
    assert "status='stale'" in out.stdout
    assert "demo: completed; 5,000 records in Qdrant" in out.stdout
    assert "texts embedded twice because of the kill" in out.stdout
    # Its parting hint works as printed in the shell it ran from, where the README's `.venv/bin/qsync demo` has not
    # put qsync on PATH ("qsync: command not found" was a newcomer's next step).
    [hint] = [line for line in out.stdout.splitlines() if line.startswith("Try: ")]
    status = hint.removeprefix("Try: ").split("   |   ")[0]
    env = {**qsync_env(), "PATH": "/usr/bin:/bin"}
    shown = subprocess.run(shlex.split(status), env=env, capture_output=True, text=True, timeout=60, check=False)
    assert shown.returncode == 0 and "completed" in shown.stdout, (status, shown.stderr)


def test_status_json_has_the_documented_fields(tmp_path: Path) -> None:
    src, db = tmp_path / "src.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(120))
    assert run_qsync(*_run_args(src, db, latency=0.0)).returncode == 0
    info = status_json(db, "j")
    for key in (
        "job", "status", "total_records", "processed_records", "skipped_records", "batches_total",
        "batches_done", "batches_failed", "started_at", "updated_at", "heartbeat_at", "owner",
    ):  # fmt: skip
        assert key in info, key
    assert info["status"] == "completed" and info["batches_done"] == info["batches_total"] == 3
    jobs = json.loads(run_qsync("jobs", "--db", str(db), "--json").stdout)
    assert [j["job"] for j in jobs] == ["j"]
    done = json.loads(run_qsync("batches", "j", "--db", str(db), "--status", "done", "--json").stdout)
    assert len(done) == 3


def test_an_offline_rehearsal_can_price_its_tokens(tmp_path: Path) -> None:
    src, db = tmp_path / "src.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(120))
    args = ["run", "--source", str(src), "--collection", "docs", "--db", str(db), "--job", "j", "--embedder", "hash",
            "--dimensions", "8", "--price-per-million", "0.15", "--qdrant-path", str(tmp_path / "qdrant"), "--quiet"]  # fmt: skip
    out = run_qsync(*args)
    assert out.returncode == 0, out.stderr
    info = status_json(db, "j")
    assert info["tokens"] > 0
    assert info["cost_usd"] == pytest.approx(info["tokens"] * 0.15 / 1_000_000)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_pauses_cleanly_and_resume_completes(tmp_path: Path, stop: signal.Signals) -> None:
    """SIGTERM (`kill`, `timeout`, `docker stop`) stops a run as Ctrl-C does: paused, nothing in flight lost."""
    src, db = tmp_path / "src.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(3000))
    env = qsync_env()
    proc = subprocess.Popen(
        qsync_cmd(*_run_args(src, db, concurrency=2, latency=0.3)), env=env, stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: _processed(db) >= 200, timeout=60)
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    assert "stopping after the calls in flight" in err and "qsync resume j" in err
    info = qsync.status("j", db=db)
    assert info["status"] == "paused" and info["owner"] is None and info["batches_running"] == 0
    assert 200 <= info["processed_records"] < 3000
    assert run_qsync("resume", "j", "--db", str(db), env=env).returncode == 0
    _assert_collection_matches(db.with_suffix(".qdrant"), {r["id"]: r["text"] for r in make_records(3000)})
