"""The launcher's form: the fields of a backfill (source, columns read from it, embedder, sizes, budget), only
those the chosen embedder uses, and what they mean as job options and run settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from qsync.app.options import calls_in_flight, default_job_name, embedder_spec_of
from qsync.catalog.models import DEFAULT_EMBEDDING_MODEL, default_limits, multimodal
from qsync.errors import ConfigError, QsyncError
from qsync.input.columns import guess_columns, source_columns
from qsync.input.frames import Frame, frame_label
from qsync.input.postgres import without_secret
from qsync.input.sources import as_source
from qsync.notebook.formatting import error_html, small_print
from qsync.spec.defaults import DEFAULT_BATCH_SIZE, DEFAULT_DIMENSIONS
from qsync.spec.job import JobSpec
from qsync.spec.settings import RunSettings

_LABEL = {"description_width": "150px"}
# flex 0 0 auto: a field beside its hint keeps its width; the hint wraps instead (a long one shrank "Chunk tokens").
_FIELD = {"width": "440px", "flex": "0 0 auto"}
_NO_MEDIA = ("(none)", "")
_EMBEDDERS = [("hash — offline, free", "hash"), ("gemini — Gemini API (needs GEMINI_API_KEY)", "gemini")]


def parse_budget(text: str) -> float | None:
    """The Budget field: empty means no cap; else dollars more than 0 ("5", "$0.50")."""
    cleaned = text.strip().removeprefix("$").replace(",", "").strip()
    if not cleaned:
        return None
    try:
        value = float(cleaned)
    except ValueError:
        raise ValueError(f"Budget: {text!r} is not an amount of dollars; leave it empty for no cap") from None
    if value <= 0:
        raise ValueError("Budget: enter more than $0, or leave it empty for no cap")
    return value


class LauncherForm:
    """The fields; `message` is where a field's problem is said (the launcher's message line)."""

    def __init__(
        self,
        source: str | Frame,
        collection: str,
        qdrant_path: str | None,
        message: widgets.HTML,
        defaults: dict[str, Any],
    ) -> None:
        self.frame = None if isinstance(source, str) else source  # a DataFrame of any kind (input.frames)
        self.qdrant_path = qdrant_path
        self.message = message
        self.extra_options: dict[str, Any] = dict(defaults.get("embedder_options", {}))
        self.read_from: str | None = None  # the source the column fields were read from
        self.on_read: Callable[[], None] | None = None  # the launcher looks for the job of a newly read source
        shown_source = frame_label(source) if self.frame is not None else str(source)
        self.source = widgets.Text(shown_source, description="Source", style=_LABEL, layout={"width": "600px"},
                                   placeholder="a .parquet, .csv or .jsonl file, a folder or glob of Parquet files, or sql:SELECT …",
                                   disabled=self.frame is not None)  # fmt: skip
        self.source.add_class("qsync-source")
        # A connection string typed with its password is kept here and shown without it (widgets' state may be saved
        # with the notebook); libpq finds a password left out (PGPASSWORD, ~/.pgpass, PGSERVICE).
        self._database: str | None = defaults.get("source_db") or None
        self.database = widgets.Text(without_secret(self._database) or "", description="Database", style=_LABEL,
                                     layout={"width": "600px"}, placeholder="for sql: or a table: a DuckDB file, or "
                                     "postgresql://USER@HOST/DB",  # the field's width: no more than this shows
                                     tooltip="PostgreSQL's password: from PGPASSWORD, ~/.pgpass or PGSERVICE (one typed "
                                     "here is used, never shown or saved)")  # fmt: skip
        self.database.add_class("qsync-database")
        self.read_button = widgets.Button(description="Read columns", icon="table", layout={"width": "130px"})
        self.read_button.add_class("qsync-read-columns")
        self.collection = widgets.Text(collection, description="Collection", style=_LABEL, layout=_FIELD)
        self.job_name = widgets.Text(defaults.get("job") or "", description="Job name", style=_LABEL, layout=_FIELD,
                                     placeholder="default: COLLECTION:SOURCE-NAME")  # fmt: skip
        self.id_column = widgets.Dropdown(description="Id column", style=_LABEL, layout=_FIELD)
        self.id_column.add_class("qsync-id-column")
        self.text_column = widgets.Dropdown(description="Text column", style=_LABEL, layout=_FIELD)
        self.text_column.add_class("qsync-text-column")
        self.payload_columns = widgets.SelectMultiple(description="Payload columns", rows=4, style=_LABEL,
                                                      layout=_FIELD)  # fmt: skip
        self.payload_columns.add_class("qsync-payload-columns")
        payload_help = widgets.HTML(small_print("stored with each point; Ctrl/⌘-click to pick several"))
        embedder = defaults.get("embedder") or "hash"
        options = list(_EMBEDDERS) + ([(embedder, embedder)] if embedder not in ("hash", "gemini") else [])
        self.embedder = widgets.Dropdown(options=options, value=embedder, description="Embedder", style=_LABEL,
                                         layout=_FIELD)  # fmt: skip
        self.embedder.add_class("qsync-embedder")
        self.model = widgets.Text(defaults.get("model") or DEFAULT_EMBEDDING_MODEL, description="Model", style=_LABEL,
                                  layout=_FIELD)  # fmt: skip
        texts_limit, tokens_limit = default_limits()  # Gemini's tier 1, as a run without limits given paces itself
        self.texts_per_minute = widgets.IntText(int(defaults.get("texts_per_minute") or texts_limit),
                                                description="Texts per minute", style=_LABEL, layout=_FIELD)  # fmt: skip
        self.tokens_per_minute = widgets.IntText(int(defaults.get("tokens_per_minute") or tokens_limit),
                                                 description="Tokens per minute", style=_LABEL, layout=_FIELD)  # fmt: skip
        # Media columns embed each record's image or PDF (its text as caption): gemini-embedding-2 only.
        self.image_column = widgets.Dropdown(options=[_NO_MEDIA], description="Image column", style=_LABEL,
                                             layout=_FIELD)  # fmt: skip
        self.image_column.add_class("qsync-image-column")
        self.document_column = widgets.Dropdown(options=[_NO_MEDIA], description="Document column", style=_LABEL,
                                                layout=_FIELD)  # fmt: skip
        self.document_column.add_class("qsync-document-column")
        self.media_fields = widgets.VBox([self.image_column, self.document_column])
        self.media_fields.add_class("qsync-media-fields")
        self.gemini_fields = widgets.VBox([self.model, self.media_fields, self.texts_per_minute,
                                           self.tokens_per_minute])  # fmt: skip
        self.gemini_fields.add_class("qsync-gemini-fields")
        self.dimensions = widgets.IntText(int(defaults.get("dimensions") or DEFAULT_DIMENSIONS), description="Dimensions",
                                          style=_LABEL, layout=_FIELD)  # fmt: skip
        self.batch_size = widgets.IntText(int(defaults.get("batch_size") or DEFAULT_BATCH_SIZE), description="Batch size",
                                          style=_LABEL, layout=_FIELD)  # fmt: skip
        # Empty: chosen from the rate limits when the run starts, as `qsync run` and `qsync.run` choose; the field's
        # placeholder and the line beside it say the number that will be (calls_in_flight, the same choice).
        given = defaults.get("concurrency")
        self.concurrency = widgets.Text("" if given is None else str(given), description="Calls at once",
                                        placeholder="auto", style=_LABEL, layout=_FIELD)  # fmt: skip
        self.concurrency.add_class("qsync-concurrency")
        self.concurrency_help = widgets.HTML("")
        self.concurrency_help.add_class("qsync-concurrency-help")
        chunk = defaults.get("chunk_tokens")
        self.chunk_tokens = widgets.Text("" if chunk is None else str(chunk), description="Chunk tokens",
                                         placeholder="empty: the model's limit", style=_LABEL, layout=_FIELD)  # fmt: skip
        self.chunk_tokens.add_class("qsync-chunk-tokens")
        chunk_help = widgets.HTML(small_print("longer texts are cut into chunks of at most this many tokens, a "
                                              "point each; 0: skip them as too long"))  # fmt: skip
        budget = defaults.get("max_cost_usd")
        self.budget = widgets.Text("" if not budget else f"{float(budget):g}", description="Budget (USD)",
                                   placeholder="empty: no cap", style=_LABEL, layout=_FIELD)  # fmt: skip
        self.budget.add_class("qsync-budget")
        budget_help = widgets.HTML(small_print("the job's whole spend across resumes; leave empty for no cap"))

        self.read_button.on_click(lambda _: self.read_columns())
        self.embedder.observe(lambda _: self.show_embedder_fields(), names="value")
        self.model.observe(lambda _: self.show_embedder_fields(), names="value")
        for field in (self.texts_per_minute, self.batch_size, self.concurrency):
            field.observe(lambda _: self.show_concurrency(), names="value")
        self.widget = widgets.VBox([
            widgets.HBox([self.source, self.read_button]), self.database, self.collection, self.job_name,
            self.id_column, self.text_column, widgets.HBox([self.payload_columns, payload_help]),
            self.embedder, self.gemini_fields, self.dimensions, self.batch_size,
            widgets.HBox([self.concurrency, self.concurrency_help]),
            widgets.HBox([self.chunk_tokens, chunk_help]), widgets.HBox([self.budget, budget_help]),
        ])  # fmt: skip
        self.show_embedder_fields()
        self.read_columns(defaults)

    def source_value(self) -> str | Frame:
        return self.frame if self.frame is not None else self.source.value.strip()

    def database_value(self) -> str | None:
        """The source database: as typed, or the one given with its password while the field shows it without."""
        shown = self.database.value.strip()
        if self._database and shown == without_secret(self._database):
            return self._database
        return shown or None

    def hide_password(self) -> None:
        """Keep a typed connection string's password out of the field (and so out of the widget's state)."""
        database = self.database_value()
        if database and without_secret(database) != self.database.value.strip():
            self._database = database
            self.database.value = without_secret(database) or ""

    def read_columns(self, defaults: dict[str, Any] | None = None) -> None:
        """Offer the source's columns in the id, text and payload fields (id and text guessed)."""
        defaults = defaults or {}
        source = self.source_value()
        if isinstance(source, str) and not source:
            return
        self.read_from = source if isinstance(source, str) else None
        self.hide_password()
        try:
            columns = source_columns(source, self.database_value())
        except QsyncError as exc:
            # No column fields of the previous source: Start would name columns this source does not have.
            self._offer_columns([])
            self.message.value = error_html(f"Source: {exc}")
            return
        guessed_id, guessed_text = guess_columns(columns)
        keep_id, keep_text = self.id_column.value, self.text_column.value
        picked = tuple(self.payload_columns.value) or tuple(defaults.get("payload_columns", ()))
        media_kept = [(field, defaults.get(key) or field.value)
                      for field, key in ((self.image_column, "image_column"), (self.document_column, "document_column"))]  # fmt: skip
        self._offer_columns(columns)
        self.id_column.value = next(c for c in (defaults.get("id_column"), keep_id, guessed_id, columns[0])
                                    if c in columns)  # fmt: skip
        text_choices = (defaults.get("text_column"), keep_text, guessed_text, columns[-1])
        self.text_column.value = next(c for c in text_choices if c in columns)
        self.payload_columns.value = tuple(c for c in picked if c in columns)
        for field, keep in media_kept:
            field.value = keep if keep in columns else ""
        if self.message.value.startswith("<span style='color:#b00020'>Source"):
            self.message.value = ""
        if self.on_read is not None:
            self.on_read()

    def _offer_columns(self, columns: list[str]) -> None:
        self.id_column.options = columns
        self.text_column.options = columns
        self.payload_columns.options = columns
        for field in (self.image_column, self.document_column):
            field.options = [_NO_MEDIA, *[(c, c) for c in columns]]
            field.value = ""

    def columns_read(self) -> bool:
        """The column fields hold the columns of the source now in the Source field."""
        source = self.source_value()
        return bool(self.id_column.options) and (not isinstance(source, str) or source == self.read_from)

    def media_model(self) -> bool:
        return self.embedder.value == "gemini" and multimodal(self.model.value.strip())

    def show_embedder_fields(self) -> None:
        self.gemini_fields.layout.display = "" if self.embedder.value == "gemini" else "none"
        self.media_fields.layout.display = "" if self.media_model() else "none"
        self.show_concurrency()

    def chosen_concurrency(self) -> int | None:
        """The API calls a run started now would keep in flight when the field is empty: chosen from the rate limits as
        every run chooses (None: by an embedder of your own, when the run starts)."""
        try:
            spec = embedder_spec_of(self.embedder.value, self.model_value(), embedder_options=self.extra_options)
            return calls_in_flight(self._settings(concurrency=None), spec, int(self.batch_size.value))
        except QsyncError:  # a model not in the pricing table, say: Start tells why
            return None

    def show_concurrency(self) -> None:
        """Say what an empty Calls at once field means for these settings: the number the run will choose."""
        chosen = self.chosen_concurrency()
        self.concurrency.placeholder = "auto" if chosen is None else f"auto: {chosen}"
        said = "" if chosen is None else f": <b>{chosen}</b> for these settings"
        self.concurrency_help.value = small_print(f"empty: chosen from the rate limits as the run starts{said}")

    def model_value(self) -> str | None:
        """The Model field, for the gemini embedder (the others have no model to name)."""
        return self.model.value.strip() or None if self.embedder.value == "gemini" else None

    def spec_options(self) -> dict[str, Any]:
        return {
            "collection": self.collection.value.strip(), "job": self.job_name.value.strip() or None,
            "id_column": self.id_column.value, "text_column": self.text_column.value,
            "payload_columns": list(self.payload_columns.value), "embedder": self.embedder.value,
            "model": self.model_value(), "dimensions": self.dimensions.value,
            "embedder_options": self.extra_options, "batch_size": self.batch_size.value,
            "qdrant_path": self.qdrant_path, "source_db": self.database_value(), "chunk_tokens": _whole_number(self.chunk_tokens.value, "chunk tokens"),
            "image_column": self.image_column.value or None if self.media_model() else None,
            "document_column": self.document_column.value or None if self.media_model() else None,
        }  # fmt: skip

    def settings(self) -> RunSettings:
        """The run's settings; Calls at once left empty: None, chosen by the run from the limits."""
        return self._settings(_whole_number(self.concurrency.value, "calls at once"))

    def _settings(self, concurrency: int | None) -> RunSettings:
        gemini = self.embedder.value == "gemini"
        return RunSettings.from_env(
            concurrency=concurrency,
            texts_per_minute=float(self.texts_per_minute.value) if gemini else None,
            tokens_per_minute=float(self.tokens_per_minute.value) if gemini else None,
        )

    def expected_name(self) -> str | None:
        """The job name Start would use, without reading the source's rows."""
        given = str(self.job_name.value).strip()
        if given:
            return given
        source, collection = self.source_value(), self.collection.value.strip()
        if not collection or (isinstance(source, str) and not source):
            return None
        try:
            return default_job_name(as_source(source, database=self.database_value()), collection)
        except QsyncError:
            return None

    def fill_from(self, spec: JobSpec, max_cost_usd: float | None) -> None:
        """Show a stored job's settings in the form (what Start would resume)."""
        columns = [*self.id_column.options]
        for name in (spec.columns.id_column, spec.columns.text_column or "", *spec.columns.payload_columns):
            if name and name not in columns:
                columns.append(name)
        self.id_column.options = self.text_column.options = self.payload_columns.options = columns
        self.id_column.value = spec.columns.id_column
        if spec.columns.text_column:
            self.text_column.value = spec.columns.text_column
        self.payload_columns.value = tuple(spec.columns.payload_columns)
        for field, media in ((self.image_column, spec.columns.image_column),
                             (self.document_column, spec.columns.document_column)):  # fmt: skip
            if media and media not in [v for _, v in field.options]:
                field.options = [*field.options, (media, media)]
            field.value = media or ""
        if spec.embedder.kind not in [v for _, v in self.embedder.options]:
            self.embedder.options = [*self.embedder.options, (spec.embedder.kind, spec.embedder.kind)]
        self.embedder.value = spec.embedder.kind
        if spec.embedder.kind == "gemini":
            self.model.value = spec.embedder.resolved_model
        self.dimensions.value = spec.embedder.dimensions
        self.batch_size.value = spec.batch_size
        self.chunk_tokens.value = "" if spec.chunking.tokens is None else str(spec.chunking.tokens)
        self.budget.value = "" if max_cost_usd is None else f"{max_cost_usd:g}"
        self.extra_options = dict(spec.embedder.options)
        self.show_concurrency()  # the embedder's own price (an option) is part of the choice


def _whole_number(text: str, name: str) -> int | None:
    """A form field's whole number; None when empty."""
    if not text.strip():
        return None
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {text.strip()!r}") from None
