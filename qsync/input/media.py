"""Media for multimodal embedding: read a record's image or document and check it before anyone pays.

A bad file is a skip with its reason (`MediaProblem`), never a failed batch: it is missing, unreadable,
too big, not of the kind its column holds, or cut short. Types are decided by the file's bytes (magic
numbers), never by its name: a `.png` that holds HTML is refused here, not by the API.

Limits, from Google's embeddings guide for gemini-embedding-2 (2026-05) where it gives them:
- images: PNG or JPEG only (WebP, GIF, HEIC are not documented as accepted);
- documents: PDF, at most 6 pages;
- inline bytes: undocumented for embeddings. qsync refuses a file over 20 MB (Gemini's documented limit
  for inline data in a request to its other models), and the request-size limit (4 MiB measured for
  embedding-001) then puts a large file in a request of its own, or the API refuses it and the record
  alone is skipped. Conservative on purpose: a file we refuse costs nothing, one the API refuses may.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path
from typing import Final

from qsync.embedders.protocol import Media
from qsync.errors import MediaProblem
from qsync.spec.columns import MediaKind

MAX_MEDIA_BYTES: Final = 20 * 1024 * 1024
MAX_PDF_PAGES: Final = 6
MAX_IMAGES_PER_REQUEST: Final = 6  # per content, as the guide states; qsync sends one image per record
# Page objects of a PDF: `/Type /Page` but not `/Type /Pages` (the page tree). A cheap count, without a
# PDF library: it reads uncompressed object dictionaries, which is where page objects normally are; a
# PDF that keeps them in compressed object streams counts 0 here and is left for the API to judge.
_PDF_PAGE: Final = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")
_PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"


def content_hash(data: bytes, caption: str | None = None) -> str:
    """What identifies a media record: its bytes, and its caption when it has one. An unchanged file is
    never paid twice; a changed file, or a changed caption, is embedded again."""
    digest = hashlib.sha256(data)
    if caption:
        digest.update(b"\x00caption\x00" + caption.encode("utf-8"))
    return digest.hexdigest()


def sniff(data: bytes) -> str | None:
    """The MIME type the bytes are, by their magic number, among those qsync sends; None otherwise."""
    if data.startswith(_PNG_MAGIC):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    return None


def check(data: bytes, kind: MediaKind, name: str = "the file") -> Media:
    """`data` as media of `kind`, or MediaProblem with the reason."""
    if len(data) > MAX_MEDIA_BYTES:
        raise MediaProblem(f"{name} is too big: {len(data) / 1024**2:.1f} MB, limit {MAX_MEDIA_BYTES // 1024**2} MB")
    if not data:
        raise MediaProblem(f"{name} is empty")
    mime = sniff(data)
    wanted = ("image/png", "image/jpeg") if kind == "image" else ("application/pdf",)
    if mime not in wanted:
        what = "a PNG or JPEG image" if kind == "image" else "a PDF document"
        raise MediaProblem(f"{name} is not {what} (its bytes say {mime or 'unknown type'})")
    if mime == "image/png":
        _check_png(data, name)
    elif mime == "image/jpeg":
        _check_jpeg(data, name)
    else:
        return _check_pdf(data, name)
    return Media(mime, data)


def read(path: Path, kind: MediaKind) -> Media:
    """The file at `path` as media of `kind`, or MediaProblem: missing, unreadable, or failing `check`.
    The size is looked at before the file is read, so a 200 MB file is never loaded."""
    name = path.name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise MediaProblem(f"{name} does not exist") from None
    except OSError as exc:
        raise MediaProblem(f"{name} cannot be read: {exc.strerror or exc}") from None
    if path.is_dir():
        raise MediaProblem(f"{name} is a folder, not a file")
    if size > MAX_MEDIA_BYTES:
        raise MediaProblem(f"{name} is too big: {size / 1024**2:.1f} MB, limit {MAX_MEDIA_BYTES // 1024**2} MB")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MediaProblem(f"{name} cannot be read: {exc.strerror or exc}") from None
    return check(data, kind, name)


def _check_png(data: bytes, name: str) -> None:
    # A PNG starts with its IHDR chunk and ends with IEND: a file cut short (a partial download) lacks the end.
    if data[12:16] != b"IHDR" or b"IEND" not in data[-12:]:
        raise MediaProblem(f"{name} is a corrupt PNG (no IHDR header or IEND end: cut short?)")


def _check_jpeg(data: bytes, name: str) -> None:
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise MediaProblem(f"{name} is a corrupt JPEG (no end-of-image marker: cut short?)")


class TooManyPages(MediaProblem):
    """A PDF longer than the model reads: skipped, or cut into page windows (`page_windows`) when chunking."""

    def __init__(self, message: str, data: bytes) -> None:
        super().__init__(message)
        self.data = data


def _check_pdf(data: bytes, name: str) -> Media:
    if b"%%EOF" not in data[-1024:]:
        raise MediaProblem(f"{name} is a corrupt PDF (no %%EOF at its end: cut short?)")
    pages = len(_PDF_PAGE.findall(data))
    if pages > MAX_PDF_PAGES:
        raise TooManyPages(
            f"{name} has too many pages ({pages}; gemini-embedding-2 reads at most {MAX_PDF_PAGES})", data
        )
    return Media("application/pdf", data, pages)


def page_windows(data: bytes, name: str) -> list[tuple[int, int, Media]]:
    """A PDF cut into documents of at most MAX_PDF_PAGES pages each: (first page, last page, counted from 1, and the
    window as a checked PDF). MediaProblem if pypdf cannot read it."""
    from pypdf import PdfReader, PdfWriter  # imported here: only jobs with long PDFs need it
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        total = len(reader.pages)
        windows = []
        for first in range(0, total, MAX_PDF_PAGES):
            writer = PdfWriter()
            last = min(total, first + MAX_PDF_PAGES)
            for page in reader.pages[first:last]:
                writer.add_page(page)
            out = io.BytesIO()
            writer.write(out)
            windows.append((first + 1, last, check(out.getvalue(), "document", f"pages {first + 1}-{last} of {name}")))
    except (PdfReadError, ValueError, KeyError) as exc:
        raise MediaProblem(
            f"{name} has more than {MAX_PDF_PAGES} pages and cannot be cut into windows: {exc}"
        ) from None
    return windows
