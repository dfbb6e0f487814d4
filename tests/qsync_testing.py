"""Helpers the tests share, importable by the `qsync` processes they start (PYTHONPATH=tests)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qsync.embedders.hashing import HashingEmbedder
from qsync.embedders.protocol import EmbedResult
from qsync.spec.settings import RunSettings
from qsync.testing.emulator import GeminiEmulator

# Settings for runs against the emulator: four calls in flight, retries in milliseconds, no pacing to wait on.
FAST = RunSettings(concurrency=4, retry_base_s=0.01, retry_max_s=0.05, heartbeat_s=0.2, texts_per_minute=10**7)

REPO = Path(__file__).resolve().parents[1]


class CountingEmbedder(HashingEmbedder):
    """The hashing embedder, logging every text it embeds to $QSYNC_TEST_EMBED_LOG (one line per call).

    The line is written after the vectors exist and before they are returned, like an API that has
    answered (and billed) but whose answer the caller has not yet stored.
    """

    def embed(self, texts: list[str]) -> EmbedResult:
        result = super().embed(texts)
        log = os.environ.get("QSYNC_TEST_EMBED_LOG")
        if log:
            line = json.dumps({"pid": os.getpid(), "texts": texts}) + "\n"
            fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        return result


def counting_factory(dimensions: int | None = None, latency_s: float = 0.0) -> CountingEmbedder:
    return CountingEmbedder(dimensions=dimensions or 64, latency_s=latency_s)


def read_embed_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def sdk_emulator(monkeypatch: pytest.MonkeyPatch, api_key: str, **options: Any) -> Iterator[GeminiEmulator]:
    """A running Gemini emulator that the google-genai SDK of this process talks to: its URL and `api_key` in
    the environment, GOOGLE_API_KEY unset (the SDK would prefer it). Stopped afterwards."""
    emu = GeminiEmulator(api_key=api_key, **options).start()
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", emu.url)
    monkeypatch.setenv("GEMINI_API_KEY", api_key)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    try:
        yield emu
    finally:
        emu.stop()


def qsync_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def qsync_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "qsync", *args]


def run_qsync(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        qsync_cmd(*args), check=False, env=env or qsync_env(), capture_output=True, text=True, timeout=timeout
    )


def status_json(db: Path, job: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    out = run_qsync("status", job, "--db", str(db), "--json", env=env)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def ledger_rows(db: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """Rows of a query on a checkpoint file, through its host (the one process that has the file open)."""
    from qsync.ledger.ledger import Ledger

    with Ledger(db, create=False) as ledger:
        return ledger.query_rows(sql, params)


def wait_for(predicate: Any, timeout: float = 60, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")


def count_shard_loads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The Qdrant Edge shards this process loads from now on (a shard's folder each time a host is started for it and
    the shard loaded, not when a job of this process shares one already open): seconds each at millions of points."""
    from qsync.sink import shards

    loads: list[Path] = []
    acquire = shards.acquire

    def counting(path: Path, new_config: dict[str, Any] | None = None) -> shards.SharedShard:
        before = set(shards._open)
        shared = acquire(path, new_config)
        if shared.path not in before:
            loads.append(shared.path)
        return shared

    monkeypatch.setattr(shards, "acquire", counting)
    return loads


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Write records as CSV or JSON lines, by the file's extension."""
    if path.suffix == ".csv":
        import pandas as pd

        pd.DataFrame(records).to_csv(path, index=False)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))


def make_records(n: int, start: int = 0, prefix: str = "text") -> list[dict[str, Any]]:
    words = ["river", "stone", "cloud", "lamp", "orbit", "fern", "copper", "violin", "harbor", "maple"]
    return [
        {"id": f"r{i}", "text": f"{prefix} {i} {words[i % 10]} {words[(i * 7) % 10]} {words[(i // 10) % 10]}", "n": i}
        for i in range(start, start + n)
    ]


def qdrant_points(
    path: Path, collection: str, vector: str | None = None, wait_s: float = 60.0
) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """Every point of a Qdrant Edge collection: id -> (vector, payload), `vector` naming a named vector.

    Reads through this process's open shard if a job here holds it, else loads it and closes it after; a shard
    another process holds is waited for up to `wait_s`.
    """
    from qsync.errors import TransientError
    from qsync.sink.shards import open_shard

    deadline = time.monotonic() + wait_s
    while True:
        try:
            with open_shard(path / collection) as shared:
                return {
                    point: (np.asarray(values, dtype=np.float32), payload)
                    for point, payload, values in shared.scroll(vector or "")
                }
        except TransientError as exc:
            # A killed writer's shard host ends once it sees its parent gone (a moment, longer on a busy machine).
            if "in use by another process" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class FailOnceEmbedder(HashingEmbedder):
    """Fails any call with a text containing `word` until the file $QSYNC_TEST_FAIL_ONCE exists (it creates
    it when it fails), like an API that refused a batch once: the batch ends `failed`, a retry succeeds."""

    def __init__(self, dimensions: int = 64, latency_s: float = 0.0, word: str = "violin") -> None:
        super().__init__(dimensions, latency_s)
        self.word = word

    def embed(self, texts: list[str]) -> EmbedResult:
        from qsync.errors import PermanentError

        marker = os.environ.get("QSYNC_TEST_FAIL_ONCE")
        if marker and any(self.word in t for t in texts) and not os.path.exists(marker):
            Path(marker).touch()
            raise PermanentError(f"the embedder refused a batch mentioning {self.word!r} (once)")
        return super().embed(texts)


def fail_once_factory(
    dimensions: int | None = None, latency_s: float | None = None, word: str = "violin"
) -> FailOnceEmbedder:
    """`latency_s` defaults to $QSYNC_TEST_LATENCY (the browser test slows the notebook's runs this way)."""
    latency = float(os.environ.get("QSYNC_TEST_LATENCY", "0")) if latency_s is None else latency_s
    return FailOnceEmbedder(dimensions=dimensions or 64, latency_s=latency, word=word)


class EmulatorProcess:
    """The Gemini emulator in a process of its own (`python -m qsync.testing`), so a test can make the API really
    go away (SIGKILL: connections refused, open ones cut) and come back on the same port."""

    def __init__(self, *args: str, port: int = 0) -> None:
        self.args, self.port = args, port
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EmulatorProcess:
        cmd = [sys.executable, "-m", "qsync.testing", "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(cmd, env=qsync_env(), stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # printed once it listens
        assert "GOOGLE_GEMINI_BASE_URL=" in line, f"the emulator did not start: {line!r}"
        self.port = int(line.split("GOOGLE_GEMINI_BASE_URL=")[1].split()[0].rsplit(":", 1)[1])
        return self

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None
