"""qsync: resumable, checkpointed backfills of Gemini embeddings into Qdrant.

    import qsync
    qsync.run("data/wordnet_sample.jsonl", collection="wordnet", payload_columns=["pos"])
    qsync.status()                                  # the newest job's figures, as a dict
    qsync.batches("wordnet:wordnet_sample", status="failed")

The names here are the documented surface (docs/PYTHON-API.md); everything else is importable from its module
(the layers: qsync.spec, qsync.input, qsync.ledger, qsync.engine, qsync.app, …; see docs/ARCHITECTURE.md).
"""

from qsync.api import run, start
from qsync.app.jobs import cancel, prepare
from qsync.app.jobs import run_job as resume
from qsync.app.reading import batches, cost, jobs, search, skipped, status, verify
from qsync.errors import QsyncError, SpecMismatch
from qsync.money.estimate import estimate
from qsync.spec.settings import RunSettings

__version__ = "0.1.0"

__all__ = [
    "QsyncError",
    "RunSettings",
    "SpecMismatch",
    "batches",
    "cancel",
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
