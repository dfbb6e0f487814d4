"""A real JupyterLab in Debian's headless Chromium, driven by Playwright: 01_backfill run and Start clicked,
a batch made to fail for real (an embedder that refuses one batch once), the inspector in 02 showing it,
Resume clicked, the progress bar at 100% on screen. Screenshots go to test-artifacts/browser/."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from qsync_testing import REPO, qsync_env

ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - CI installs it; see .ci/run
    HAVE_PLAYWRIGHT = False
else:
    HAVE_PLAYWRIGHT = True

if (CHROMIUM is None or not HAVE_PLAYWRIGHT) and os.environ.get("CI"):
    raise RuntimeError("CI must run the browser test: install Debian's chromium and `pip install playwright`")
pytestmark = pytest.mark.skipif(CHROMIUM is None or not HAVE_PLAYWRIGHT, reason="needs chromium and playwright")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def jupyterlab(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    root = tmp_path / "lab"
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    shutil.copytree(REPO / "data", root / "data")
    settings = tmp_path / "settings"
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    port, token = _free_port(), "qsync-browser-test"
    env = qsync_env(
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
        QSYNC_NB_DB=str(tmp_path / "nb.duckdb"),
        QSYNC_NB_DIMENSIONS="64",
        QSYNC_NB_EMBEDDER="qsync_testing:fail_once_factory",  # refuses the batch mentioning "violin", once
        QSYNC_TEST_FAIL_ONCE=str(tmp_path / "failed-once"),
        QSYNC_TEST_LATENCY="0.4",  # a run lasts long enough to pause it and restart the kernel under it
    )
    env.pop("QSYNC_NB_AUTOSTART", None)
    log = (tmp_path / "jupyterlab.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--allow-root",
         "--LabApp.expose_app_in_browser=True"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"JupyterLab did not start: {(tmp_path / 'jupyterlab.log').read_text()}") from None
            time.sleep(0.3)
    try:
        yield f"{base}/lab/tree/notebooks/{{}}?reset&token={token}", tmp_path, root
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


_KERNEL_IDLE = """() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
    return k && k.status === 'idle'; }"""


def _open_and_run_all(page: Page, url: str) -> None:
    page.goto(url)
    _run_all(page)


def _run_all(page: Page) -> None:
    page.wait_for_function(_KERNEL_IDLE, timeout=60_000)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")


def _restart_kernel(page: Page) -> None:
    """What Kernel > Restart does, without its confirmation dialog."""
    page.evaluate("window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.restart()")
    page.wait_for_timeout(1000)
    page.wait_for_function(_KERNEL_IDLE, timeout=60_000)


@contextmanager
def _chromium(last_state: str) -> Iterator[tuple[Browser, Page]]:
    """Debian's chromium, headless, with one page; the page's last state is saved as `last_state`."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert HAVE_PLAYWRIGHT and CHROMIUM is not None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            yield browser, page
        finally:
            page.screenshot(path=str(ARTIFACTS / last_state), full_page=True)
            browser.close()


