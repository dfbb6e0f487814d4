"""One quota per API key across processes: limiters sharing a pace file (engine.pace) pace together; two real
`qsync run` processes with one key against an emulated limit stay under it, and both get their share."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from qsync_testing import make_records, qsync_cmd, qsync_env, sdk_emulator, write_records

from qsync.engine.pace import FilePace, MemoryPace, shared_store
from qsync.engine.ratelimit import RateLimiter
from qsync.testing.emulator import GeminiEmulator

SECRET = "AIzaTEST-quota-key-0123456789"


class FakeClock:
    def __init__(self) -> None:
        self.t = 5000.0

    def monotonic(self) -> float:
        return self.t

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.t)


def test_two_limiters_on_one_pace_file_share_the_limit_and_a_429(tmp_path: Path) -> None:
    clock = FakeClock()
    first = RateLimiter(3000, None, clock=clock, store=FilePace(tmp_path / "q.json"))
    second = RateLimiter(3000, None, clock=clock, store=FilePace(tmp_path / "q.json"))  # as in another process
    sent, start = 0, clock.t
    for _ in range(30):  # the two take turns: together they pace to the limit, not each to it
        for limiter in (first, second):
            clock.t += limiter.acquire(100, 0)
            sent += 100
    per_minute = sent / ((clock.t - start) / 60)
    assert 0.95 * 3000 <= per_minute <= 3000
    first.throttle(retry_after_s=9.0)  # a 429 one process saw holds the other too, and slows it
    assert second.acquire(1, 0) >= 9.0 and second.pace == pytest.approx(0.8)
    alone = RateLimiter(3000, None, clock=clock, store=MemoryPace())
    assert alone.pace == 1.0


def test_a_pace_folder_that_cannot_be_made_leaves_each_process_its_own_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QSYNC_PACE_DIR", "/proc/qsync-cannot-exist")
    assert isinstance(shared_store("gemini|k|m|"), MemoryPace)


@pytest.fixture
def limited(monkeypatch: pytest.MonkeyPatch) -> Iterator[GeminiEmulator]:
    # 1,000 texts per 10 s window (6,000 a minute), answered 429 beyond it.
    with sdk_emulator(monkeypatch, SECRET, texts_per_minute=1000, window_s=10.0, latency_s=0.05) as emu:
        yield emu


@pytest.mark.slow
def test_two_jobs_with_one_key_in_two_processes_pace_together_under_the_limit(
    tmp_path: Path, limited: GeminiEmulator
) -> None:
    env = qsync_env(GEMINI_API_KEY=SECRET, GOOGLE_GEMINI_BASE_URL=limited.url)
    procs = []
    for name in ("a", "b"):
        src = tmp_path / f"{name}.jsonl"
        write_records(src, make_records(1200, prefix=name))
        procs.append(subprocess.Popen(
            qsync_cmd("run", "--source", str(src), "--collection", name, "--db", str(tmp_path / f"{name}.duckdb"),
                      "--job", name, "--dimensions", "64", "--quiet", "--texts-per-minute", "6000", "--batch-size", "25"),
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        ))  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    calls = limited.requests["batchEmbedContents"]
    assert len(limited.texts_embedded) == 2400 and max(limited.texts_embedded.values()) == 1
    # Each alone: ~14% answered 429 (measured). Together: 0 or 1 of ~97 calls on a quiet machine; on a loaded one a
    # request sent a few hundred ms after its turn lands in the server's next window, and 2 were seen.
    assert limited.requests["429"] < 0.05 * calls, (limited.requests["429"], calls)
