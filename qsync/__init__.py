"""qsync: resumable, checkpointed backfills of embeddings into Qdrant."""

from .api import (
    SpecMismatch,
    batch_records,
    batches,
    cancel,
    create_job,
    jobs,
    make_runner,
    open_job,
    prepare,
    resume_job,
    run_job,
    skipped,
    status,
)
from .costs import cost, cost_over_time, estimate, tokens_by_modality
from .embedders import EmbedResult, HashingEmbedder
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
from .estimates import estimate_vs_actual, record_estimate, recorded_estimate
from .events import BatchFinished, JobFinished, JobStarted, Notice, Progress
from .figures import JobFigures
from .runner import RunResult
from .search import search
from .session import JobHandle, active_run, run, start
from .sink import POINT_ID_NAMESPACE, point_id
from .sources import Columns, DataFrameSource, FileSource, SqlSource
from .spec import KEEP, EmbedderSpec, JobSpec, RunSettings, build_spec
from .verification import VerifyReport, verify

__version__ = "0.1.0"

__all__ = [
    "KEEP",
    "POINT_ID_NAMESPACE",
    "BatchFinished",
    "Columns",
    "ConfigError",
    "DataFrameSource",
    "EmbedResult",
    "EmbedderSpec",
    "FileSource",
    "HashingEmbedder",
    "JobFigures",
    "JobFinished",
    "JobHandle",
    "JobSpec",
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
    "SpecMismatch",
    "SqlSource",
    "StoreError",
    "StoreLocked",
    "TransientError",
    "VerifyReport",
    "active_run",
    "batch_records",
    "batches",
    "build_spec",
    "cancel",
    "cost",
    "cost_over_time",
    "create_job",
    "estimate",
    "estimate_vs_actual",
    "jobs",
    "make_runner",
    "open_job",
    "point_id",
    "prepare",
    "record_estimate",
    "recorded_estimate",
    "resume_job",
    "run",
    "run_job",
    "search",
    "skipped",
    "start",
    "status",
    "tokens_by_modality",
    "verify",
]
