"""JupyterLab widgets over the runner's events and the DuckDB ledger (install the `notebook` extra).

    from qsync.notebook import Launcher, JobMonitor, BatchInspector, CostPanel
    Launcher(source="data/wordnet_sample.jsonl", collection="wordnet")  # Start / Pause / Resume / Cancel
    JobMonitor.attach("wordnet:wordnet_sample")                          # follow a job run elsewhere
    BatchInspector(db="qsync.duckdb")                                    # pick a job, page its batches
    CostPanel(db="qsync.duckdb")                                         # estimate vs actual, what-if

Modules: formatting (tables, plots, messages), monitor, picker, launcher, inspector, costs, search,
thumbnails (a media job's search hits as pictures).
Jobs run in background threads, so the kernel stays free; widgets change from those threads only by
trait assignment, and plots are PNGs set as an Output's `outputs`. The core package never imports this.
"""

from qsync.notebook.compare import show_comparison
from qsync.notebook.costs import CostPanel, estimate_beside_actual, estimate_table
from qsync.notebook.formatting import show
from qsync.notebook.inspector import BatchInspector
from qsync.notebook.launcher import Launcher
from qsync.notebook.monitor import JobMonitor
from qsync.notebook.picker import JobPicker
from qsync.notebook.rate import RateMeter
from qsync.notebook.search import SearchBox
from qsync.notebook.thumbnails import thumbnails

__all__ = [
    "BatchInspector",
    "CostPanel",
    "JobMonitor",
    "JobPicker",
    "Launcher",
    "RateMeter",
    "SearchBox",
    "estimate_beside_actual",
    "estimate_table",
    "show",
    "show_comparison",
    "thumbnails",
]
