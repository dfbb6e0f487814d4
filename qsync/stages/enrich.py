"""An optional step before embedding: ask a Gemini model about each record (summarise, classify).

The prompt is a template over the record's text, id and payload columns. Each answer is stored in the
`generations` cache (keyed by model and prompt) the moment it arrives, with its tokens and cost, so a
retry, resume or second job never pays for it again. The answer goes into the point's payload, and is
embedded instead of the text, or with it, when the job says so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed

from qsync.catalog.models import output_price_per_million, price_per_million
from qsync.catalog.tokens import estimate_tokens
from qsync.embedders.gemini_client import GeminiClient
from qsync.engine.spend_cap import close_unanswered
from qsync.engine.stage import Stage, StageContext
from qsync.errors import InvalidInput, TransientError
from qsync.ledger.batches import BatchWork, load_payload
from qsync.spec.enrich import EnrichSpec


def generation_key(model: str, prompt: str) -> str:
    return f"{model}|{hashlib.sha256(prompt.encode('utf-8')).hexdigest()}"


class Enricher:
    """One generateContent call per `generate`; retries belong to the run's one retry layer."""

    def __init__(self, spec: EnrichSpec, timeout_s: float = 60.0) -> None:
        self.spec = spec
        self.api = GeminiClient(timeout_s=timeout_s, model=spec.model)
        self.price_in = price_per_million(spec.model)
        self.price_out = output_price_per_million(spec.model)

    def most_it_can_cost(self, prompt: str) -> tuple[int, float]:
        """(tokens, USD) a call can cost at most: every prompt byte a token, and an answer of max_output_tokens (the
        call asks for no more: answers are capped so that a call's cost has a ceiling the budget can reserve)."""
        tokens_in = len(prompt.encode("utf-8")) + 16
        out = self.spec.max_output_tokens
        return tokens_in + out, (tokens_in * self.price_in + out * self.price_out) / 1e6

    def generate(self, prompt: str) -> tuple[str, int, int, float]:
        """(answer, input tokens, output tokens, cost in USD)."""
        config = self.api.types.GenerateContentConfig(max_output_tokens=self.spec.max_output_tokens)
        response = self.api.call(
            lambda: self.api.client.models.generate_content(model=self.spec.model, contents=prompt, config=config),
            "generateContent",
        )
        answer = response.text
        if answer is None:  # an answer (billed) without text: asked again, this one counted until then
            raise TransientError("Gemini generateContent answered no text", maybe_billed=True)
        usage = response.usage_metadata
        tokens_in = int(getattr(usage, "prompt_token_count", 0) or 0)
        tokens_out = int(getattr(usage, "candidates_token_count", 0) or 0)
        return answer, tokens_in, tokens_out, (tokens_in * self.price_in + tokens_out * self.price_out) / 1e6


class EnrichStage:
    """The batch stage that asks the enrichment model about each record (cached answers are free), puts the
    answers into the payloads and, if the job says so, into the texts to embed."""

    def __init__(self, enricher: Enricher, context: StageContext) -> None:
        self.enricher = enricher
        self.job = context.job
        self.budget = context.budget
        self.retrier = context.retrier

    def before_batches(self) -> None:
        """Nothing to do before the batches: answers are asked for batch by batch."""

    def apply(self, work: BatchWork) -> dict[str, str]:
        spec = self.enricher.spec
        payloads = [load_payload(p) for p in work.payloads]
        prompts = [spec.render(t, p) for t, p in zip(work.texts, payloads, strict=True)]
        keys = [generation_key(spec.model, p) for p in prompts]
        answers = self.job.cached_generations(sorted(set(keys)))
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
                work.token_estimates[i] = estimate_tokens(text)
        return refused_hashes

    def _generate(self, work: BatchWork, key: str, prompt: str) -> str:
        most_tokens, ceiling = self.enricher.most_it_can_cost(prompt)
        self.budget.reserve(ceiling)
        cost = 0.0

        def once() -> tuple[str, int, int, float, str]:
            intent = self.job.open_intent("enrich", work, 1, most_tokens, ceiling)
            try:
                return (*self.enricher.generate(prompt), intent)
            except BaseException as exc:  # unconfirmed if the API may have billed it, else void (a refusal)
                close_unanswered(self.job, self.budget, intent, exc, ceiling)
                raise

        try:
            answer, tokens_in, tokens_out, cost, intent = self.retrier.call(once)
            self.job.record_generation(work, key, self.enricher.spec.model, answer, tokens_in, tokens_out, cost, intent)
        finally:
            self.budget.settle(ceiling, cost)
        return answer


def enrich_stage(spec: EnrichSpec) -> Callable[[StageContext], Stage]:
    """The factory of a run's enrichment stage (the Gemini client is made once the run starts)."""
    return lambda context: EnrichStage(Enricher(spec), context)
