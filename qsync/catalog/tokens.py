"""How many tokens an input costs before the API says: the one estimate, used to skip over-long texts at plan
time, to reserve budget before a call, to bound what an unanswered call may have cost, and in estimates
(where it is labelled as such, and calibrated with countTokens when a key is set).

Text: ~4 bytes of UTF-8 per token for Gemini's tokenizer on English text, deliberately simple.
Media: Google publishes a price per image, not tokens per image: $0.00012 an image at $0.45 per 1M image
tokens is ~258-267 tokens (an inference); tokens per PDF page are undocumented, and qsync counts a page as an
image. Both figures live in pricing.json beside the prices (`media_tokens_per_image`, `media_tokens_per_page`),
so a measured value replaces them without a code change.
"""

from __future__ import annotations

import re
from typing import Final

from qsync.catalog.instructions import overhead_bytes, takes_instructions
from qsync.catalog.models import MEDIA_MODEL, input_token_limit, model_info

BYTES_PER_TOKEN: Final = 4
_DEFAULT_MEDIA_TOKENS: Final = 258


def estimate_tokens(text: str) -> int:
    """Tokens of `text`, estimated at ~4 bytes each (0 for an empty text)."""
    return -(-len(text.encode("utf-8")) // BYTES_PER_TOKEN)


# An upper estimate for cutting long texts into chunks the model takes (Gemini's tokenizer is not available
# offline, so the bound is made from what a SentencePiece tokenizer can do at worst with each kind of character):
# a run of ASCII letters is a word of ~1 token, counted 1 + a token per 5 letters of it (a run of over 24 letters
# is no word: a token per 2); each digit, underscore, punctuation mark and non-ASCII letter a token; a non-ASCII symbol (emoji) a token per UTF-8 byte (a tokenizer's
# byte fallback); each run of newlines, tabs or repeated spaces a token. Never more than the text's UTF-8 bytes
# (so a text of at most N bytes needs no counting to fit N tokens). English prose comes to ~3.4 bytes a token
# (Gemini's tokenizer is reported at ~4), 1.1-1.2x the emulator's tokenizer (benchmarks/splitters.py).
_LETTER_RUNS: Final = re.compile(r"[A-Za-z]+")
_LONGEST_WORD: Final = 24  # a longer run of letters is no word (base64, DNA, a hash): a token per 2 letters
_SINGLES: Final = re.compile(r"[^A-Za-z\s]")
_SYMBOLS: Final = re.compile(r"[^\x00-\x7f\w\s]")
_SPACE_RUNS: Final = re.compile(r"\n+|\t+| {2,}")


def upper_tokens(text: str) -> int:
    """Tokens of `text`, estimated from above: what chunks are cut by, so that none exceeds a model's limit."""
    runs = _LETTER_RUNS.findall(text)
    singles = len(_SINGLES.findall(text))
    extra = sum(len(s.encode("utf-8")) - 1 for s in _SYMBOLS.findall(text)) if singles else 0
    words = sum(1 + len(run) // 5 if len(run) <= _LONGEST_WORD else len(run) // 2 for run in runs)
    return words + singles + extra + len(_SPACE_RUNS.findall(text))


def sql_estimate_tokens(expression: str) -> str:
    """`estimate_tokens` as DuckDB SQL over a VARCHAR expression (for planning a million rows at once)."""
    return f"CAST(ceil(strlen(coalesce({expression}, '')) / {BYTES_PER_TOKEN}) AS INTEGER)"


def instruction_tokens(model: str, task: str) -> int:
    """Tokens (estimated) that the model's instruction adds to every text it receives: 0 for a model that
    takes a task type instead (gemini-embedding-001)."""
    return -(-overhead_bytes(task) // BYTES_PER_TOKEN) if takes_instructions(model) else 0


def text_token_limit(model: str, task: str) -> int:
    """Tokens a record's own text may have: the model's input limit less what its instruction takes."""
    return input_token_limit(model) - instruction_tokens(model, task)


def per_image(model: str = MEDIA_MODEL) -> int:
    return int(model_info(model).get("media_tokens_per_image", _DEFAULT_MEDIA_TOKENS))


def per_page(model: str = MEDIA_MODEL) -> int:
    return int(model_info(model).get("media_tokens_per_page", _DEFAULT_MEDIA_TOKENS))


def media_tokens(modality: str, pages: int, model: str = MEDIA_MODEL) -> dict[str, int]:
    """Tokens of the media part of one record, by modality: {"IMAGE": n} or {"DOCUMENT": n}. A PDF whose
    pages could not be counted cheaply (pages == 0) is taken as one page."""
    if modality == "DOCUMENT":
        return {"DOCUMENT": per_page(model) * max(1, pages)}
    return {"IMAGE": per_image(model)}
