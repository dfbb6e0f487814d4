"""The notebook layer: notebooks executed headlessly, widgets driven from Python, a kernel that dies."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from qsync_testing import REPO, make_records, qdrant_points, qsync_cmd, qsync_env, wait_for, write_records

import qsync
from qsync.embedders.hashing import hash_vector
from qsync.notebook import BatchInspector, CostPanel, JobMonitor, Launcher

NOTEBOOKS = REPO / "notebooks"


def _execute(name: str, env: dict[str, str]) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
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


def test_every_notebook_runs_top_to_bottom_headless(tmp_path: Path) -> None:
    env = {"QSYNC_NB_DB": str(tmp_path / "nb.duckdb"), "QSYNC_NB_AUTOSTART": "1", "QSYNC_NB_DIMENSIONS": "64"}
    first = _execute("01_backfill.ipynb", env)
    assert "status='completed'" in _text(first)
    info = qsync.status(db=tmp_path / "nb.duckdb")
    assert info["status"] == "completed" and info["processed_records"] == 5000
    second = _execute("02_inspect_batches.ipynb", env)
    assert "wordnet:wordnet_sample" in _text(second) and "batch_no" in _text(second)
    third = _execute("03_cost_analysis.ipynb", env)
    assert "cost_usd_batch_mode" in _text(third)
    images = [o for c in third.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "03 draws its plot"


def _launcher(tmp_path: Path, n: int = 1500, **defaults: Any) -> Launcher:
    src = tmp_path / "src.jsonl"
    write_records(src, make_records(n))
    return Launcher(source=str(src), collection="c", db=tmp_path / "q.duckdb", dimensions=32, batch_size=50,
                    concurrency=2, **defaults)  # fmt: skip


def test_start_pause_resume_from_the_widgets(tmp_path: Path) -> None:
    launcher = _launcher(tmp_path, embedder_options={"latency_s": 0.05})
    launcher.start_button.click()
    db = tmp_path / "q.duckdb"
    wait_for(lambda: qsync.status(db=db)["processed_records"] >= 200, timeout=60)
    launcher.pause_button.click()
    result = launcher.wait(30)
    assert result is not None and result.status == "paused"
    info = qsync.status(db=db)
    assert info["status"] == "paused" and info["batches_running"] == 0 and info["processed_records"] < 1500
    assert not launcher.resume_button.disabled and "paused" in launcher.monitor.label.value
    launcher.resume_button.click()
    result = launcher.wait(60)
    assert result is not None and result.ok
    assert launcher.monitor.progress.value == launcher.monitor.progress.max == 1500
    assert "completed" in launcher.monitor.label.value
    assert launcher.monitor.plot.outputs and "image/png" in launcher.monitor.plot.outputs[0]["data"]
    assert qsync.status(db=db)["processed_records"] == 1500


def test_stop_cancels_within_a_batch(tmp_path: Path) -> None:
    launcher = _launcher(tmp_path, embedder_options={"latency_s": 0.05})
    launcher.start_button.click()
    wait_for(lambda: qsync.status(db=tmp_path / "q.duckdb")["processed_records"] >= 100, timeout=60)
    launcher.stop_button.click()
    result = launcher.wait(30)
    assert result is not None and result.status == "cancelled"


def test_the_inspector_shows_a_failed_batch_and_retries_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QSYNC_TEST_FAIL_ONCE", str(tmp_path / "failed-once"))
    launcher = _launcher(tmp_path, n=600, embedder="qsync_testing:fail_once_factory",
                         embedder_options={"word": "text 321 "})  # fmt: skip
    launcher.start()
    result = launcher.wait(60)
    assert result is not None and result.status == "failed"
    inspector = BatchInspector(result.job_id, db=tmp_path / "q.duckdb")
    inspector.status.value = "failed"
    assert "refused a batch mentioning" in inspector.table.value and inspector.selected.options == (6,)
    inspector.selected.value = (6,)
    assert "text 321 " in inspector.records.value
    inspector.retry(wait=True)
    assert inspector.result is not None and inspector.result.ok
    assert qsync.status(result.job_id, db=tmp_path / "q.duckdb")["status"] == "completed"
    inspector.status.value = "all"
    assert "failed" not in inspector.frame()["status"].tolist()
    panel = CostPanel(result.job_id, db=tmp_path / "q.duckdb")
    assert "cache_saved_tokens" in panel.summary.value and panel.plot.outputs


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


@pytest.mark.reliability
def test_a_job_whose_kernel_dies_resumes_from_a_fresh_kernel(tmp_path: Path) -> None:
    from jupyter_client.manager import start_new_kernel

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
        wait_for(lambda: db.exists() and qsync.status("nb", db=db)["processed_records"] >= 300, timeout=60)
        os.kill(manager.provisioner.pid, signal.SIGKILL)  # the kernel dies mid-job (a zombie until reaped)
        wait_for(lambda: qsync.status("nb", db=db)["status"] == "stale", timeout=30)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    done_before = qsync.status("nb", db=db)["processed_records"]
    assert done_before < 1500
    manager, client = start_new_kernel(kernel_name="python3", env=qsync_env())
    try:
        reply = client.execute_interactive(
            f"import qsync\nresult = qsync.run_job('nb', db={str(db)!r})\nassert result.ok, result",
            timeout=120,
        )
        assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    points = qdrant_points(db.with_suffix(".qdrant"), "c")
    assert len(points) == 1500
    for r in records:
        vector, _ = points[qsync.point_id(r["id"])]
        assert abs(float(vector @ hash_vector(r["text"], 32)) - 1.0) < 1e-5
    assert qsync.cost("nb", db=db).iloc[0]["resume_skipped_records"] >= done_before
