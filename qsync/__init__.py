"""qsync: resumable, checkpointed backfills of embeddings into Qdrant."""

from .api import (
    batch_records,
    batches,
    cancel,
    create_job,
    jobs,
    make_runner,
    prepare,
    resume_job,
    run,
    run_job,
    skipped,
    status,
)
from .costs import cost, cost_over_time, estimate
from .embedders import EmbedderSpec, EmbedResult, HashingEmbedder
from .errors import (
    ConfigError,
    LeaseHeld,
    LeaseLost,
    PermanentError,
    QsyncError,
    SourceError,
    StoreError,
    StoreLocked,
    TransientError,
)
from .events import BatchFinished, JobFinished, JobStarted, Notice, Progress
from .runner import RunResult, RunSettings
from .sink import POINT_ID_NAMESPACE, point_id
from .sources import Columns, DataFrameSource, FileSource, SqlSource
from .verification import VerifyReport, verify

__version__ = "0.1.0"

__all__ = [
    "POINT_ID_NAMESPACE",
    "BatchFinished",
    "Columns",
    "ConfigError",
    "DataFrameSource",
    "EmbedResult",
    "EmbedderSpec",
    "FileSource",
    "HashingEmbedder",
    "JobFinished",
    "JobStarted",
    "LeaseHeld",
    "LeaseLost",
    "Notice",
    "PermanentError",
    "Progress",
    "QsyncError",
    "RunResult",
    "RunSettings",
    "SourceError",
    "SqlSource",
    "StoreError",
    "StoreLocked",
    "TransientError",
    "VerifyReport",
    "batch_records",
    "batches",
    "cancel",
    "cost",
    "cost_over_time",
    "create_job",
    "estimate",
    "jobs",
    "make_runner",
    "point_id",
    "prepare",
    "resume_job",
    "run",
    "run_job",
    "skipped",
    "status",
    "verify",
]
