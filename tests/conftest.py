from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_configure(config: pytest.Config) -> None:
    """A shell that starts the tests in the background (`bash scripts/test.sh &`, nohup) makes them ignore SIGINT, and
    every process they start would inherit that: a Ctrl-C test would then see its Ctrl-C ignored. Each test process
    (xdist's workers too) takes Python's default handler, so that the processes it starts get SIGINT's default."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `slow` run first: scripts/test.sh hands tests to its pytest-xdist workers one at a time
    (--maxschedchunk 1), so the long ones start at once and the short ones fill in around them, instead of a
    long test starting last and running alone. Every worker collects the same order (xdist requires it)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _own_pace_folder(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test paces its quotas in a folder of its own (engine.pace), inherited by the processes it starts: a 429
    one test provoked must not hold another test's calls, as it would hold another job's with the same key."""
    monkeypatch.setenv("QSYNC_PACE_DIR", str(tmp_path_factory.mktemp("pace")))
