"""Stages: optional steps of a run besides embedding, behind one protocol. Enrichment asks a generative model
about each record of a batch; Batch Mode fills the embedding cache at half price before the batches run.

The application builds a run's stages from the job's spec (as factories, since a stage needs the run's lease,
budget and retry layer, which exist once the run has started); the runner calls `before_batches` once, and the
pipeline calls `apply` for each batch, before its vectors are looked up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from qsync.embedders.protocol import Embedder
from qsync.engine.control import Control
from qsync.engine.retry import Retrier
from qsync.engine.spend_cap import SpendCap
from qsync.ledger.batches import BatchWork
from qsync.ledger.run import LeasedJob
from qsync.spec.settings import RunSettings


@dataclass(frozen=True)
class StageContext:
    """What a stage may use: the run's view of its job (reads, lease-checked writes), its embedder, the spend
    cap, the retry layer, the Pause/Stop control, the run settings, and a way to tell the listeners."""

    job: LeasedJob
    embedder: Embedder
    budget: SpendCap
    retrier: Retrier
    control: Control
    settings: RunSettings
    notify: Callable[[str], None]


class Stage(Protocol):
    def before_batches(self) -> None:
        """Job-level work before any batch runs (may raise PauseJob, StopJob or Interrupted)."""
        ...

    def apply(self, work: BatchWork) -> dict[str, str]:
        """Per-batch work before its vectors are looked up; may change the texts to embed. Returns the records it
        refused: content hash -> reason."""
        ...


StageFactory = Callable[[StageContext], Stage]
