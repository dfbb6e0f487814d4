"""An optional step before embedding: ask a Gemini model about each record (summarise, classify); the answer
goes into the payload, and is embedded instead of the text, or with it, when the spec says so."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Final

from qsync.errors import ConfigError
from qsync.spec.columns import template_fields

EMBED_CHOICES: Final = ("text", "answer", "both")
# The most an answer may run to, in tokens (generateContent's max_output_tokens): the budget reserves a call's
# prompt and this many answer tokens, so the lower it is, the closer a job can spend to its cap. Jobs stored before
# it was a setting ran with 512.
DEFAULT_MAX_OUTPUT_TOKENS: Final = 256
_STORED_BEFORE_THE_SETTING: Final = 512


@dataclass(frozen=True)
class EnrichSpec:
    prompt: str  # e.g. "Summarise in one sentence: {text}"
    model: str = "gemini-2.5-flash-lite"
    field: str = "enrichment"  # payload key that receives the answer
    embed: str = "text"  # what is embedded: the text, the answer, or both ("text\n\nanswer")
    max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS  # an answer's cap, and what the budget reserves for it

    def __post_init__(self) -> None:
        if not 1 <= self.max_output_tokens <= 65536:
            raise ConfigError(f"enrichment max_output_tokens must be 1 to 65,536, not {self.max_output_tokens}")
        if self.embed not in EMBED_CHOICES:
            raise ConfigError(f"enrichment embed must be one of {', '.join(EMBED_CHOICES)}")
        if not self.fields():
            raise ConfigError("the enrichment prompt names no field; use e.g. 'Summarise: {text}'")

    def fields(self) -> list[str]:
        return template_fields(self.prompt)

    def check_fields(self, available: list[str]) -> None:
        missing = [f for f in self.fields() if f not in available]
        if missing:
            raise ConfigError(
                f"the enrichment prompt uses {', '.join(missing)}, which the job does not keep; use 'text', the "
                f"id column or a payload column ({', '.join(available)})"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnrichSpec:
        return cls(**{"max_output_tokens": _STORED_BEFORE_THE_SETTING, **data})

    def fingerprint(self) -> str:
        """Changes whenever the answers (and so the texts embedded) could change."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def render(self, text: str, payload: dict[str, Any]) -> str:
        values = {**{k: "" if v is None else v for k, v in payload.items()}, "text": text}
        return self.prompt.format_map(values)

    def text_to_embed(self, text: str, answer: str) -> str:
        return {"text": text, "answer": answer, "both": f"{text}\n\n{answer}"}[self.embed]
