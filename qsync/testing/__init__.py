"""What tests, benchmarks and rehearsals use, never a real run: `emulator`, a local emulator of the Gemini REST API
(`python -m qsync.testing --help` runs one), and `start_offline`, which points this process's google-genai at one.
Nothing in qsync's runtime imports this package."""

from __future__ import annotations

import os

from qsync.testing.emulator import OFFLINE_KEY, GeminiEmulator

_offline: GeminiEmulator | None = None  # the one start_offline started in this process


def offline_emulator() -> GeminiEmulator | None:
    """The emulator `start_offline` started in this process (its placeholder key is set), if any."""
    return _offline


def start_offline(vectors: str = "words") -> GeminiEmulator:
    """Start an emulator in this process and point google-genai at it (GOOGLE_GEMINI_BASE_URL and a
    placeholder GEMINI_API_KEY), for a notebook or a rehearsal without a key: nothing leaves the machine
    and nothing is billed. Called again (a notebook run twice), the same emulator. Refused when a real key is
    set, which must never be sent to a local server."""
    global _offline
    if _offline is not None and os.environ.get("GEMINI_API_KEY") == OFFLINE_KEY:
        return _offline
    if os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY"):
        raise RuntimeError("a Gemini API key is set: use Gemini itself, or unset the key to rehearse offline")
    _offline = GeminiEmulator(api_key=OFFLINE_KEY, vectors=vectors).start()
    os.environ["GOOGLE_GEMINI_BASE_URL"] = _offline.url
    os.environ["GEMINI_API_KEY"] = OFFLINE_KEY
    return _offline
