"""Which job a launcher shows when it is made (Run All, a restarted kernel) or when Read columns is pressed for
another source: the jobs of the DuckDB file, read without holding anything."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from qsync.app import reading
from qsync.errors import QsyncError
from qsync.spec.job import JobSpec, base_name

UNFINISHED = ("planned", "paused", "failed", "stale")


def job_to_show(db: str, name: str | None, *, newest_unfinished: bool) -> tuple[str, str] | None:
    """(job, status): the newest unfinished job of the file when `newest_unfinished` (a kernel restarted on a job
    typed into the form must find it, not the notebook's default source), else the newest job named `name`
    (NAME, NAME#2, …); None when there is none."""
    frame = _jobs(db)
    if newest_unfinished:
        unfinished = frame[frame["status"].isin([*UNFINISHED, "running"])]
        if not unfinished.empty:
            return str(unfinished.iloc[0]["job"]), str(unfinished.iloc[0]["status"])
    if name is None:
        return None
    mine = frame[[base_name(str(j)) == base_name(name) for j in frame["job"]]]
    return None if mine.empty else (str(mine.iloc[0]["job"]), str(mine.iloc[0]["status"]))  # newest first


def _jobs(db: str) -> pd.DataFrame:
    empty = pd.DataFrame(columns=["job", "status"])
    if not Path(db).exists():
        return empty
    try:
        return reading.jobs(db=db)
    except QsyncError:
        return empty


def source_text(spec: JobSpec) -> str | None:
    """What the Source field holds for a stored job: its file, or its query (its database goes in the Database
    field); None for a DataFrame (not kept)."""
    if spec.source == "dataframe":
        return None
    if spec.source.startswith("sql: "):
        return "sql:" + spec.source.removeprefix("sql: ")
    # As typed beside the notebook (../data/docs.csv) when it is near: a long absolute path hides the file's name.
    near = os.path.relpath(spec.source)
    return near if not near.startswith("../../") else spec.source
