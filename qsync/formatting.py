"""How figures read to a person: dollars with sensible precision, counts with separators, durations.

One function per kind of figure, and one (`column_formatter`) that picks it for a table's column, used by
the CLI's tables and listings, every notebook widget, the DataFrames the notebooks display and the axes
of their plots, so `$0.0082` reads the same everywhere (never `0.00821025`, `1.815e-05` or
`0.013390949999999999`), and a missing value is `—` (never `NaN`, `None` or `NaT`).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from typing import Any

import pandas as pd

MISSING = "—"
Formatter = Callable[[Any], str]
PRINTED_WIDTH = 96  # a sentence a notebook prints: JupyterLab breaks longer output lines anywhere, mid-word too


def printed(text: str) -> str:
    """A sentence for a notebook's printed output: lines of at most PRINTED_WIDTH characters, broken between words
    only (a model name, a URL or a path stays whole)."""
    return textwrap.fill(text, PRINTED_WIDTH, break_long_words=False, break_on_hyphens=False)


def _missing(value: Any) -> bool:
    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or an array is a value, not a missing one
        return False


def usd(value: Any) -> str:
    """Dollars: cents above $1, two significant digits below (at most six decimals), `$0` for nothing."""
    if _missing(value):
        return MISSING
    amount = float(value)
    if amount == 0:
        return "$0"
    sign, amount = ("-" if amount < 0 else ""), abs(amount)
    if amount >= 1:
        return f"{sign}${amount:,.2f}"
    if amount < 5e-7:
        return f"{sign}<$0.000001"
    decimals = min(6, max(2, 1 - math.floor(math.log10(amount))))
    return f"{sign}${amount:.{decimals}f}"


def count(value: Any) -> str:
    """A whole number with thousands separators."""
    return MISSING if _missing(value) else f"{int(value):,}"


def batch_mode_text(texts: Any, tokens: Any, cost_usd: Any) -> str:
    """What a job's Batch Mode embedded, said the same in the run summary, the monitor and the cost panel (Batch
    Mode bills half the standard price: what it cost is also what it saved)."""
    return (
        f"{count(texts)} texts embedded by Batch Mode: {count(tokens)} tokens, {usd(cost_usd)} at half price "
        f"({usd(cost_usd)} saved)"
    )


def counted(value: int, noun: str, plural: str | None = None) -> str:
    """A count with its noun, singular for one: `1 record`, `2,005 records`, `3 batches` (plural given)."""
    return f"{count(value)} {noun if int(value) == 1 else plural or noun + 's'}"


def records_to_chunks(records: Any, chunks: Any) -> str:
    """'3,000 records → 9,412 chunks' when long records were cut into chunks (points outnumber the valid records),
    else ''."""
    if _missing(records) or _missing(chunks) or int(chunks) <= int(records):
        return ""
    return f"{count(records)} records → {count(chunks)} chunks"


def unconfirmed(amount: Any) -> str:
    """What may have been billed besides the confirmed spend, after a space, or '' (`qsync run`'s lines)."""
    return f" (+ up to {usd(amount)} unconfirmed)" if amount else ""


def chunked(records: Any, chunks: Any) -> str:
    """records_to_chunks in parentheses after a space, or ''."""
    phrase = records_to_chunks(records, chunks)
    return f" ({phrase})" if phrase else ""


def number(value: Any, digits: int = 1) -> str:
    """A measured quantity (rate, minutes, seconds): separators, `digits` decimals, no trailing noise."""
    return MISSING if _missing(value) else f"{float(value):,.{digits}f}"


def score(value: Any) -> str:
    """A search hit's similarity: 3 decimals, as near neighbours differ in the third (0.812, 0.815)."""
    return number(value, 3)


def percent(value: Any) -> str:
    """A signed relative error, e.g. `+4.2%`."""
    return MISSING if _missing(value) else f"{float(value):+.1f}%"


def duration(seconds: Any) -> str:
    """`45 s`, `3 min 20 s`, `2 h 05 min`."""
    if _missing(seconds):
        return MISSING
    s = max(0, round(float(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def gigabytes(value: Any) -> str:
    """A size given in GB as people read it: MB under a gigabyte (one unit down a column of small sizes, not
    `3.7 MB` beside `0.01 GB`)."""
    if _missing(value):
        return MISSING
    gb = float(value)
    if gb >= 1:
        return f"{gb:,.2f} GB"
    mb = gb * 1024
    return f"{mb:,.1f} MB" if mb < 100 else f"{mb:,.0f} MB"


def column_formatter(name: str, values: pd.Series) -> Formatter:
    """A formatter chosen by the column's name and type: dollars, identifiers, counts, seconds, minutes as a
    duration, text."""
    lowered = name.lower()
    if "usd" in lowered or "$" in lowered or lowered == "cost":
        return usd
    if lowered == "id" or lowered.endswith(("_id", "pid", "_no")):  # names, not quantities: no separators
        return lambda v: MISSING if _missing(v) else str(v)
    if lowered == "score":
        return score
    if lowered.endswith("_s") or lowered == "seconds":
        return lambda v: number(v, 1)
    if lowered.endswith("minutes"):  # a duration, as people read one ("8 s", not "0.14")
        return lambda v: MISSING if _missing(v) else duration(float(v) * 60)
    if pd.api.types.is_bool_dtype(values):
        return lambda v: MISSING if _missing(v) else ("yes" if v else "no")
    if pd.api.types.is_integer_dtype(values) or (
        pd.api.types.is_float_dtype(values) and values.dropna().apply(float.is_integer).all()
    ):
        return count
    if pd.api.types.is_float_dtype(values):
        return lambda v: number(v, 2)
    if pd.api.types.is_datetime64_any_dtype(values):
        return lambda v: MISSING if _missing(v) else pd.Timestamp(v).strftime("%Y-%m-%d %H:%M:%S")
    return lambda v: MISSING if _missing(v) else str(v)


def formatted(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with every cell as the text a person reads (see `column_formatter`)."""
    return pd.DataFrame({c: frame[c].map(column_formatter(str(c), frame[c])) for c in frame.columns}, index=frame.index)


def value_text(name: str, value: Any) -> str:
    """One named value (a line of `qsync status`), formatted as it would be in a column of that name; a mapping (an
    estimate's skip reasons) as its items on one line, not as Python's repr."""
    if isinstance(value, dict):
        return "; ".join(f"{k}: {count(v) if isinstance(v, int) else v}" for k, v in value.items()) or "none"
    return column_formatter(name, pd.Series([value]))(value)


def rows_read_text(column: str, since: str | None, high_water: str | None, rows: int) -> str:
    """What a job with --changed-since read, and where the next starts: one sentence, for the CLI."""
    read = f"read every row ({rows:,})" if since is None else f"read {counted(rows, 'row')} with {column} >= {since}"
    nxt = f"; the next re-sync reads from {column} >= {high_water}" if high_water is not None else ""
    return f"{read}{nxt}"


# What a reason says of its own record, left out of its kind: the chunk or the line it names, a media file's name at its
# start, and the details after a colon, a bracket or a semicolon ("text too long: ~9,120 tokens (estimated), limit
# 2048", "duplicate id (first seen at row 3)", "photo_17.jpg does not exist" are a "text too long", a "duplicate id"
# and a "file does not exist").
_WHICH_PART = r"^(?:chunk \d+ of \d+: |line \d+: )+"
_FILE_NAME = r"^\S+\.[A-Za-z0-9]{1,5} "
_DETAILS = r": | \(|; "


def skips_for_people(skipped: pd.DataFrame) -> pd.DataFrame:
    """Skipped records as a person reads them (a terminal's `qsync skipped`, the notebook's inspector): rows counted
    from 1, as a duplicate's reason counts them ("first seen at row 3"), where `ordinal` counts from 0 (a frame's
    position: what Python code and --json keep)."""
    shown = skipped[["ordinal", "record_id", "stage", "reason"]].rename(columns={"ordinal": "row", "record_id": "id"})
    return shown.assign(row=shown["row"].map(lambda r: r + 1 if pd.notna(r) else r))


def reason_kinds(reasons: pd.Series) -> pd.Series:
    """Each reason's kind: the reason without what is particular to its record, so that 60 missing images are one
    "file does not exist" and 40 long texts one "text too long" (an estimate's skip reasons, `qsync estimate`, the
    notebook's inspector)."""
    kinds = reasons.str.replace(_WHICH_PART, "", regex=True).str.replace(_FILE_NAME, "file ", regex=True)
    return kinds.str.split(_DETAILS, n=1, regex=True).str[0]


def skip_kinds(reasons: pd.Series) -> pd.DataFrame:
    """Skip reasons by kind, most common first: the kind, how many records, and one of its reasons whole when it says
    more than its kind (the first; None when it does not)."""
    text = reasons.astype(str)
    frame = pd.DataFrame({"kind": reason_kinds(text), "reason": text})
    kinds = frame.groupby("kind", sort=False).agg(records=("reason", "size"), example=("reason", "first"))
    kinds = kinds.reset_index().sort_values(["records", "kind"], ascending=[False, True], kind="stable")
    kinds["example"] = kinds["example"].where(kinds["example"] != kinds["kind"], None)
    return kinds.rename(columns={"kind": "reason"}).reset_index(drop=True)
