"""What the Gemini emulator knows of the models it stands in for: limits and prices as Google documents them,
its tokenizer, the vectors it answers (deterministic, so a test can recompute any), and how it reads a request's
content (text and inline media parts)."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from qsync.embedders.hashing import tokenize

FULL_DIMENSIONS = 3072
MAX_TEXTS_PER_REQUEST = 100
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_TOKENS_PER_TEXT = 2048  # gemini-embedding-001
# Per model: input token limit, and USD per 1M tokens (standard, Batch Mode), as Google documents them.
# Kept apart from qsync's pricing.json on purpose: a test comparing the two checks qsync's table.
MODEL_TOKEN_LIMITS = {"gemini-embedding-001": MAX_TOKENS_PER_TEXT, "gemini-embedding-2": 8192}
MODEL_PRICES = {"gemini-embedding-001": (0.15, 0.075), "gemini-embedding-2": (0.20, 0.10)}  # text
# gemini-embedding-2's image tokens are priced apart ($0.45, $0.225 in Batch Mode); PDF pages have no
# published price: the emulator bills them as images.
MEDIA_PRICES = {"IMAGE": (0.45, 0.225), "DOCUMENT": (0.45, 0.225)}
# Models that take their task as an instruction in the input: they accept `taskType` and ignore it
# (observed: identical embeddings for every value, mteb PR #4851), and answer usage per modality.
INSTRUCTION_MODELS = frozenset({"gemini-embedding-2"})
# Multimodal input (gemini-embedding-2 only), per the embeddings guide: PNG/JPEG images, at most 6 per
# content; PDFs of at most 6 pages. Tokens per image: ~258, inferred from the published per-image price;
# per PDF page: undocumented, the emulator charges an image's worth per page.
MEDIA_MODELS = INSTRUCTION_MODELS
MEDIA_TYPES = {"image/png": "IMAGE", "image/jpeg": "IMAGE", "application/pdf": "DOCUMENT"}
MAX_IMAGES_PER_CONTENT = 6
MAXPDF_PAGES = 6
TOKENS_PER_IMAGE = 258
PDF_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")
TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
# gemini-embedding-2's documented instruction formats (`title: … | text: `, `task: … | query: `): the
# "words" mode reads the content after them, as the model reads an instruction as one.
INSTRUCTION = re.compile(r"^(?:title: [^|]*\| text: |task: [^|]*\| query: )")


def count_tokens(text: str) -> int:
    """The emulator's tokenizer: words and punctuation, long words costing more (like subword pieces)."""
    return sum(1 + len(piece) // 6 for piece in TOKEN.findall(text))


def emulated_vector(model: str, text: str, dimensions: int | None) -> np.ndarray:
    """The vector the emulator answers for `text`: the first `dimensions` of a fixed 3,072-d vector.

    Like the real API, only the full 3,072-d vector is unit length; shorter ones must be normalised."""
    seed = int.from_bytes(hashlib.sha256(f"{model}\x00{text}".encode()).digest()[:8], "little")
    full = np.random.default_rng(seed).standard_normal(FULL_DIMENSIONS).astype(np.float32)
    full /= np.linalg.norm(full)
    return full[: dimensions or FULL_DIMENSIONS]


def media_key(mime_type: str, data: bytes) -> str:
    """How an inline media part enters the emulator's vector seed (and `texts_embedded`)."""
    return f"\x00{mime_type}:{hashlib.sha256(data).hexdigest()}"


@dataclass
class Input:
    """One request's content as the emulator reads it: the key its vector is seeded by, and its tokens."""

    key: str
    text: str
    tokens: Counter[str]  # per modality: TEXT, IMAGE, DOCUMENT


def read_input(model: str, request: dict[str, Any]) -> Input | str:
    """The request's content, or the reason it is refused. Parts may be snake_case (`inline_data`,
    `mime_type`, as the SDK sends a Content it did not build) or camelCase, as the API accepts both."""
    text, key, tokens, images = "", "", Counter[str](), 0
    for part in request.get("content", {}).get("parts", []):
        if "text" in part:
            text += part["text"]
            key += part["text"]
            continue
        inline = part.get("inline_data") or part.get("inlineData")
        if inline is None:
            return f"unsupported part {sorted(part)}"
        if model not in MEDIA_MODELS:
            return f"model {model} takes text only"
        mime = inline.get("mime_type") or inline.get("mimeType") or ""
        if mime not in MEDIA_TYPES:
            return f"Unsupported MIME type: {mime}"
        try:
            # google-genai sends URL-safe base64 (pydantic's bytes encoding), hand-written clients the standard one.
            encoded = str(inline.get("data", "")).replace("-", "+").replace("_", "/")
            data = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except ValueError:
            return "inline data is not valid base64"
        if MEDIA_TYPES[mime] == "IMAGE":
            images += 1
            if images > MAX_IMAGES_PER_CONTENT:
                return f"at most {MAX_IMAGES_PER_CONTENT} images per content"
            tokens["IMAGE"] += TOKENS_PER_IMAGE
        else:
            pages = len(PDF_PAGE.findall(data))
            if pages > MAXPDF_PAGES:
                return f"the PDF has {pages} pages; at most {MAXPDF_PAGES} are supported"
            tokens["DOCUMENT"] += TOKENS_PER_IMAGE * max(1, pages)
        key += media_key(mime, data)
    if text:
        tokens["TEXT"] += count_tokens(text)
    return Input(key, text, tokens)


def worded_vector(model: str, key: str, text: str, dimensions: int | None) -> np.ndarray:
    """The vector of the "words" mode: the sum of the input's words' vectors (its instruction left out), plus a
    little of the content's own noise (so two images with one caption differ). The emulator has no eyes: records
    land near the queries that share their captions' words, which is what an offline search demo needs, and all it
    can offer. Nested like the real models' (Matryoshka-trained): a smaller size is the full vector's first
    dimensions, which carry most of its weight, and only the full size is unit length."""
    words = tokenize(INSTRUCTION.sub("", text)) if text.strip() else []
    vector = np.zeros(FULL_DIMENSIONS)
    for word in words:
        np.add.at(vector, *_word_features(word))
    scale = float(np.linalg.norm(vector)) or 1.0
    vector = vector / scale + 0.3 * emulated_vector(model, key, FULL_DIMENSIONS)
    return (vector / float(np.linalg.norm(vector)))[: dimensions or FULL_DIMENSIONS].astype(np.float32)


# A word is a few signed features; a nested model puts most of a vector's weight in its first dimensions (Matryoshka
# training makes every prefix a usable embedding), so a word's features fall mostly there: at a smaller size, fewer of
# them remain and more words collide, as a smaller size tells texts apart less well.
_FEATURES_PER_WORD = 8


@functools.lru_cache(maxsize=65536)
def _word_features(word: str) -> tuple[np.ndarray, np.ndarray]:
    """Where a word's features are in the full vector, and their signs."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"word\x00{word}".encode()).digest()[:8], "little"))
    return (rng.random(_FEATURES_PER_WORD) ** 2 * FULL_DIMENSIONS).astype(int), rng.choice(
        [-1.0, 1.0], _FEATURES_PER_WORD
    )


def answer_values(model: str, text: str, dimensions: int | None, words: str | None = None) -> list[float]:
    """The vector as the JSON answer carries it, rounded to 7 decimals (numpy: 20x faster than a loop);
    `words`: the input's text, for the "words" mode (worded_vector)."""
    vector = (
        emulated_vector(model, text, dimensions) if words is None else worded_vector(model, text, words, dimensions)
    )
    values: list[float] = np.round(vector.astype(np.float64), 7).tolist()
    return values


class RawJSON(str):
    """JSON text that `encode_answer` writes as it is."""


@functools.lru_cache(maxsize=20_000)
def answer_json(model: str, text: str, dimensions: int | None, words: str | None = None) -> RawJSON:
    """`answer_values` as JSON text, kept per text (~9 KB each at 768 dimensions): making and encoding a vector
    takes ~0.35 ms of CPU, and an emulator sharing the machine with the client it answers should spend as little of
    it as the real API does (none); a benchmark that sends the same texts again is answered from here."""
    return RawJSON(json.dumps(answer_values(model, text, dimensions, words)))


_MARK = re.compile(r'"\\u0000qsync-values-(\d+)\\u0000"')  # where encode_answer puts a RawJSON


def encode_answer(body: Any) -> bytes:
    """`body` as JSON, each `RawJSON` in it written as it is (not encoded again)."""
    fragments: list[str] = []

    def marked(value: Any) -> Any:
        if isinstance(value, RawJSON):
            fragments.append(value)
            return f"\x00qsync-values-{len(fragments) - 1}\x00"
        if isinstance(value, dict):
            return {k: marked(v) for k, v in value.items()}
        if isinstance(value, list):
            return [marked(v) for v in value]
        return value

    text = json.dumps(marked(body))
    return _MARK.sub(lambda m: fragments[int(m.group(1))], text).encode() if fragments else text.encode()


def error_body(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        body["details"] = details
    return {"error": body}
