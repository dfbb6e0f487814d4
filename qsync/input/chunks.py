"""Long texts cut into chunks the model takes: at paragraphs, then sentences, then words (never inside a word
unless one word is longer than a chunk), by semchunk, sized by qsync's upper token estimate
(catalog.tokens.upper_tokens) so that no chunk is sent over the model's limit.

Planning leaves the chunks of the records that need them in CHUNKS (ordinal, chunk_no, chunk_count, char_start,
char_end, text, token_estimate; for a PDF longer than the model reads, its page windows: media_ref, media_hash,
media_tokens, page_start, page_end); a record that fits has no rows there and stays one point. Only texts longer in
UTF-8 bytes than the budget are looked at: the upper estimate never exceeds a text's bytes.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final, cast

import pyarrow as pa
from semchunk.semchunk import Chunker, chunkerify

from qsync.catalog.tokens import estimate_tokens, upper_tokens
from qsync.input.media_plan import MediaRow
from qsync.ledger.cache import CacheIdentity, cached_hashes
from qsync.ledger.plans import CHUNKS

_PAGE: Final = 2000  # long records read into Python at a time (their texts may be megabytes each)
_MEMO: Final = 50_000  # token counts semchunk keeps per plan (of the pieces it tries)


def chunker(budget: int) -> Chunker:
    """A splitter into chunks of at most `budget` upper-estimated tokens."""
    return chunkerify(upper_tokens, budget, cache_maxsize=_MEMO)


def split(split_with: Chunker, text: str, overlap: int = 0) -> list[tuple[int, int]]:
    """(start, end) character offsets of the chunks of `text`, in order; together they cover every character but
    the whitespace between them (with an overlap, neighbours share up to `overlap` tokens)."""
    _, offsets = cast(
        "tuple[list[str], list[tuple[int, int]]]", split_with(text, offsets=True, overlap=overlap or None)
    )
    trimmed = []
    for start, end in offsets:  # a passage starts and ends with a character, not the whitespace around it
        piece = text[start:end]
        lead = len(piece) - len(piece.lstrip())
        tail = len(piece) - len(piece.rstrip())
        if lead < len(piece):
            trimmed.append((int(start) + lead, int(end) - tail))
    return trimmed


def split_long_texts(
    con: Any, checked: str, budget: int, overlap: int, *, enabled: bool = True, whole: CacheIdentity | None = None
) -> int:
    """Fill CHUNKS with the chunks of every valid text record of `checked` over `budget` tokens (none when not
    `enabled`: CHUNKS is left empty); the number of records cut. A text the embedding cache holds whole for
    `whole` (the job's embedder) stays whole: the API took it, so it fits (and it was paid for)."""
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE {CHUNKS} (ordinal BIGINT, chunk_no INTEGER, chunk_count INTEGER,
            char_start INTEGER, char_end INTEGER, text VARCHAR, token_estimate INTEGER, media_ref VARCHAR,
            media_hash VARCHAR, media_tokens INTEGER, page_start INTEGER, page_end INTEGER)"""
    )
    if not enabled:
        return 0
    split_with = chunker(budget)
    cut, last = 0, -1
    while True:
        rows = con.execute(
            f"""SELECT ordinal, text FROM {checked}
                WHERE reason IS NULL AND media_ref IS NULL AND strlen(text) > ? AND ordinal > ?
                ORDER BY ordinal LIMIT {_PAGE}""",
            [budget, last],
        ).fetchall()
        if not rows:
            return cut
        last = int(rows[-1][0])
        taken = _taken_whole(con, whole, rows, budget) if whole is not None else set()
        columns: dict[str, list[Any]] = {name: [] for name in ("ordinal", "chunk_no", "chunk_count", "char_start",
                                                               "char_end", "text", "token_estimate")}  # fmt: skip
        for ordinal, text in rows:
            if ordinal in taken or upper_tokens(text) <= budget:
                continue
            offsets = split(split_with, text, overlap)
            cut += 1
            for no, (start, end) in enumerate(offsets):
                piece = text[start:end]
                for name, value in zip(
                    columns, (ordinal, no, len(offsets), start, end, piece, estimate_tokens(piece)), strict=True
                ):
                    columns[name].append(value)
        if columns["ordinal"]:
            table = pa.table(columns).cast(
                pa.schema([("ordinal", pa.int64()), ("chunk_no", pa.int32()), ("chunk_count", pa.int32()),
                           ("char_start", pa.int32()), ("char_end", pa.int32()), ("text", pa.string()),
                           ("token_estimate", pa.int32())])
            )  # fmt: skip
            _insert(con, table)


def _taken_whole(con: Any, whole: CacheIdentity, rows: list[tuple[Any, ...]], budget: int) -> set[int]:
    """Ordinals of the texts over `budget` (by the upper estimate) whose whole vector the cache holds."""
    over = {int(o): text for o, text in rows if upper_tokens(text) > budget}
    hashes = {hashlib.sha256(text.encode("utf-8")).hexdigest(): o for o, text in over.items()}
    return {hashes[h] for h in cached_hashes(con, whole, list(hashes))}


def add_page_windows(con: Any, rows: list[MediaRow]) -> None:
    """Fill CHUNKS with the page windows of the long PDFs planning found (input.media_plan): each window a chunk of
    its record, embedded with the record's caption."""
    windows = [(row.ordinal, no, len(row.windows), w) for row in rows for no, w in enumerate(row.windows)]
    if not windows:
        return
    table = pa.table(
        {
            "ordinal": pa.array([o for o, _, _, _ in windows], pa.int64()),
            "chunk_no": pa.array([n for _, n, _, _ in windows], pa.int32()),
            "chunk_count": pa.array([c for _, _, c, _ in windows], pa.int32()),
            "media_ref": pa.array([w.ref for *_, w in windows], pa.string()),
            "media_hash": pa.array([w.hash for *_, w in windows], pa.string()),
            "media_tokens": pa.array([w.tokens for *_, w in windows], pa.int32()),
            "page_start": pa.array([w.first for *_, w in windows], pa.int32()),
            "page_end": pa.array([w.last for *_, w in windows], pa.int32()),
        }
    )
    _insert(con, table)


def _insert(con: Any, table: pa.Table) -> None:
    con.register("__qsync_chunk_page", table)
    con.execute(f"INSERT INTO {CHUNKS} BY NAME SELECT * FROM __qsync_chunk_page")
    con.unregister("__qsync_chunk_page")
