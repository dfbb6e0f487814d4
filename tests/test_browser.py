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
from qsync_testing import REPO, EmulatorProcess, qsync_env

ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip

try:
    from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright
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


@contextmanager
def _lab(tmp_path: Path, **env_extra: str) -> Iterator[tuple[str, Path, Path]]:
    """JupyterLab on a copy of notebooks/ and data/, its kernels' environment `env_extra` added."""
    root = tmp_path / "lab"
    shutil.copytree(REPO / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns("qsync-data", "*.duckdb*"))
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
        QSYNC_NB_SAMPLE="60",  # 03's comparison embeds 60 records per model (its default, 300, takes longer)
        **env_extra,
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


@pytest.fixture
def jupyterlab(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    with _lab(
        tmp_path,
        QSYNC_NB_DIMENSIONS="64",
        QSYNC_NB_EMBEDDER="qsync_testing:fail_once_factory",  # refuses the batch mentioning "violin", once
        QSYNC_TEST_FAIL_ONCE=str(tmp_path / "failed-once"),
        QSYNC_TEST_LATENCY="0.4",  # a run lasts long enough to pause it and restart the kernel under it
    ) as lab:
        yield lab


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


def _screenshots(page: Page, parts: dict[str, Locator]) -> None:
    """A screenshot of the window scrolled to each part (JupyterLab scrolls inside the page: full_page sees one
    window of the notebook)."""
    for name, part in parts.items():
        part.first.scroll_into_view_if_needed()
        page.wait_for_timeout(500)  # JupyterLab draws the cells scrolled into its window
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


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
        # The comparison of models and sizes: the sample's cost first, then the table and its plot.
        compared = costs.locator(".qsync-compare-table").first
        expect(compared).to_contain_text("neighbours kept", timeout=120_000)
        expect(compared).to_contain_text("gemini-embedding-2")
        expect(costs.get_by_text("A sample of 60 records and 3 queries").first).to_be_visible()
        _screenshots(costs, {"08b-costs-compare": costs.locator(".qsync-compare")})
        picker.select_option(index=1)
        expect(versus).to_contain_text("estimate (plan time)", timeout=30_000)
        costs.close()
    import qsync

    info = qsync.status("wordnet:wordnet_sample#2", db=tmp / "nb.duckdb")
    assert info["status"] == "completed" and info["processed_records"] == 5000
    jobs = sorted(qsync.jobs(db=tmp / "nb.duckdb")["job"])
    assert [j for j in jobs if j.startswith("wordnet:")] == ["wordnet:wordnet_sample", "wordnet:wordnet_sample#2"]
    assert len([j for j in jobs if j.startswith("compare:")]) == 4  # 03's sample and queries, per model


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
        _screenshots(page, {"09a-images-estimate": page.get_by_text("skipped while planning"),
                            "09b-images-skipped": page.get_by_text("does not exist"),
                            "09c-images-estimate-vs-actual": page.get_by_text("estimated by qsync")})  # fmt: skip
        grid.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "09-images-search-thumbnails.png"))
        # The search box of the same job: Enter searches (no deprecated on_submit), hits as thumbnails.
        page.locator(".qsync-search-text input").first.fill("a bee")
        page.locator(".qsync-search-text input").first.press("Enter")
        results = page.locator(".qsync-search-results").first
        expect(results).to_contain_text("A bee flying", timeout=30_000)
        results.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "10-images-search-box.png"))


