"""What the launcher says about a job, in sentences: how far it got, what it loaded, and how a form differs from
the stored job."""

from __future__ import annotations

import html
import re

from qsync.formatting import chunked, count, usd
from qsync.ledger.figures import JobFigures


def describe_differences(differences: list[str]) -> list[str]:
    """'text column: stored 'a', given 'b'' as 'text column: the job has 'a', this form has 'b''."""
    out = []
    for diff in differences:
        match = re.match(r"^(.*?): stored (.*), given (.*)$", diff)
        out.append(f"{match[1]}: the job has {match[2]}, this form has {match[3]}" if match else diff)
    return out


def done_so_far(f: JobFigures, status: str) -> str:
    return (
        f"<b>{html.escape(f.job)}</b> is {html.escape(status)}: {count(f.processed_records)} of "
        f"{count(f.total_records)} records already done and {usd(f.cost_usd)} already paid."
    )


def summary_of(f: JobFigures) -> str:
    skipped = f"{count(f.skipped_records)} skipped" + (" (reasons in 02)" if f.skipped_records else "")
    return (
        f"{count(f.processed_records)} of {count(f.total_records)} records — {count(f.loaded_records)} loaded, "
        f"{skipped}, {count(f.unchanged_records)} unchanged{chunked(f.total_records - f.skipped_records, f.total_chunks)}; "
        f"{usd(f.cost_usd)} spent."
    )
