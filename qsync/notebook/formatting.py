"""How the widgets show things: tables as HTML with every number formatted, plots as PNG outputs, money
through `qsync.formatting.usd` (also on plot axes), and messages in the words of buttons and fields."""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as widgets
import pandas as pd
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from qsync.formatting import Formatter, column_formatter, count, duration, number, usd


def figure_output(fig: Figure) -> tuple[dict[str, Any], ...]:
    """A figure as an Output widget's `outputs` (safe to set from any thread, unlike `with out:`)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode()
    return ({"output_type": "display_data", "data": {"image/png": data, "text/plain": "<plot>"}, "metadata": {}},)


def usd_axis(axis: Axis) -> None:
    """Tick labels in dollars, with the same precision rules as every other dollar figure."""
    axis.set_major_formatter(FuncFormatter(lambda value, _: usd(value)))


def frame_html(
    frame: pd.DataFrame, empty: str = "Nothing to show.", formats: Mapping[str, Formatter] | None = None,
    max_chars: int = 120, css: str = "qsync-table", headers: Mapping[str, str] | None = None,
) -> str:  # fmt: skip
    """A DataFrame as an HTML table: numbers formatted (dollars, separators), `—` for missing, long
    text cut to `max_chars`; an empty frame is the sentence `empty`. `headers`: a column's label for people, where
    its name (which chooses its format: `cost_usd` in dollars, `expected_minutes` as a duration) is an API's."""
    if frame.empty:
        return f"<p class='qsync-empty'><i>{html.escape(empty)}</i></p>"
    formats = dict(formats or {})
    labels = dict(headers or {})
    head = "".join(
        f"<th style='padding:2px 12px'>{html.escape(labels.get(str(c), str(c)))}</th>" for c in frame.columns
    )
    fmts = [formats.get(str(c)) or column_formatter(str(c), frame[c]) for c in frame.columns]
    rows = []
    for values in frame.itertuples(index=False):
        cells = []
        for fmt, value in zip(fmts, values, strict=True):
            text = fmt(value)
            whole = ""
            if len(text) > max_chars:  # cut to keep the table readable; the whole text shows on hover
                whole = f" title='{html.escape(text, quote=True)}'"
                text = text[: max_chars - 1] + "…"
            align = "right" if text[:1].isdigit() or text[:1] in "$<-+—" else "left"
            cells.append(f"<td{whole} style='text-align:{align};padding:2px 12px'>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    # In a scrolling box: a table wider than the notebook (a long reason, many columns) scrolls instead of running
    # past the output's right edge, where nothing showed it was cut.
    return (
        f"<div class='qsync-scroll' style='overflow-x:auto;max-width:100%'>"
        f"<table class='{css}' style='border-collapse:collapse;font-size:12px'>"
        f"<thead><tr style='text-align:left'>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def show(
    frame: pd.DataFrame, empty: str = "Nothing to show.", headers: Mapping[str, str] | None = None
) -> widgets.HTML:
    """A DataFrame for a notebook cell: formatted numbers, dollars as dollars, no NaN or None; `headers` labels
    columns for people (`{"expected_minutes": "time of work"}`), each still formatted by its name."""
    return widgets.HTML(frame_html(frame, empty, headers=headers))


_CLI_ADVICE: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    (re.compile(r"`?qsync resume [^`;,)]+`?( continues)?"), "press Resume"),
    (re.compile(r"`?qsync cancel [^`;,)]+`?"), "Cancel job"),
    (re.compile(r"resume the job to continue"), "press Resume to continue"),
    (re.compile(r"--dimensions (\d+)"), r"set Dimensions to \1"),
    (re.compile(r"--distance (\w+)"), r"use \1 distance"),
    (re.compile(r"--qdrant-url"), "a Qdrant server URL"),
    (re.compile(r"--qdrant-path"), "another Qdrant folder"),
    (re.compile(r"--price-per-million"), "a price per million tokens"),
    (re.compile(r"--max-cost-usd"), "the Budget field"),
    (re.compile(r"pass --db / set QSYNC_DB"), "check the DB path"),
    (re.compile(r"--([a-z][a-z-]+)"), lambda m: f"the {m.group(1).replace('-', ' ')} setting"),
]


def humanize(message: str | None) -> str:
    """A message from the core, with terminal advice (`qsync resume …`, `--dimensions 768`) put in the
    words of the notebook's buttons and fields."""
    text = message or ""
    for pattern, replacement in _CLI_ADVICE:
        text = pattern.sub(replacement, text)
    return re.sub(r"\$(\d+\.\d{4,})", lambda m: usd(float(m.group(1))), text)


def small_print(inner_html: str) -> str:
    """Small print (a footnote under a table or plot, a hint beside a field, a notice): smaller text with its own line
    height. A <small> kept its container's, and an HTML widget's is its row height (28 px): two lines stood far
    apart."""
    return f'<p class="qsync-small-print" style="font-size: 0.85em; line-height: 1.4; margin: 4px 0">{inner_html}</p>'


def error_html(text: str) -> str:
    return f"<span style='color:#b00020'>{html.escape(humanize(text))}</span>"


_STYLE = """<style>
/* JupyterLab draws a disabled button at 60% opacity: a blue or red one still reads as "press me". */
.qsync-launcher .jupyter-button:disabled, .qsync-inspector .jupyter-button:disabled {
  opacity: 0.35; filter: grayscale(100%); cursor: not-allowed; box-shadow: none;
}
/* A comparison's rows read across: a model's name or "1 min 42 s" broken over two lines reads as two rows. */
.qsync-compare-table td { white-space: nowrap; }
</style>"""


def page_style() -> widgets.HTML:
    """A style element for the widgets' page: disabled buttons look disabled."""
    style = widgets.HTML(_STYLE, layout={"height": "0px", "margin": "0px"})
    style.add_class("qsync-style")
    return style


def css_class(widget: widgets.Widget, name: str) -> widgets.Widget:
    widget.add_class(name)
    return widget


__all__ = ["count", "duration", "figure_output", "frame_html", "humanize", "number", "show", "usd", "usd_axis"]
