"""The estimate a job was planned with, beside what it spent, for people: one table and its footnote, shown by the
notebooks' cost view (as HTML) and by `qsync cost` (as text)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from qsync.app import reading
from qsync.formatting import count, duration, percent, usd
from qsync.money.recorded import error_known


@dataclass(frozen=True)
class Versus:
    """`table`: tokens, cost and time of work: estimate (plan time), actual, error; `footnote`: what the estimate was
    made for and how, and what the error means."""

    table: pd.DataFrame
    footnote: str


def work_time(minutes: Any) -> str:
    """A duration with the digits its error needs: hundredths below 1 s, tenths below 10 s (a 0.3 s job beside a
    0.4 s estimate is not "0 s / 0 s", and 0.62 s against 0.38 s is the +64% beside it, which "0.6 s / 0.4 s" is
    not)."""
    seconds = float(minutes) * 60  # a missing figure is NaN here: `duration` shows it as missing
    if seconds < 1:
        return f"{seconds:.2f} s"
    return f"{seconds:.1f} s" if seconds < 10 else duration(seconds)


def versus(job: str, db: str | Path | None = None) -> Versus | None:
    """The job's recorded estimate against its actual figures (money.recorded.estimate_vs_actual), or None when it
    was planned by a qsync older than the estimate."""
    frame = reading.estimate_vs_actual(job, db=db)
    if frame.empty:
        return None
    recorded = frame.attrs["recorded"]
    # Minutes as a duration: a small job's "0.0 / 0.0" beside an error of -85% read as a contradiction.
    fmt = {"tokens": count, "cost_usd": usd, "minutes": work_time}
    table = pd.DataFrame({
        "": ["tokens", "cost", "time of work"],
        "estimate (plan time)": [fmt[f](e) for f, e in zip(frame["figure"], frame["estimate"], strict=True)],
        "actual": [fmt[f](a) for f, a in zip(frame["figure"], frame["actual"], strict=True)],
        "error": [percent(e) for e in frame["error_pct"]],
    })  # fmt: skip
    when = pd.Timestamp(recorded["recorded_at"]).strftime("%Y-%m-%d %H:%M")
    media = int(recorded.get("media_tokens") or 0)
    text_price = usd(recorded["price_usd_per_million_tokens"])
    prices = f"priced at {text_price} per 1M tokens"
    spec = reading.stored_job(job, db=db).spec
    if media or spec.columns.media_kind:  # images and PDF pages have a price of their own
        media_price = usd(spec.embedder.price_per_million(batch_mode=spec.batch_mode, media=True))
        if media:
            prices = (
                f"{count(media)} of the tokens are images or PDF pages at {media_price} per 1M, the rest text at "
                f"{text_price}"
            )
        else:  # a media job with nothing to embed: its prices, not "0 of the tokens are images"
            prices = f"priced at {media_price} per 1M tokens of images and PDF pages, {text_price} of text"
    status = str(frame.attrs.get("status", ""))
    error = (
        "Error: estimate minus actual, in % of the actual."
        if error_known(status)
        else f"Error: once the job completes (it is {status}: the estimate is for all of its texts)."
    )
    # A re-sync with nothing to embed: not "for 0 texts to embed (0 already cached); nothing to embed".
    what = (
        f"for {count(recorded['texts_to_embed'])} texts to embed ({count(recorded['cached_texts'])} already cached); "
        f"{recorded['tokens_basis']}"
        if recorded["texts_to_embed"]
        else "with nothing to embed"
    )
    footnote = f"estimated {when} {what}; {prices}. {error}"
    if recorded["texts_to_embed"] and pd.isna(recorded["minutes"]):  # the table's "—" said nothing of why
        footnote += " Time of work is estimated only for a Gemini model's standard calls (from its rate limits)."
    return Versus(table, footnote)
