"""Media records at plan time: find each record's file, check it, hash it, and keep DataFrame bytes.

The planner calls `check_media` once per job with a media column. Each row gets either a reference the
batch will read again (`media_ref`, a resolved path), its content hash (sha256 of bytes + caption) and
the tokens of its image or pages (catalog.tokens; the caption's are counted like any text), or the
reason it is skipped (stage 'plan'). Reading every file here costs a pass over
the media, and is what makes an unchanged file free on re-sync: its hash is known before anything is paid.

Bytes held in a DataFrame cell have no file to read again; they are written once into a folder beside the
DuckDB file (`<db>.media/<sha256>.<ext>`, content-addressed: the same bytes are one file however many jobs
hold them), before the plan's transaction commits, so the manifest never points at a missing file.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from qsync.catalog.models import MEDIA_MODEL
from qsync.catalog.tokens import media_tokens
from qsync.embedders.protocol import Media
from qsync.errors import MediaProblem
from qsync.input.media import MAX_MEDIA_BYTES, TooManyPages, check, content_hash, page_windows, read, sniff
from qsync.input.records import INPUT_VIEW
from qsync.input.sources import FileSource, ParquetFilesSource, Source
from qsync.spec.columns import MediaKind

MEDIA_TABLE = "__qsync_media"
_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "application/pdf": ".pdf"}


@dataclass(frozen=True)
class Window:
    """Pages `first` to `last` of a PDF longer than the model reads, a document of its own in the store."""

    first: int
    last: int
    ref: str
    hash: str
    tokens: int


@dataclass(frozen=True)
class MediaRow:
    ordinal: int
    ref: str | None = None
    hash: str | None = None
    tokens: int = 0  # the image's or the pages' (not the caption's)
    problem: str | None = None
    windows: tuple[Window, ...] = ()  # a long PDF cut into page windows, each a chunk of its record


def media_base(source: Source) -> Path:
    """Where relative media paths start: the source file's folder, a folder of Parquet files itself (or where its glob
    starts), else the working directory."""
    if isinstance(source, ParquetFilesSource):
        return source.folder
    return source.path.parent if isinstance(source, FileSource) else Path.cwd()


def media_store(db_path: str) -> Path:
    """The folder beside the DuckDB file where DataFrame bytes are kept."""
    return Path(db_path + ".media")


def caption_of(text: str | None) -> str | None:
    return text if text and text.strip() else None


def check_media(
    con: Any, kind: MediaKind, base: Path, store_dir: Path, model: str = MEDIA_MODEL, *, cut: bool = False
) -> list[MediaRow]:
    """Register MEDIA_TABLE (ordinal, media_ref, media_hash, media_tokens, media_problem) for the rows of
    INPUT_VIEW that have no problem yet; `model` prices the media in tokens. With `cut`, a PDF longer than the model
    reads is cut into page windows instead of skipped: the rows that were are returned (their `windows`)."""
    rows = con.execute(f"SELECT ordinal, text, media, media_bytes FROM {INPUT_VIEW} WHERE problem IS NULL").fetchall()
    checked = [_check_row(int(o), caption_of(t), p, d, kind, base, store_dir, model, cut) for o, t, p, d in rows]
    register_media(con, checked)
    return [row for row in checked if row.windows]


def register_media(con: Any, checked: list[MediaRow]) -> None:
    table = pa.table(
        {
            "ordinal": pa.array([r.ordinal for r in checked], pa.int64()),
            "media_ref": pa.array([r.ref for r in checked], pa.string()),
            "media_hash": pa.array([r.hash for r in checked], pa.string()),
            "media_tokens": pa.array([r.tokens for r in checked], pa.int32()),
            "media_problem": pa.array([r.problem for r in checked], pa.string()),
        }
    )
    con.register(MEDIA_TABLE, table)


def _check_row(
    ordinal: int,
    caption: str | None,
    path: str | None,
    data: bytes | None,
    kind: MediaKind,
    base: Path,
    store: Path,
    model: str,
    cut: bool = False,
) -> MediaRow:
    name = f"the {kind} bytes"
    try:
        if data is not None:
            media = check(bytes(data), kind, name)
            ref = str(keep_bytes(media, store))
        elif path is not None and path.strip():
            resolved = Path(path).expanduser()
            resolved = resolved if resolved.is_absolute() else base / resolved
            name = resolved.name
            media = read(resolved, kind)
            ref = str(resolved.resolve())
        else:
            return MediaRow(ordinal, problem=f"{kind} is missing")
    except TooManyPages as exc:
        if not cut:
            return MediaRow(ordinal, problem=str(exc))
        return _windows(ordinal, caption, exc.data, name, store, model)
    except MediaProblem as exc:
        return MediaRow(ordinal, problem=str(exc))
    return MediaRow(
        ordinal, ref, content_hash(media.data, caption), sum(media_tokens(media.modality, media.pages, model).values())
    )


def _windows(ordinal: int, caption: str | None, data: bytes, name: str, store: Path, model: str) -> MediaRow:
    """A long PDF as page windows, each kept in the store (the batch reads it again from there)."""
    try:
        cut = page_windows(data, name)
    except MediaProblem as exc:
        return MediaRow(ordinal, problem=str(exc))
    windows = tuple(
        Window(first, last, str(keep_bytes(media, store)), content_hash(media.data, caption),
               sum(media_tokens(media.modality, media.pages, model).values()))
        for first, last, media in cut
    )  # fmt: skip
    whole = content_hash(data, caption)
    return MediaRow(ordinal, windows[0].ref, whole, sum(w.tokens for w in windows), windows=windows)


def keep_bytes(media: Media, store: Path) -> Path:
    """Write `media` into the content-addressed store (once; atomically: a crash leaves no partial file)."""
    target = store / (hashlib.sha256(media.data).hexdigest() + _EXTENSIONS[media.mime_type])
    if target.exists():
        return target
    store.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    with partial.open("wb") as fh:
        fh.write(media.data)
        fh.flush()
        os.fsync(fh.fileno())
    partial.replace(target)
    return target


def load_planned(ref: str, expected_hash: str, caption: str | None) -> Media:
    """A media record's bytes when its batch runs: the file the plan checked, read again. Gone, or changed
    since planning (its hash differs), it is a skip: a vector must never be cached under another file's hash."""
    path = Path(ref)
    try:
        if path.stat().st_size > MAX_MEDIA_BYTES:
            raise MediaProblem(f"{path.name} changed since the job was planned (it is now too big); re-sync")
        data = path.read_bytes()
    except OSError as exc:
        raise MediaProblem(f"{path.name} cannot be read since the job was planned: {exc.strerror or exc}") from None
    if content_hash(data, caption) != expected_hash:
        raise MediaProblem(f"{path.name} changed since the job was planned; re-sync to embed the new file")
    kind: MediaKind = "document" if sniff(data) == "application/pdf" else "image"
    return check(data, kind, path.name)


def file_size(ref: str) -> int:
    """Bytes of a media file, for cutting requests before reading it (0 if it is gone: the read says why)."""
    try:
        return Path(ref).stat().st_size
    except OSError:
        return 0
