"""A comparison of models and sizes (`qsync.compare`) as a notebook shows it: what was paid, one table, one plot,
and what the figure means and does not."""

from __future__ import annotations

import html

import ipywidgets as widgets
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, PercentFormatter

from qsync.app.compare import Comparison, comparison_view, meaning, spent_sentence
from qsync.formatting import count
from qsync.notebook.formatting import css_class, figure_output, frame_html, page_style, small_print


def show_comparison(found: Comparison) -> widgets.VBox:
    """The comparison's table and plot, with what was spent now and what the figure means."""
    table = widgets.HTML(
        f"<p>{html.escape(spent_sentence(found))}</p>"
        + frame_html(comparison_view(found.table), css="qsync-table qsync-compare-table")
    )
    plot = widgets.Output()
    plot.outputs = figure_output(comparison_figure(found))
    note = widgets.HTML(small_print(html.escape(meaning(found.table))))
    return css_class(widgets.VBox([page_style(), table, plot, note]), "qsync-compare")


def comparison_figure(found: Comparison) -> Figure:
    """Neighbours kept by size, a line per model (dashed: of the queries'), sizes on a doubling scale."""
    fig = Figure(figsize=(7, 3), layout="constrained")
    ax = fig.subplots()
    for i, (model, rows) in enumerate(found.table.groupby("model", sort=True)):
        color = f"C{i}"
        ax.plot(rows["dimensions"], rows["neighbours_kept"], marker="o", color=color, label=str(model))
        if "neighbours_kept_queries" in rows:
            ax.plot(rows["dimensions"], rows["neighbours_kept_queries"], marker=".", linestyle="--", color=color,
                    label=f"{model}, your {count(found.queries)} queries")  # fmt: skip
    sizes = sorted(found.table["dimensions"].unique())
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sizes))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: count(value)))
    ax.xaxis.set_minor_locator(FixedLocator([]))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylim(0, 1.05)
    ax.set(
        title=f"neighbours kept at each size (of {count(found.sample_records)} sampled records)",
        xlabel="vector size (storage grows with it)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig
