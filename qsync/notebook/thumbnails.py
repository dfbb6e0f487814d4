"""Search hits of a media job as a grid of thumbnails: each image small, with its score and caption; a PDF
as a page icon with its page count (qsync renders no PDF pages: that needs a PDF library it does not have).

Thumbnails are made in the kernel (Pillow, which matplotlib brings) and sent inline as small JPEGs, so the
grid shows in JupyterLab, in a saved notebook and in an HTML export, with no file server. A file that is
gone since the job ran shows as a sentence, not a broken image.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd

from qsync.errors import MediaProblem
from qsync.formatting import score
from qsync.input.media import read, sniff

SIZE = 150  # px, the longer side of a thumbnail
_CARD = (
    "display:flex;flex-direction:column;width:{w}px;margin:0 10px 12px 0;font-size:12px;line-height:1.3;"
    "word-wrap:break-word"
)
_BOX = "width:{w}px;height:{w}px;display:flex;align-items:center;justify-content:center;background:#f3f3f3;"
_PAGE_ICON = (
    '<svg width="64" height="80" viewBox="0 0 64 80" role="img" aria-label="PDF document">'
    '<path d="M4 2h40l16 16v60H4z" fill="#fff" stroke="#777" stroke-width="2"/>'
    '<path d="M44 2v16h16" fill="none" stroke="#777" stroke-width="2"/>'
    '<text x="32" y="54" font-size="15" font-family="sans-serif" text-anchor="middle" fill="#b22">PDF</text></svg>'
)


def thumbnail_grid(hits: pd.DataFrame, empty: str = "No records found: is the collection empty?") -> str:
    """HTML of `hits` (qsync.search of a media job: score, id, text, media) as cards, best first."""
    if hits.empty:
        return f"<p><i>{html.escape(empty)}</i></p>"
    cards = [_card(row) for row in hits.to_dict("records")]
    return f'<div class="qsync-thumbnails" style="display:flex;flex-wrap:wrap">{"".join(cards)}</div>'


def thumbnails(hits: pd.DataFrame) -> widgets.HTML:
    """`thumbnail_grid` as a widget, to display in a cell: `thumbnails(qsync.search(job, "a cat"))`."""
    grid = widgets.HTML(thumbnail_grid(hits))
    grid.add_class("qsync-thumbnail-grid")
    return grid


def _card(row: dict[Hashable, Any]) -> str:
    path = row.get("media")
    picture, what = _picture(Path(path)) if isinstance(path, str) and path else ("", "a text record")
    caption = str(row.get("text") or "").strip() or "(no caption)"
    return (
        f'<div class="qsync-thumbnail" style="{_CARD.format(w=SIZE)}">'
        f'<div style="{_BOX.format(w=SIZE)}">{picture or html.escape(what)}</div>'
        f"<span><b>{html.escape(caption)}</b></span><span>score {score(row['score'])}</span>"
        f'<span style="color:#777">{html.escape(str(row["id"]))} · {html.escape(what)}</span></div>'
    )


def _picture(path: Path) -> tuple[str, str]:
    """(HTML of the thumbnail, what the file is) for one hit's file."""
    try:
        data = path.read_bytes()
    except OSError:
        return "", f"{path.name} is gone"
    if sniff(data) == "application/pdf":
        try:
            pages = read(path, "document").pages
        except MediaProblem:
            pages = 0
        return _PAGE_ICON, f"PDF, {pages} page{'s' if pages != 1 else ''}" if pages else "PDF"
    try:
        small = base64.b64encode(_shrink(data)).decode()
    except OSError:  # Pillow cannot read it (changed since the job ran)
        return "", f"{path.name} cannot be shown"
    style = f"max-width:{SIZE}px;max-height:{SIZE}px"
    return f'<img src="data:image/jpeg;base64,{small}" alt="{html.escape(path.name)}" style="{style}">', "image"


def _shrink(data: bytes) -> bytes:
    """A JPEG of at most SIZE px: a few KB, whatever the original weighs."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.thumbnail((SIZE, SIZE))
        out = io.BytesIO()
        image.convert("RGB").save(out, "JPEG", quality=80)
    return out.getvalue()
