"""Reliability: trying hard to break the promises of DESIGN.md (pytest -m reliability).

Kill loops against the Gemini emulator, a full disk and a read-only folder under the store, a notebook
and the CLI racing for one job, and the API key hunted for in notebook output. The other reliability
tests live beside the features they break (test_processes, test_gemini, test_store, test_bad_input,
test_runner, test_qdrant) and carry the same marker.
"""

from __future__ import annotations

import collections
import os
import random
import resource
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qsync_testing import make_records, qdrant_points, qsync_cmd, qsync_env, run_qsync, wait_for, write_records

import qsync
from qsync.app.jobs import create_job
from qsync.ledger.hosts import stop_host
from qsync.spec.target import point_id
from qsync.testing.emulator import GeminiEmulator
from qsync.testing.gemini_model import emulated_vector

pytestmark = pytest.mark.reliability
SECRET = "AIzaRELIABILITY-secret-0042"
MODEL = "gemini-embedding-001"


@pytest.fixture
def emulator() -> Iterator[GeminiEmulator]:
    emu = GeminiEmulator(api_key=SECRET, latency_s=0.02, server_error_rate=0.05, texts_per_minute=800,
                         window_s=1.0, retry_info_share=0.5, seed=11).start()  # fmt: skip
    yield emu
    emu.stop()


def _processed(db: Path, job: str) -> int:
    try:
        return int(qsync.status(job, db=db)["processed_records"])
    except qsync.QsyncError:
        return 0


