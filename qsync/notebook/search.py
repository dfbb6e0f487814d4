"""A search box over a job's collection: type a text, see the nearest records (`qsync.search`); a media
job's hits as thumbnails."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from qsync.app.reading import search, stored_job
from qsync.errors import QsyncError
from qsync.notebook.formatting import error_html, frame_html, small_print
from qsync.notebook.thumbnails import thumbnail_grid


class SearchBox:
    def __init__(self, job: str | None = None, db: str | Path | None = None, limit: int = 10) -> None:
        self.job = job
        self.db = db
        self.title = widgets.HTML("")
        # continuous_update=False: the value reaches the kernel on Enter (or leaving the field), not on every
        # key, so observing it searches once per question (Text.on_submit is deprecated in ipywidgets 8).
        self.query = widgets.Text(placeholder="type a text to find the records nearest to it, then Enter",
                                  continuous_update=False, layout={"width": "520px"})  # fmt: skip
        self.query.add_class("qsync-search-text")
        self.limit = widgets.BoundedIntText(limit, min=1, max=100, description="Results", layout={"width": "150px"},
                                            style={"description_width": "60px"})  # fmt: skip
        self.button = widgets.Button(description="Search", icon="search", button_style="info")
        self.button.add_class("qsync-search")
        self.results = widgets.HTML("")
        self.results.add_class("qsync-search-results")
        self.button.on_click(lambda _: self.run())
        self.query.observe(lambda _: self.run(), names="value")
        self.widget = widgets.VBox([self.title, widgets.HBox([self.query, self.limit, self.button]), self.results])
        self.widget.add_class("qsync-searchbox")
        self.set_job(job)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def set_job(self, job: str | None) -> None:
        self.job = job
        self.results.value = ""
        self.title.value = self._title(job) if job else ""

    def _title(self, job: str) -> str:
        """The collection searched, by name: every point in it is found, whichever job loaded it (04's images and
        PDFs share one)."""
        try:
            spec = stored_job(job, db=self.db).spec
        except QsyncError:  # not planned yet: the job's name is all there is
            return f"<b>Search {html.escape(job)}</b>"
        note = f"of job {html.escape(job)}; the points other jobs loaded into it are found too"
        # The offline embedder's hits look broken to someone expecting meaning ("a musical instrument" finds "slow").
        if spec.embedder.kind == "hash":
            note += (
                "; the hashing embedder (offline) finds records that share words with yours, not meaning: a Gemini "
                "job finds meaning"
            )
        return f"<b>Search collection {html.escape(spec.collection)}</b> " + small_print(note)

    def run(self) -> None:
        if not self.job:
            self.results.value = "<i>No job to search yet.</i>"
            return
        self.results.value = "<i>searching…</i>"
        try:
            found = search(self.job, self.query.value, self.limit.value, db=self.db)
        except QsyncError as exc:
            self.results.value = error_html(str(exc))
            return
        if "media" in found.columns:  # a media job: its images (and PDFs) as thumbnails
            self.results.value = thumbnail_grid(found)
            return
        self.results.value = frame_html(found, "No records found: is the collection empty?", max_chars=160)
