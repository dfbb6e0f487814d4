"""qsync: resumable, checkpointed backfills of Gemini embeddings into Qdrant.

    import qsync
    qsync.run("data/wordnet_sample.jsonl", collection="wordnet", payload_columns=["pos"])
    qsync.status()                                  # the newest job's figures, as a dict
    qsync.batches("wordnet:wordnet_sample", status="failed")

The names here are the documented surface (docs/PYTHON-API.md); everything else is importable from its module
(the layers: qsync.spec, qsync.input, qsync.ledger, qsync.engine, qsync.app, …; see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qsync.api import run, start
    from qsync.app.compare import compare
    from qsync.app.jobs import cancel, prepare
    from qsync.app.jobs import run_job as resume
    from qsync.app.reading import batches, cost, jobs, search, skipped, status, verify
    from qsync.errors import QsyncError, SpecMismatch
    from qsync.money.estimate import estimate
    from qsync.spec.settings import RunSettings

# Imported on first use (PEP 562): `import qsync.ledger.host` (a checkpoint file's host process, started often) and
# `qsync --help` then load only what they need, not pandas, the Gemini SDK and Qdrant.
_EXPORTS = {
    "run": ("qsync.api", "run"),
    "start": ("qsync.api", "start"),
    "cancel": ("qsync.app.jobs", "cancel"),
    "compare": ("qsync.app.compare", "compare"),
    "prepare": ("qsync.app.jobs", "prepare"),
    "resume": ("qsync.app.jobs", "run_job"),
    "batches": ("qsync.app.reading", "batches"),
    "cost": ("qsync.app.reading", "cost"),
    "jobs": ("qsync.app.reading", "jobs"),
    "search": ("qsync.app.reading", "search"),
    "skipped": ("qsync.app.reading", "skipped"),
    "status": ("qsync.app.reading", "status"),
    "verify": ("qsync.app.reading", "verify"),
    "QsyncError": ("qsync.errors", "QsyncError"),
    "SpecMismatch": ("qsync.errors", "SpecMismatch"),
    "estimate": ("qsync.money.estimate", "estimate"),
    "RunSettings": ("qsync.spec.settings", "RunSettings"),
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'qsync' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__version__ = "0.1.0"

__all__ = [
    "QsyncError",
    "RunSettings",
    "SpecMismatch",
    "batches",
    "cancel",
    "compare",
    "cost",
    "estimate",
    "jobs",
    "prepare",
    "resume",
    "run",
    "search",
    "skipped",
    "start",
    "status",
    "verify",
]
