"""The monitor's plot: records and throughput over the history it kept, across Pause and Resume (a gap between
runs, not a slope)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.figure import Figure

from qsync.formatting import count, counted, number
from qsync.ledger.figures import JobFigures


@dataclass
class HistoryPoint:
    t: float  # seconds since the monitor first saw the job
    processed: int
    skipped: int
    rate: float | None  # smoothed, as shown at that moment
    new_run: bool  # first point of a run: the plot breaks the line here (the pause between runs)


def history_figure(history: Sequence[HistoryPoint], figures: JobFigures, pace: str, waiting: bool) -> Figure | None:
    """Records and throughput over the monitor's history (None: an empty job or a single moment, nothing worth a
    plot). `pace`: the status line's rate and ETA, said instead of a throughput line too short to draw; `waiting`:
    the run waits for a service it cannot reach."""
    if figures.batches_total == 0 or len(history) < 2 or history[-1].t <= history[0].t:
        return None
    minutes = history[-1].t > 180
    scale = 60.0 if minutes else 1.0
    times: list[float] = []
    processed: list[float] = []
    skipped: list[float] = []
    rates: list[float] = []
    for point in history:
        if point.new_run and times:  # the pause between two runs: a gap, not a slope
            times.append(math.nan)
            processed.append(math.nan)
            skipped.append(math.nan)
            rates.append(math.nan)
        times.append(point.t / scale)
        processed.append(point.processed)
        skipped.append(point.skipped)
        rates.append(math.nan if point.rate is None else point.rate)
    unit = "minutes" if minutes else "seconds"
    # A bare Figure (not pyplot) draws off-screen without touching the kernel's matplotlib backend.
    fig = Figure(figsize=(9, 2.4))
    left, right = fig.subplots(1, 2)
    left.plot(times, processed, label="processed")
    left.plot(times, skipped, color="tab:red", label=f"skipped ({count(figures.skipped_records)})")
    title = "records"
    if figures.batches_failed:
        title += f" — {counted(figures.batches_failed, 'failed batch', 'failed batches')}"
    left.set(title=title, xlabel=unit, ylim=(0, max(1, figures.total_records) * 1.05))
    left.legend(loc="upper left", fontsize=8)
    if sum(not math.isnan(r) for r in rates) < 2:  # no line to draw: a sentence, not an empty frame
        run = history[max(i for i, p in enumerate(history) if p.new_run or i == 0) :]
        if figures.status != "running" and len(run) > 1 and run[-1].t > run[0].t:
            # Ended before a recent rate could be measured: say what the run averaged instead.
            average = (run[-1].processed - run[0].processed) / (run[-1].t - run[0].t)
            sentence = f"the run averaged\n{number(average)} records/s"
        else:  # what the status line says, so the two never disagree
            sentence = pace.replace(" · ", "\n").replace(": ", ":\n")
        right.text(0.5, 0.5, sentence, ha="center", va="center", transform=right.transAxes)
        right.set(xticks=[], yticks=[], title="throughput (records/s)")
    else:
        right.plot(times, rates, color="tab:orange")
        waits = " — now waiting for the API" if waiting else ""
        right.set(title=f"throughput (records/s, last 30 s){waits}", xlabel=unit)
        right.set_ylim(bottom=0)
    return fig
