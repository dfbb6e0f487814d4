"""Which columns of a source hold a record's id, its text (or a template over several columns), its payload,
and for a multimodal job its image or document."""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any, Literal

from qsync.errors import SourceError

MediaKind = Literal["image", "document"]


def template_fields(template: str) -> list[str]:
    """The column names a text template such as '{title}: {body}' uses."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


@dataclass(frozen=True)
class Columns:
    """Which columns hold the id, the text (or a template over several columns) and the payload; for a
    multimodal job, which one holds each record's image or document (a path, or bytes in a DataFrame),
    whose text, if any, is then its caption."""

    id_column: str = "id"
    text_column: str | None = "text"
    text_template: str | None = None
    payload_columns: tuple[str, ...] = ()
    image_column: str | None = None
    document_column: str | None = None

    def __post_init__(self) -> None:
        if self.image_column and self.document_column:
            # One record, one embedding of one medium: a row with both would need two vectors per point.
            raise SourceError("give one media column per job: an image column or a document column, not both")
        if self.text_column is not None and self.text_template is not None:
            raise SourceError("give exactly one of text_column or text_template")
        if self.text_column is None and self.text_template is None and not self.media_column:
            raise SourceError("give exactly one of text_column or text_template")
        if self.text_template is not None and not template_fields(self.text_template):
            raise SourceError(f"text template {self.text_template!r} names no column, e.g. '{{title}}: {{body}}'")

    @property
    def media_column(self) -> str | None:
        return self.image_column or self.document_column

    @property
    def media_kind(self) -> MediaKind | None:
        return "image" if self.image_column else "document" if self.document_column else None

    def required(self) -> list[str]:
        text_cols = [self.text_column] if self.text_column else template_fields(self.text_template or "")
        media = [self.media_column] if self.media_column else []
        return list(dict.fromkeys([self.id_column, *text_cols, *media, *self.payload_columns]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id_column": self.id_column,
            "text_column": self.text_column,
            "text_template": self.text_template,
            "payload_columns": list(self.payload_columns),
            "image_column": self.image_column,
            "document_column": self.document_column,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Columns:
        return cls(
            data.get("id_column", "id"),
            data.get("text_column"),
            data.get("text_template"),
            tuple(data.get("payload_columns") or ()),
            data.get("image_column"),
            data.get("document_column"),
        )