@pytest.mark.slow
def test_kill_loop_against_the_gemini_emulator(tmp_path: Path, emulator: GeminiEmulator) -> None:
    """10,000 records, SIGKILLed at 10 random moments, resumed after each: exact, paid once, consistent.

    The emulator allows 800 texts per 1 s window (its window is 1 s here), the client asks for far more:
    429s arrive and the limiter must adapt. A process gets through about one window's worth before its
    kill, so the tenth kill still finds work left (with 8,000 records it could find the job done)."""
    records = make_records(10_000)
    src, db = tmp_path / "src.jsonl", tmp_path / "q.duckdb"
    write_records(src, records)
    env = qsync_env(GEMINI_API_KEY=SECRET, GOOGLE_GEMINI_BASE_URL=emulator.url, QSYNC_RETRY_BASE_S="0.05")
    concurrency, batch = 4, 100
    args = ["run", "--source", str(src), "--collection", "c", "--db", str(db), "--job", "k", "--dimensions", "32",
            "--concurrency", str(concurrency), "--texts-per-minute", "1000000", "--quiet"]  # fmt: skip
    rng = random.Random(2026)
    kills = 0
    started = time.monotonic()
    for _ in range(10):
        proc = subprocess.Popen(qsync_cmd(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = _processed(db, "k")
        # Killed soon after it made progress, so that ten kills fit in the job however fast it runs. Each look
        # at the job's progress makes the runner hand its DuckDB file over: 10 looks a second, not 50.
        wait_for(lambda b=before, p=proc: _processed(db, "k") > b + 200 or p.poll() is not None, timeout=120,
                 interval=0.1)  # fmt: skip
        time.sleep(rng.uniform(0, 0.15))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    final = run_qsync(*args, env=env, timeout=300)
    assert final.returncode == 0, final.stderr
    elapsed = time.monotonic() - started
    assert kills == 10, "the job finished before all ten kills"

    info = qsync.status("k", db=db)
    assert info["status"] == "completed" and info["processed_records"] == 10_000
    points = qdrant_points(db.with_suffix(".qdrant"), "c")
    assert len(points) == 10_000
    for r in records[::7]:  # every 7th record: its vector is the emulator's for its own text
        expected = emulated_vector(MODEL, r["text"], 32)
        np.testing.assert_allclose(points[point_id(r["id"])][0], expected / np.linalg.norm(expected), atol=1e-5)
    twice = sum(n - 1 for n in emulator.texts_embedded.values() if n > 1)
    assert twice <= kills * concurrency * batch  # only calls in flight at a kill can be paid again
    assert qsync.verify("k", db=db).ok  # ledger and collection agree
    print(f"kill loop: {kills} kills, {elapsed:.0f}s, {twice} texts embedded twice, "
          f"{emulator.requests['batchEmbedContents']} calls, {emulator.requests['429']} 429s")  # fmt: skip


def _run_limited(src: Path, db: Path, limit_bytes: int) -> subprocess.CompletedProcess[str]:
    def limit() -> None:  # a full disk, for this process only: writes past the limit fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run(
        qsync_cmd("run", "--source", str(src), "--collection", "c", "--db", str(db), "--job", "d",
                  "--embedder", "hash", "--dimensions", "256", "--quiet"),
        preexec_fn=limit, env=qsync_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_full_disk_is_a_clear_error_and_nothing_is_marked_done_early(tmp_path: Path) -> None:
    src, db = tmp_path / "src.jsonl", tmp_path / "q.duckdb"
    records = make_records(4000)
    write_records(src, records)
    out = _run_limited(src, db, 3_000_000)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "the disk is full" in out.stderr or "is the disk full?" in out.stderr, out.stderr
    done_at_failure = _processed(db, "d") if db.exists() else 0
    assert done_at_failure < 4000
    # Whatever was marked done is in Qdrant; then, with space again, resume finishes the job exactly.
    # (Qdrant Edge preallocates 32 MB WAL files, so under this limit it may fail as it creates the shard.)
    shard = db.with_suffix(".qdrant") / "c"
    points = qdrant_points(shard.parent, "c") if (shard / "edge_config.json").exists() else {}
    assert len(points) >= done_at_failure
    # With space again, the same command finishes the job (or plans it, if the disk filled before that). The file's
    # host process was started by the limited run and keeps its limit (a real full disk is everyone's): it goes first,
    # as it would within 2 s of its last client.
    if db.exists():
        stop_host(db)
    again = run_qsync("run", "--source", str(src), "--collection", "c", "--db", str(db), "--job", "d",
                      "--embedder", "hash", "--dimensions", "256", "--quiet")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert qsync.verify("d", db=db).ok and qsync.status("d", db=db)["processed_records"] == 4000


def test_a_read_only_folder_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "readonly"
    folder.mkdir()
    src = tmp_path / "src.jsonl"
    write_records(src, make_records(50))
    # Read-only even for root (CI runs as root, which ignores permission bits): the immutable attribute.
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        out = run_qsync("run", "--source", str(src), "--collection", "c", "--db", str(folder / "q.duckdb"),
                        "--embedder", "hash", "--quiet")  # fmt: skip
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    assert out.returncode == 1
    assert "cannot write" in out.stderr and "choose a writable --db" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert not (folder / "q.duckdb").exists()


def test_a_notebook_and_the_cli_on_one_job(tmp_path: Path) -> None:
    from qsync.notebook import Launcher

    src = tmp_path / "src.jsonl"
    write_records(src, make_records(3000))
    # Calls of 1 s: the job cannot finish (about 15 s) before the CLI has tried it, however busy the machine.
    launcher = Launcher(source=str(src), collection="c", db=tmp_path / "q.duckdb", dimensions=32, batch_size=50,
                        job="shared", embedder_options={"latency_s": 1.0})  # fmt: skip
    launcher.start()
    try:
        wait_for(lambda: _processed(tmp_path / "q.duckdb", "shared") > 0, timeout=60)
        cli = run_qsync("resume", "shared", "--db", str(tmp_path / "q.duckdb"))
        assert cli.returncode == 4 and f"being run by process {os.getpid()}" in cli.stderr
        status = run_qsync("status", "shared", "--db", str(tmp_path / "q.duckdb"))
        assert status.returncode == 0 and "running" in status.stdout  # and it may watch meanwhile
    finally:
        launcher.pause()
        launcher.wait(30)
    assert run_qsync("resume", "shared", "--db", str(tmp_path / "q.duckdb"), "--concurrency", "16").returncode == 0


@pytest.mark.slow
def test_the_key_never_lands_in_notebook_output(tmp_path: Path, emulator: GeminiEmulator) -> None:
    import nbformat
    from nbclient import NotebookClient
    from qsync_testing import REPO

    nb = nbformat.read(REPO / "notebooks" / "01_backfill.ipynb", as_version=4)  # type: ignore[no-untyped-call]
    sample = tmp_path / "sample.jsonl"  # 100 WordNet records: at 3,000 texts/min that is 2 s, not 100
    sample.write_text("".join((REPO / "data" / "wordnet_sample.jsonl").read_text().splitlines(keepends=True)[:100]))
    env = {"QSYNC_NB_DB": str(tmp_path / "nb.duckdb"), "QSYNC_NB_AUTOSTART": "1", "QSYNC_NB_DIMENSIONS": "32",
           "QSYNC_NB_SOURCE": str(sample),
           "QSYNC_NB_EMBEDDER": "gemini", "GEMINI_API_KEY": SECRET, "GOOGLE_GEMINI_BASE_URL": emulator.url}  # fmt: skip
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()  # fmt: skip
    finally:
        os.environ.clear()
        os.environ.update(saved)
    text: str = nbformat.writes(nb)  # type: ignore[no-untyped-call]
    assert ": completed, 100 records this run in" in text
    assert SECRET not in text
    query = "a musical instrument with strings"  # 01 searches the collection once the job completed
    assert emulator.texts_embedded.pop(query) == 1
    assert collections.Counter(emulator.texts_embedded.values())[1] == 100


def test_two_runners_racing_for_one_job(tmp_path: Path) -> None:
    src, db = tmp_path / "src.jsonl", tmp_path / "q.duckdb"
    write_records(src, make_records(600))
    create_job(src, collection="c", job="race", db=db, embedder="hash", dimensions=32, batch_size=50,
                     embedder_options={"latency_s": 0.05})  # fmt: skip
    args = ["resume", "race", "--db", str(db), "--quiet"]
    env = qsync_env()
    racers = [subprocess.Popen(qsync_cmd(*args), env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = sorted((p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in racers)
    codes = [code for code, _ in outcomes]
    # One wins the lease and finishes; the other is refused, or (if it came second) finds nothing left to do.
    assert codes[0] == 0 and codes[1] in (0, 4), outcomes
    if codes[1] == 4:
        assert "being run by process" in outcomes[1][1]
    assert qsync.status("race", db=db)["processed_records"] == 600
    assert qsync.verify("race", db=db).ok
