"""Jobs in the ledger: their states, the stored spec (read in one place), names and re-syncs, cancelling.

Job states:

    planned --lease--> running --release--> paused | failed | completed | cancelled
    paused | failed | (stale) running --lease--> running            cancelled and completed are final

A `running` job whose owner is gone is shown as `stale` (figures) but stays `running` in the file until someone
takes its lease over (lease).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qsync.clock import Clock
from qsync.errors import JobNotFound
from qsync.ledger.ledger import Ledger
from qsync.ledger.states import JobState
from qsync.spec.job import JobSpec, base_name, resync_number
from qsync.sql import first_row


@dataclass(frozen=True)
class JobRecord:
    """A job as stored: its status, its spec, its budget, and what planning derived from the spec."""

    job_id: str
    status: str  # as stored: a dead owner's job still says `running` (figures show it as `stale`)
    spec: JobSpec
    max_cost_usd: float | None
    config: dict[str, Any]  # the stored spec, plus `target` and `embedder_signature` as planned

    @property
    def state(self) -> JobState:
        return JobState(self.status)

    @property
    def embedder_signature(self) -> str | None:
        value = self.config.get("embedder_signature")
        return str(value) if value else None

    @property
    def target(self) -> str:
        return str(self.config.get("target") or self.spec.target)


_COLUMNS = "job_id, status, config, collection, source, max_cost_usd"


def _record(row: tuple[Any, ...], base: Path) -> JobRecord:
    job_id, status, config, collection, source, budget = row
    data = json.loads(config)
    spec = JobSpec.from_dict(data, job_id=job_id, collection=collection, source=source, base=base)
    cap = None if budget is None or math.isnan(float(budget)) else float(budget)  # a row: None, never NA
    return JobRecord(str(job_id), str(status), spec, cap, data)


def job_record(ledger: Ledger, job: str) -> JobRecord:
    """The job as stored; JobNotFound if there is none of that name."""
    rows = ledger.query_rows(f"SELECT {_COLUMNS} FROM jobs WHERE job_id = ?", [job])
    if not rows:
        raise JobNotFound(f"no job named {job!r} in {ledger.path}")
    return _record(rows[0], ledger.path.parent)


def newest_job(ledger: Ledger, name: str) -> JobRecord | None:
    """The job NAME or NAME#n with the highest n (None: no job of that name)."""
    rows = ledger.query_rows(
        f"SELECT {_COLUMNS} FROM jobs WHERE job_id = ? OR job_id LIKE ? ESCAPE '\\'", [name, _like_prefix(name) + "#%"]
    )
    if not rows:
        return None
    return _record(max(rows, key=lambda r: resync_number(str(r[0]))), ledger.path.parent)


def next_resync_name(ledger: Ledger, name: str) -> str:
    """NAME#n+1 for the newest job NAME#n (NAME#2 after NAME)."""
    newest = newest_job(ledger, base_name(name))
    n = resync_number(newest.job_id) + 1 if newest else 2
    return f"{base_name(name)}#{n}"


def last_mark(ledger: Ledger, name: str, column: str) -> tuple[JobRecord, str] | None:
    """The newest completed job of this name (NAME, NAME#n) that read with --changed-since `column`, and the largest
    value it read (input.changed): where the next job starts reading. Unfinished and cancelled jobs do not count: they
    may not have loaded what they read."""
    rows = ledger.query_rows(
        f"""SELECT {_COLUMNS}, high_water FROM jobs
            WHERE (job_id = ? OR job_id LIKE ? ESCAPE '\\') AND status = 'completed' AND since_column = ?
              AND high_water IS NOT NULL""",
        [name, _like_prefix(name) + "#%", column],
    )
    if not rows:
        return None
    newest = max(rows, key=lambda r: resync_number(str(r[0])))
    return _record(newest[:-1], ledger.path.parent), str(newest[-1])


def job_exists(con: Any, job: str) -> bool:
    return first_row(con.execute("SELECT 1 FROM jobs WHERE job_id = ?", [job])) is not None


def cancel(ledger: Ledger, job: str, clock: Clock) -> str:
    """Cancel a job: at once if nobody runs it, else ask its runner (it sees the request at its next heartbeat).
    Returns what happened: 'cancelled', 'cancel requested', or the final state it had."""
    with ledger.transaction() as con:
        row = first_row(con.execute("SELECT status, lease_token FROM jobs WHERE job_id = ?", [job]))
        if row is None:
            raise JobNotFound(f"no job named {job!r} in {ledger.path}")
        if JobState(row[0]).final:
            return str(row[0])
        if row[1] is not None:
            con.execute("UPDATE jobs SET cancel_requested = true WHERE job_id = ?", [job])
            return "cancel requested"
        now = clock.now()
        con.execute(
            "UPDATE jobs SET status = 'cancelled', message = 'cancelled', finished_at = ?, updated_at = ? "
            "WHERE job_id = ?",
            [now, now, job],
        )
        return "cancelled"


def _like_prefix(name: str) -> str:
    return name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
