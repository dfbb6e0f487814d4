"""What tests, benchmarks and rehearsals use, never a real run: `emulator`, a local emulator of the Gemini REST API
(`python -m qsync.testing --help` runs one), `start_offline`, which points this process's google-genai at one, and
`gemini_for_this_kernel`, which the notebooks call to start it when no key is set and say so. Nothing in qsync's
runtime imports this package."""

from __future__ import annotations

import os
from urllib.parse import urlparse

from qsync.formatting import printed
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


def gemini_for_this_kernel(cost: str = "less than a cent") -> str:
    """Where a notebook's Gemini calls go, said in lines short enough for its output (`formatting.printed`): with a key
    the user set, Gemini (`cost`: what the notebook may spend there); without one, an emulator started for this kernel
    (`start_offline`; the same one when the notebook runs again, though its placeholder key is set by then), which
    bills nothing."""
    if offline_emulator() is None and (os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")):
        return printed(_where_gemini_calls_go(cost))
    emulator = start_offline()
    return printed(
        f"No GEMINI_API_KEY: Gemini is emulated locally at {emulator.url}, for this kernel only: nothing is billed "
        "(the dollars below are what Gemini would charge)."
    )


def _where_gemini_calls_go(cost: str) -> str:
    """With a key set: Google's API, or (GOOGLE_GEMINI_BASE_URL on this machine) a local stand-in that bills nothing."""
    base = os.environ.get("GOOGLE_GEMINI_BASE_URL", "").strip()
    host = urlparse(base).hostname if base else None
    if host in ("localhost", "127.0.0.1", "::1", "0.0.0.0"):
        return (
            f"A Gemini API key is set, but GOOGLE_GEMINI_BASE_URL sends the calls to {base}, on this machine: "
            "a local emulator of the Gemini API, not Google (nothing billed)."
        )
    if base:
        return f"A Gemini API key is set: this notebook calls the Gemini API at {base} ({cost} at Google's prices)."
    return f"A Gemini API key is set: this notebook calls Gemini ({cost})."
