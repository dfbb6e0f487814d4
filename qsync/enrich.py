"""An optional step before embedding: ask a Gemini model about each record (summarise, classify).

The prompt is a template over the record's text, id and payload columns. Each answer is stored in the
`generations` cache (keyed by model and prompt) the moment it arrives, with its tokens and cost, so a
retry, resume or second job never pays for it again. The answer goes into the point's payload, and is
embedded instead of the text, or with it, when the job says so.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import asdict, dataclass
from typing import Any

from .clock import SYSTEM_CLOCK, Clock
from .embedders.gemini import GeminiClient
from .errors import ConfigError, TransientError
from .pricing import model_info
from .retry import RetryPolicy

EMBED_CHOICES = ("text", "answer", "both")


@dataclass(frozen=True)
class EnrichSpec:
    prompt: str  # e.g. "Summarise in one sentence: {text}"
    model: str = "gemini-2.5-flash-lite"
    field: str = "enrichment"  # payload key that receives the answer
    embed: str = "text"  # what is embedded: the text, the answer, or both ("text\n\nanswer")

    def __post_init__(self) -> None:
        if self.embed not in EMBED_CHOICES:
            raise ConfigError(f"enrichment embed must be one of {', '.join(EMBED_CHOICES)}")
        if not self.fields():
            raise ConfigError("the enrichment prompt names no field; use e.g. 'Summarise: {text}'")

    def fields(self) -> list[str]:
        return [f for _, f, _, _ in string.Formatter().parse(self.prompt) if f]

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
        return cls(**data)

    def fingerprint(self) -> str:
        """Changes whenever the answers (and so the texts embedded) could change."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def render(self, text: str, payload: dict[str, Any]) -> str:
        values = {**{k: "" if v is None else v for k, v in payload.items()}, "text": text}
        return self.prompt.format_map(values)

    def text_to_embed(self, text: str, answer: str) -> str:
        return {"text": text, "answer": answer, "both": f"{text}\n\n{answer}"}[self.embed]


def generation_key(model: str, prompt: str) -> str:
    return f"{model}|{hashlib.sha256(prompt.encode('utf-8')).hexdigest()}"


class Enricher:
    def __init__(self, spec: EnrichSpec, clock: Clock = SYSTEM_CLOCK, timeout_s: float = 60.0) -> None:
        self.spec = spec
        self.api = GeminiClient(timeout_s=timeout_s, model=spec.model)
        self.retry = RetryPolicy(max_attempts=8, clock=clock)
        info = model_info(spec.model)
        if "usd_per_million_tokens" not in info:
            raise ConfigError(f"no price for {spec.model!r} in the pricing table")
        self.price_in = float(info["usd_per_million_tokens"])
        self.price_out = float(info.get("usd_per_million_output_tokens", info["usd_per_million_tokens"]))

    def generate(self, prompt: str) -> tuple[str, int, int, float]:
        """(answer, input tokens, output tokens, cost in USD)."""

        def once() -> Any:
            return self.api.call(
                lambda: self.api.client.models.generate_content(model=self.spec.model, contents=prompt),
                "generateContent",
            )

        response = self.retry.call(once)
        answer = response.text
        if answer is None:
            raise TransientError("Gemini generateContent answered no text")
        usage = response.usage_metadata
        tokens_in = int(getattr(usage, "prompt_token_count", 0) or 0)
        tokens_out = int(getattr(usage, "candidates_token_count", 0) or 0)
        return answer, tokens_in, tokens_out, (tokens_in * self.price_in + tokens_out * self.price_out) / 1e6
