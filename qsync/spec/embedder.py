"""Which embedder makes a job's vectors: its kind, model, dimensions and task. Never holds a secret (keys come
from the environment)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from qsync.catalog.instructions import check_task, default_task, takes_instructions
from qsync.catalog.models import DEFAULT_EMBEDDING_MODEL, model_info, price_per_million
from qsync.errors import ConfigError
from qsync.spec.defaults import DEFAULT_DIMENSIONS, HASH_MODEL

# Embedder options that change how a run behaves, not which vectors it makes: never part of the identity.
RUNTIME_OPTIONS: Final = frozenset({"latency_s", "price_per_million_tokens", "timeout_s"})


@dataclass(frozen=True)
class EmbedderSpec:
    """Which embedder makes the vectors."""

    kind: str = "hash"  # "hash" (offline), "gemini", or "package.module:factory" for your own
    dimensions: int = DEFAULT_DIMENSIONS
    model: str | None = None  # Gemini model (default gemini-embedding-001)
    # Gemini task type (default RETRIEVAL_DOCUMENT); for a model that takes its task as an instruction in
    # the input (gemini-embedding-2), the instruction format's key (default document:v1)
    task_type: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # more keyword arguments for the embedder

    def __post_init__(self) -> None:
        if self.dimensions < 1:
            raise ConfigError(f"dimensions must be a positive number, not {self.dimensions}")
        if self.kind not in ("hash", "gemini") and ":" not in self.kind:
            raise ConfigError(f"unknown embedder {self.kind!r}: use 'hash', 'gemini' or 'package.module:factory'")
        if self.kind != "gemini" and (self.model or self.task_type):
            raise ConfigError("a model and a task type are Gemini settings; use them with the gemini embedder")
        if self.kind == "gemini":
            self._check_model()

    def _check_model(self) -> None:
        """Per-model checks, from the pricing table: the model's dimensions and how it takes its task."""
        model = self.resolved_model
        if takes_instructions(model):
            check_task(self.resolved_task_type)
        info = model_info(model)
        if "min_dimensions" in info:
            low, high = int(info["min_dimensions"]), int(info.get("full_dimensions", 3072))
            if not low <= self.dimensions <= high:
                raise ConfigError(f"{model} makes vectors of {low} to {high} dimensions, not {self.dimensions}")

    @property
    def resolved_model(self) -> str:
        if self.kind == "gemini":
            return self.model or DEFAULT_EMBEDDING_MODEL
        return HASH_MODEL if self.kind == "hash" else self.kind

    @property
    def resolved_task_type(self) -> str:
        if self.kind != "gemini":
            return ""
        return self.task_type or default_task(self.resolved_model)

    @property
    def price_override(self) -> float | None:
        """The text price the user gave (--price-per-million), if any."""
        value = self.options.get("price_per_million_tokens")
        return None if value is None else float(value)

    def price_per_million(self, *, batch_mode: bool = False, media: bool = False) -> float:
        """USD per 1M tokens of this embedder's vectors (catalog.models.price_per_million, the one rule): the
        user's price when given, else the pricing table's for a Gemini model, else free."""
        if self.price_override is not None or self.kind == "gemini":
            return price_per_million(self.resolved_model, batch_mode=batch_mode, media=media,
                                     override=self.price_override)  # fmt: skip
        return 0.0

    def identity(self) -> dict[str, Any]:
        return {
            "embedder": self.kind,
            "model": self.resolved_model,
            "dimensions": self.dimensions,
            "task type": self.resolved_task_type,
            **{f"embedder option {k}": v for k, v in sorted(self.options.items()) if k not in RUNTIME_OPTIONS},
        }

    def factory_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the embedder's constructor."""
        kwargs: dict[str, Any] = {"dimensions": self.dimensions, **self.options}
        if self.kind == "gemini":
            kwargs.update(model=self.resolved_model, task_type=self.resolved_task_type)
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dimensions": self.dimensions,
            "model": self.model,
            "task_type": self.task_type,
            "options": dict(self.options),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmbedderSpec:
        options = dict(data.get("options") or {})
        # Jobs written before the spec kept model and task type among the options, with run settings.
        model = data.get("model") or options.pop("model", None)
        task_type = data.get("task_type") or options.pop("task_type", None)
        for runtime in ("texts_per_minute", "tokens_per_minute", "max_attempts"):
            options.pop(runtime, None)
        return cls(str(data["kind"]), int(data.get("dimensions") or DEFAULT_DIMENSIONS), model, task_type, options)
