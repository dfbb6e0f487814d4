"""How texts longer than the model takes are cut (and PDFs longer than it reads, into windows of pages): into chunks of at most `tokens` (estimated from above, see
catalog.tokens.upper_tokens), each a point of its own, overlapping by `overlap` tokens. `tokens=None` cuts at the
model's own limit (the default: nothing is skipped for its length); `tokens=0` keeps the old rule, a text over the
limit is skipped with its reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from qsync.errors import ConfigError

MIN_CHUNK_TOKENS: Final = 16
# Payload keys a chunk's point carries besides its record's payload (a record of one chunk carries none of them).
CHUNK_FIELDS: Final = ("chunk_no", "chunk_count", "char_start", "char_end", "page_start", "page_end")


def stale_chunk_fields(payload: dict[str, Any]) -> list[str]:
    """The chunk fields a point written before may hold and `payload` does not: a sink that merges payloads (a point
    shared by named vectors) deletes them first, so that a record now whole does not keep its old chunk's offsets."""
    return [key for key in CHUNK_FIELDS if key not in payload]


@dataclass(frozen=True)
class Chunking:
    tokens: int | None = None  # None: the model's limit; 0: no chunking (too long is a skip)
    overlap: int = 0

    def __post_init__(self) -> None:
        if self.tokens is not None and self.tokens != 0 and self.tokens < MIN_CHUNK_TOKENS:
            raise ConfigError(f"chunk tokens must be 0 (no chunking) or at least {MIN_CHUNK_TOKENS}, not {self.tokens}")
        if self.overlap < 0:
            raise ConfigError(f"chunk overlap must be 0 or more tokens, not {self.overlap}")
        if self.overlap and self.tokens == 0:
            raise ConfigError("a chunk overlap needs chunking: leave out --chunk-tokens 0")
        if self.overlap and self.tokens is not None and self.overlap * 2 > self.tokens:
            raise ConfigError(f"chunk overlap {self.overlap} must be at most half the chunk size ({self.tokens})")

    @property
    def enabled(self) -> bool:
        return self.tokens != 0

    def budget(self, limit: int) -> int:
        """Tokens a chunk may have, for a model that takes `limit` tokens of text."""
        return min(self.tokens, limit) if self.tokens else limit

    def check_payload_columns(self, columns: tuple[str, ...]) -> None:
        taken = [c for c in columns if c in CHUNK_FIELDS]
        if taken and self.enabled:
            raise ConfigError(
                f"payload column(s) {', '.join(taken)} would be overwritten by the chunk fields "
                f"({', '.join(CHUNK_FIELDS)}) of long records: rename them, or use --chunk-tokens 0"
            )

    def identity(self) -> dict[str, Any]:
        size = "the model's limit" if self.tokens is None else ("no chunking" if self.tokens == 0 else self.tokens)
        return {"chunk tokens": size, "chunk overlap": self.overlap}

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "overlap": self.overlap}

    @classmethod
    def from_dict(cls, data: Any) -> Chunking:
        """A stored spec's chunking; specs stored before chunking existed mean the default."""
        if not data:
            return cls()
        tokens = data.get("tokens")
        return cls(None if tokens is None else int(tokens), int(data.get("overlap") or 0))