def test_a_bad_csv_the_api_down_and_a_kernel_restart_in_a_real_browser(tmp_path: Path) -> None:
    """What a data scientist met (issue 23): a CSV of other column names with a line that is not UTF-8, typed into
    the form; the Gemini API gone for a while mid-run (the emulator SIGKILLed, then back on its port); a kernel
    restarted on a paused job whose source the notebook does not default to; then 02 and 03 on that job."""
    emulator = EmulatorProcess("--latency", "1.0").start()
    with _lab(tmp_path, QSYNC_NB_EMBEDDER="gemini", QSYNC_NB_DIMENSIONS="128", GEMINI_API_KEY="test-key",
              GOOGLE_GEMINI_BASE_URL=emulator.url, QSYNC_RETRY_BASE_S="0.5") as (url, tmp, root):  # fmt: skip
        lines = [f"doc{i},note {i} about a violin and a river\n".encode() for i in range(1500)]
        lines.insert(700, b"bad,caf\xe9 \xff au lait\n")  # line 702 of the file is not UTF-8
        (root / "data" / "docs.csv").write_bytes(b"doc,body\n" + b"".join(lines))
        try:
            with _chromium("last-state-issue23.png") as (browser, page):
                _open_and_run_all(page, url.format("01_backfill.ipynb"))
                source = page.locator(".qsync-source input").first
                expect(source).to_be_visible(timeout=60_000)
                source.fill("../data/docs.csv")
                page.locator("button.qsync-read-columns").first.click()
                id_column = page.locator(".qsync-id-column select").first
                expect(id_column.locator("option")).to_have_text(["doc", "body"], timeout=30_000)
                expect(page.locator(".qsync-text-column select").first).to_have_value("body")
                expect(page.locator(".qsync-message").first).not_to_contain_text("Error")
                concurrency = page.locator(".qsync-concurrency input").first
                concurrency.fill("1")
                concurrency.press("Enter")
                page.screenshot(path=str(ARTIFACTS / "11-bad-csv-columns-read.png"), full_page=True)
                page.locator("button.qsync-start").first.click()
                status = page.locator(".qsync-status").first
                expect(status).to_contain_text("records/s", timeout=60_000)

                emulator.kill()  # the API goes away mid-run
                expect(status).to_contain_text("waiting for the API", timeout=60_000)
                expect(status).not_to_contain_text("records/s")
                expect(page.locator(".qsync-notice").first).to_contain_text("trying again in")
                page.locator(".qsync-monitor").first.scroll_into_view_if_needed()
                page.wait_for_timeout(1500)  # the plot (a PNG) follows the status line
                page.screenshot(path=str(ARTIFACTS / "12-api-down-waiting.png"), full_page=True)
                emulator.start()  # back on the same port: the run goes on by itself
                expect(status).not_to_contain_text("waiting", timeout=60_000)
                expect(status).to_contain_text(re.compile(r"· running ·"))
                page.locator("button.qsync-pause").first.click()
                expect(status).to_contain_text(re.compile(r"· paused ·"), timeout=60_000)

                # The kernel restarts; Run All: the form opens on the notebook's default source, but shows the
                # paused job of docs.csv, with Resume.
                _restart_kernel(page)
                _run_all(page)
                message = page.locator(".qsync-message").first
                expect(message).to_contain_text("wordnet:docs", timeout=60_000)
                expect(message).to_contain_text("already done")
                expect(page.locator(".qsync-source input").first).to_have_value(re.compile(r"docs\.csv$"))
                resume = page.locator("button.qsync-resume").first
                expect(resume).to_be_enabled()
                expect(page.locator("button.qsync-pause").first).to_be_disabled()
                page.locator(".qsync-launcher").first.scroll_into_view_if_needed()
                page.screenshot(path=str(ARTIFACTS / "13-restart-shows-the-typed-source.png"), full_page=True)
                resume.click()
                expect(status).to_contain_text(re.compile(r"wordnet:docs · completed"), timeout=120_000)
                expect(status).to_contain_text("1 skipped")
                expect(message).to_contain_text("completed")  # the launcher's own listener follows the monitor's
                expect(page.locator("button.qsync-pause").first).to_be_disabled()
                page.screenshot(path=str(ARTIFACTS / "14-bad-csv-completed.png"), full_page=True)

                inspect = browser.new_page(viewport={"width": 1400, "height": 1000})
                _open_and_run_all(inspect, url.format("02_inspect_batches.ipynb"))
                skips = inspect.locator(".qsync-skipped").first
                expect(skips).to_contain_text("unicode", timeout=60_000)
                expect(inspect.locator(".qsync-batch-summary").first).to_contain_text("1 record skipped")
                skips.scroll_into_view_if_needed()
                expect(inspect.locator("button.qsync-retry").first).to_have_text("Retry failed batches")
                expect(inspect.locator("button.qsync-retry-one").first).to_be_disabled()  # batch 0 is done
                inspect.screenshot(path=str(ARTIFACTS / "15-inspector-bad-line-skipped.png"), full_page=True)
                inspect.close()

                costs = browser.new_page(viewport={"width": 1400, "height": 1000})
                _open_and_run_all(costs, url.format("03_cost_analysis.ipynb"))
                versus = costs.locator(".qsync-estimate").first
                expect(versus).to_contain_text("time of work", timeout=60_000)
                expect(costs.locator(".qsync-what-if").first).to_contain_text("128")
                expect(costs.locator(".qsync-source-estimate").first).to_contain_text("cost in Batch Mode")
                costs.screenshot(path=str(ARTIFACTS / "16-costs-after-outage.png"), full_page=True)
                _screenshots(costs, {"17-costs-plot": costs.locator(".qsync-costs .qsync-plot"),
                                     "18-costs-what-if": costs.locator(".qsync-what-if"),
                                     "19-costs-source-estimate": costs.locator(".qsync-source-estimate")})  # fmt: skip
                costs.close()
        finally:
            emulator.kill()
    import qsync

    info = qsync.status("wordnet:docs", db=tmp / "nb.duckdb")
    assert (info["status"], info["loaded_records"], info["skipped_records"]) == ("completed", 1500, 1)
