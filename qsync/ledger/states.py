"""The states of jobs and batches, in a module of their own: the CLI's parser offers them before it imports the
rest of qsync."""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    PLANNED = "planned"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        """Nothing more will happen to the job: a new run of its spec is a new job (a re-sync)."""
        return self in (JobState.COMPLETED, JobState.CANCELLED)


class BatchState(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


BATCH_STATES = tuple(s.value for s in BatchState)
