"""The Gemini emulator in its own process, as the real API is on another machine.

In the benchmark's own process the emulator's work (making and JSON-encoding 768 floats per text)
would take the client's GIL, and the client that overlaps most would be slowed most. Out of process,
each side has its own interpreter, and the counters are read over HTTP (GET /emulator/stats).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from types import TracebackType
from typing import Any

KEY = "bench-key"


class EmulatorProcess:
    def __init__(self, latency_s: float = 0.0, *, usage_metadata: bool = False, **limits: int) -> None:
        """`usage_metadata`: whether embed answers carry usageMetadata. Google's batchEmbedContents sends none, so a
        benchmark that should meet what a user meets leaves it False (qsync then counts tokens itself)."""
        args = [sys.executable, "-m", "qsync.testing", "--port", "0", "--latency", str(latency_s), "--api-key", KEY]
        if not usage_metadata:
            args.append("--no-usage-metadata")
        for name, value in limits.items():  # texts_per_minute=..., tokens_per_minute=...
            args += [f"--{name.replace('_', '-')}", str(value)]
        self._process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        line = self._process.stdout.readline() if self._process.stdout else ""
        if not line.startswith("GOOGLE_GEMINI_BASE_URL="):
            self._process.kill()
            raise RuntimeError(f"the emulator did not start: {line!r}")
        self.url = line.split()[0].split("=", 1)[1]

    def env(self) -> dict[str, str]:
        """What points the google-genai SDK (and anything built on it) at this emulator."""
        return {"GOOGLE_GEMINI_BASE_URL": self.url, "GEMINI_API_KEY": KEY}

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/emulator/stats", timeout=10) as answer:
            stats: dict[str, Any] = json.load(answer)
            return stats

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
