"""An optional step before embedding: ask a Gemini model about each record (summarise, classify).

The prompt is a template over the record's text, id and payload columns. Each answer is stored in the
`generations` cache (keyed by model and prompt) the moment it arrives, with its tokens and cost, so a
retry, resume or second job never pays for it again. The answer goes into the point's payload, and is
embedded instead of the text, or with it, when the job says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import string
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .checkpoint import load_payload
from .embedders.gemini import GeminiClient
from .errors import ConfigError, InvalidInput, TransientError
from .pricing import model_info

if TYPE_CHECKING:
    from .budget import Budget
    from .checkpoint import BatchWork, Checkpoint
    from .retry import Retrier

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


# Answers are capped so that a call's cost has a ceiling the budget can reserve before it is made.
MAX_OUTPUT_TOKENS = 512


class Enricher:
    """One generateContent call per `generate`; retries belong to the run's one retry layer."""

    def __init__(self, spec: EnrichSpec, timeout_s: float = 60.0) -> None:
        self.spec = spec
        self.api = GeminiClient(timeout_s=timeout_s, model=spec.model)
        info = model_info(spec.model)
        if "usd_per_million_tokens" not in info:
            raise ConfigError(f"no price for {spec.model!r} in the pricing table")
        self.price_in = float(info["usd_per_million_tokens"])
        self.price_out = float(info.get("usd_per_million_output_tokens", info["usd_per_million_tokens"]))

    def most_it_can_cost(self, prompt: str) -> tuple[int, float]:
        """(tokens, USD) a call can cost at most: every prompt byte a token, and a full answer."""
        tokens_in = len(prompt.encode("utf-8")) + 16
        return tokens_in + MAX_OUTPUT_TOKENS, (tokens_in * self.price_in + MAX_OUTPUT_TOKENS * self.price_out) / 1e6

    def generate(self, prompt: str) -> tuple[str, int, int, float]:
        """(answer, input tokens, output tokens, cost in USD)."""
        config = self.api.types.GenerateContentConfig(max_output_tokens=MAX_OUTPUT_TOKENS)
        response = self.api.call(
            lambda: self.api.client.models.generate_content(model=self.spec.model, contents=prompt, config=config),
            "generateContent",
        )
        answer = response.text
        if answer is None:
            raise TransientError("Gemini generateContent answered no text")
        usage = response.usage_metadata
        tokens_in = int(getattr(usage, "prompt_token_count", 0) or 0)
        tokens_out = int(getattr(usage, "candidates_token_count", 0) or 0)
        return answer, tokens_in, tokens_out, (tokens_in * self.price_in + tokens_out * self.price_out) / 1e6


class EnrichStage:
    """The batch stage that asks the enrichment model about each record (cached answers are free), puts
    the answers into the payloads and, if the job says so, into the texts to embed."""

    def __init__(self, enricher: Enricher, checkpoint: Checkpoint, budget: Budget, retrier: Retrier) -> None:
        self.enricher = enricher
        self.checkpoint = checkpoint
        self.budget = budget
        self.retrier = retrier

    def apply(self, work: BatchWork) -> dict[str, str]:
        spec = self.enricher.spec
        payloads = [load_payload(p) for p in work.payloads]
        prompts = [spec.render(t, p) for t, p in zip(work.texts, payloads, strict=True)]
        keys = [generation_key(spec.model, p) for p in prompts]
        answers = self.checkpoint.cached_generations(sorted(set(keys)))
        missing = {k: p for k, p in zip(keys, prompts, strict=True) if k not in answers}
        refused: dict[str, str] = {}
        if missing:
            with ThreadPoolExecutor(max_workers=min(8, len(missing)), thread_name_prefix="qsync-enrich") as pool:
                futures = {pool.submit(self._generate, work, k, p): k for k, p in missing.items()}
                for future in as_completed(futures):
                    try:
                        answers[futures[future]] = future.result()
                    except InvalidInput as exc:
                        refused[futures[future]] = f"refused by the enrichment model: {exc}"
        refused_hashes: dict[str, str] = {}
        for i, key in enumerate(keys):
            if key in refused:
                refused_hashes[work.hashes[i]] = refused[key]
                continue
            payloads[i][spec.field] = answers[key]
            work.payloads[i] = json.dumps(payloads[i])
            text = spec.text_to_embed(work.texts[i], answers[key])
            if text != work.texts[i]:
                work.texts[i] = text
                work.hashes[i] = hashlib.sha256(text.encode("utf-8")).hexdigest()
                work.token_estimates[i] = math.ceil(len(text.encode("utf-8")) / 4)
        return refused_hashes

    def _generate(self, work: BatchWork, key: str, prompt: str) -> str:
        most_tokens, ceiling = self.enricher.most_it_can_cost(prompt)
        self.budget.reserve(ceiling)
        cost = 0.0

        def once() -> tuple[str, int, int, float, str]:
            intent = self.checkpoint.open_intent("enrich", work, 1, most_tokens, ceiling)
            try:
                return (*self.enricher.generate(prompt), intent)
            except TransientError as exc:
                self.checkpoint.close_intent(intent, "unconfirmed" if exc.maybe_billed else "void")
                raise
            except BaseException:
                self.checkpoint.close_intent(intent, "void")
                raise

        try:
            answer, tokens_in, tokens_out, cost, intent = self.retrier.call(once)
            self.checkpoint.record_generation(
                work, key, self.enricher.spec.model, answer, tokens_in, tokens_out, cost, intent
            )
        finally:
            self.budget.settle(ceiling, cost)
        return answer