def test_launch_watch_inspect_and_resume_in_a_real_browser(jupyterlab: tuple[str, Path, Path]) -> None:
    url, tmp, root = jupyterlab
    with _chromium("last-state.png") as (browser, page):
        _open_and_run_all(page, url.format("01_backfill.ipynb"))
        start = page.locator("button.qsync-start")
        expect(start).to_be_visible(timeout=60_000)
        start.click()
        status = page.locator(".qsync-status").first
        expect(status).to_contain_text(re.compile(r"· failed ·"), timeout=120_000)  # refused once, for real
        expect(page.locator(".qsync-message").first).to_contain_text("1 batch failed")
        page.screenshot(path=str(ARTIFACTS / "01-after-start-one-batch-failed.png"), full_page=True)

        # A second browser window, as a user would open the inspector beside the running notebook.
        inspect = browser.new_page(viewport={"width": 1400, "height": 1000})
        _open_and_run_all(inspect, url.format("02_inspect_batches.ipynb"))
        table = inspect.locator(".qsync-batches").first
        expect(inspect.locator(".qsync-batch-summary").first).to_contain_text("1 failed", timeout=60_000)
        expect(inspect.locator(".qsync-page").first).to_contain_text("page 1 of 3")
        inspect.locator(".qsync-filter select").first.select_option("failed")
        expect(table.locator("tbody tr")).to_have_count(1, timeout=30_000)
        expect(table).to_contain_text("refused a batch mentioning 'violin'")
        inspect.screenshot(path=str(ARTIFACTS / "02-inspector-failed-batch.png"), full_page=True)
        inspect.close()

        page.bring_to_front()
        resume = page.locator("button.qsync-resume")
        expect(resume).to_be_enabled(timeout=60_000)
        resume.click()
        bar = page.locator(".qsync-progress .progress-bar").first
        expect(bar).to_have_attribute("style", re.compile(r"width: 100%"), timeout=120_000)
        expect(status).to_contain_text(re.compile(r"· completed ·"), timeout=30_000)
        expect(page.locator(".qsync-message").first).to_contain_text("completed", timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "03-resumed-progress-100.png"), full_page=True)
        expect(page.locator(".qsync-searchbox").first).to_be_visible()
        page.locator(".qsync-search-text input").first.fill("a musical instrument with strings")
        page.locator("button.qsync-search").first.click()
        expect(page.locator(".qsync-search-results").first).to_contain_text("musical instrument", timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "04-search-after-completion.png"), full_page=True)

        # A re-sync: every text changed, so the job NAME#2 has work; Pause answers within a second.
        sample = root / "data" / "wordnet_sample.jsonl"
        lines = [json.loads(line) for line in sample.read_text().splitlines()]
        sample.write_text("".join(json.dumps({**r, "text": r["text"] + " (revised)"}) + "\n" for r in lines))
        start.click()
        expect(page.locator(".qsync-message").first).to_contain_text("planning", timeout=1_000)
        expect(status).to_contain_text("wordnet:wordnet_sample#2", timeout=60_000)
        expect(status).to_contain_text(re.compile(r"· running ·"), timeout=60_000)
        page.wait_for_timeout(1500)
        clicked = time.monotonic()
        page.locator("button.qsync-pause").click()
        # The answer: "pausing after the N batches in flight", or already paused (the batches in flight can
        # end before the browser sees "pausing": a serial run failed on that).
        expect(status).to_contain_text(re.compile(r"pausing|· paused ·"), timeout=1_000)
        assert time.monotonic() - clicked < 1.5  # the click itself, then the answer
        expect(page.locator(".qsync-message").first).to_contain_text(
            re.compile(r"in flight|paused.*Press Resume"), timeout=1_000
        )
        page.screenshot(path=str(ARTIFACTS / "05-pause-feedback.png"), full_page=True)
        expect(status).to_contain_text(re.compile(r"· paused ·"), timeout=60_000)

        # Resume, then restart the kernel while the re-sync runs; Run All; Start resumes NAME#2.
        resume.click()
        expect(status).to_contain_text(re.compile(r"· running ·"), timeout=30_000)
        _restart_kernel(page)
        _run_all(page)
        message = page.locator(".qsync-message").first
        expect(message).to_contain_text("wordnet:wordnet_sample#2", timeout=60_000)
        expect(message).to_contain_text("already done", timeout=10_000)
        page.locator(".qsync-launcher").first.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "06-after-kernel-restart-rerun.png"), full_page=True)
        page.locator("button.qsync-start").click()
        expect(status).to_contain_text(re.compile(r"wordnet:wordnet_sample#2 · completed"), timeout=120_000)
        page.locator(".qsync-launcher").first.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "07-resync-resumed-completed.png"), full_page=True)

        # 03: the job picker (newest first) and the estimate recorded at plan time beside the actual.
        costs = browser.new_page(viewport={"width": 1400, "height": 1000})
        _open_and_run_all(costs, url.format("03_cost_analysis.ipynb"))
        picker = costs.locator(".qsync-job-picker select").first
        expect(picker).to_be_visible(timeout=60_000)
        expect(picker.locator("option")).to_have_count(2)
        expect(picker.locator("option").first).to_contain_text("wordnet:wordnet_sample#2")
        versus = costs.locator(".qsync-estimate").first
        expect(versus).to_contain_text("estimate (plan time)", timeout=60_000)
        expect(versus).to_contain_text("actual")
        expect(costs.locator(".qsync-what-if").first).to_contain_text("Batch Mode")
        costs.screenshot(path=str(ARTIFACTS / "08-costs-estimate-vs-actual.png"), full_page=True)
        picker.select_option(index=1)
        expect(versus).to_contain_text("estimate (plan time)", timeout=30_000)
        costs.close()
    import qsync

    info = qsync.status(db=tmp / "nb.duckdb")
    assert info["status"] == "completed" and info["processed_records"] == 5000
    assert sorted(qsync.jobs(db=tmp / "nb.duckdb")["job"]) == ["wordnet:wordnet_sample", "wordnet:wordnet_sample#2"]


def test_images_notebook_shows_search_hits_as_thumbnails_in_a_real_browser(jupyterlab: tuple[str, Path, Path]) -> None:
    url, _, _ = jupyterlab
    with _chromium("last-state-04.png") as (_, page):
        _open_and_run_all(page, url.format("04_images.ipynb"))
        grid = page.locator(".qsync-thumbnail-grid").first
        expect(grid).to_contain_text("Chelsea the cat", timeout=120_000)
        expect(grid).to_contain_text("PDF, 1 page")
        # Every thumbnail is a decoded picture on screen, not a broken image.
        images = grid.locator("img")
        expect(images.first).to_be_visible()
        assert images.evaluate_all("imgs => imgs.every(i => i.complete && i.naturalWidth > 0)")
        # What a newcomer reads on the way: the estimate, the skips with reasons, estimate beside actual.
        for name, text in (("09a-images-estimate", "skipped while planning"), ("09b-images-skipped", "does not exist"),
                           ("09c-images-estimate-vs-actual", "estimated by qsync")):  # fmt: skip
            page.get_by_text(text).first.scroll_into_view_if_needed()
            page.wait_for_timeout(500)  # JupyterLab draws the cells scrolled into its window
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
        grid.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "09-images-search-thumbnails.png"))
        # The search box of the same job: Enter searches (no deprecated on_submit), hits as thumbnails.
        page.locator(".qsync-search-text input").first.fill("a bee")
        page.locator(".qsync-search-text input").first.press("Enter")
        results = page.locator(".qsync-search-results").first
        expect(results).to_contain_text("A bee flying", timeout=30_000)
        results.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "10-images-search-box.png"))
