"""Pick a job of a DuckDB file: newest first, each with its status, progress and cost; a plain sentence
when the file holds no job yet (never a traceback)."""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd

from qsync.app import reading
from qsync.app.compare import is_comparison
from qsync.errors import QsyncError
from qsync.formatting import count, usd
from qsync.spec.defaults import resolve_db


def job_choices(db: str | Path | None) -> list[tuple[str, str]]:
    """(label, job) for every job in `db`, newest first; after them the re-syncs that embedded nothing (no batch, the
    records unchanged since the last sync: nothing to inspect or cost; the bad rows they skip again were skipped
    before), then the samples `qsync.compare` embedded. A picker opens the first: the newest job that did something,
    not a Start pressed again since or a comparison run; [] when there is no file or no job."""
    path = resolve_db(db)
    if not path.exists():
        return []
    try:
        frame = reading.jobs(db=path)
    except QsyncError:
        return []
    rows = [(row, str(row["job"])) for _, row in frame.iterrows()]
    # sorted is stable: newest first within each group
    rows.sort(key=lambda r: (is_comparison(r[1]), r[0]["batches_total"] == 0 and r[0]["unchanged_records"] > 0))
    return [(_label(row), job) for row, job in rows]


def _label(row: pd.Series) -> str:
    created = row["created_at"]
    when = created.strftime("%Y-%m-%d %H:%M") if isinstance(created, pd.Timestamp) else ""
    return (
        f"{row['job']} — {row['status']}, {count(row['processed_records'])}/{count(row['total_records'])} "
        f"records, {usd(row['cost_usd'])} · {when}"
    )


class JobPicker:
    """A dropdown of the jobs in `db`; `on_change(job)` is called with the picked job (None: no jobs)."""

    def __init__(self, db: str | Path | None = None, job: str | None = None,
                 on_change: Callable[[str | None], None] | None = None) -> None:  # fmt: skip
        self.db = db
        self.dropdown = widgets.Dropdown(description="Job", layout={"width": "760px"},
                                         style={"description_width": "40px"})  # fmt: skip
        self.dropdown.add_class("qsync-job-picker")
        self.reload_button = widgets.Button(description="Reload jobs", icon="sync", layout={"width": "130px"})
        self.empty = widgets.HTML("")
        self.empty.add_class("qsync-no-jobs")
        self.widget = widgets.VBox([widgets.HBox([self.dropdown, self.reload_button]), self.empty])
        self._on_change = on_change
        self.reload_button.on_click(lambda _: self.reload())
        self._quiet = False
        self.dropdown.observe(self._picked, names="value")
        self.reload(job)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    @property
    def job(self) -> str | None:
        value = self.dropdown.value
        return str(value) if value else None

    def reload(self, job: str | None = None) -> None:
        """Read the jobs again, keeping the picked one (or picking `job`, else the newest)."""
        keep = job or self.job
        choices = job_choices(self.db)
        if not choices:
            self._quiet = True
            self.dropdown.options = []
            self._quiet = False
            self.dropdown.layout.display = "none"
            self.empty.value = (
                f"<p>No jobs in <code>{html.escape(str(resolve_db(self.db)))}</code> yet. Start one in "
                "<b>01_backfill</b> (or <code>qsync run</code> in a terminal), then press <b>Reload jobs</b>.</p>"
            )
            self.reload_button.layout.display = ""
            self._changed(None)
            return
        self.empty.value = ""
        self.dropdown.layout.display = ""
        jobs = [j for _, j in choices]
        picked = keep if keep in jobs else jobs[0]
        if job is not None and job not in jobs:
            self.empty.value = f"<p>No job named <code>{html.escape(job)}</code> here; showing the newest.</p>"
        self._quiet = True  # setting the options moves the value on the way: one change, after
        try:
            self.dropdown.options = choices
            self.dropdown.value = picked
        finally:
            self._quiet = False
        self._changed(picked)

    def _picked(self, change: dict[str, Any]) -> None:
        if not self._quiet:
            self._changed(change["new"])

    def _changed(self, job: str | None) -> None:
        if self._on_change is not None:
            self._on_change(str(job) if job else None)
