"""Task instructions for models that take the task in the input instead of a `task_type` parameter.

gemini-embedding-2 does not support `task_type`; Google's embeddings guide ("Task types with
Embeddings 2") says to put the task into the text itself, with the same format used consistently on
both sides. qsync names each format by a versioned key, and that key is what the embedder reports as
its `task_type`: it is part of the cache key and of the points' embedder signature, so changing a
format (bumping `:v1` to `:v2`) re-embeds instead of mixing vectors made from different inputs.
"""

from __future__ import annotations

from typing import Final

from qsync.catalog.models import RETRIEVAL_DOCUMENT, model_info
from qsync.errors import ConfigError

DOCUMENT_TASK: Final = "document:v1"  # what records are embedded with
QUERY_TASK: Final = "query:v1"  # what qsync.search embeds a query with

# Asymmetric retrieval, as documented: the document side carries no title here (records have none we
# can rely on), the query side asks for a search result. `{content}` is the record's or query's text.
FORMATS: Final[dict[str, str]] = {
    DOCUMENT_TASK: "title: none | text: {content}",
    QUERY_TASK: "task: search result | query: {content}",
}


def takes_instructions(model: str) -> bool:
    """Whether the model wants its task in the input (pricing.json: "task_as_instruction": true)."""
    return bool(model_info(model).get("task_as_instruction", False))


def check_task(task: str) -> None:
    if task not in FORMATS:
        raise ConfigError(
            f"task {task!r} is not an instruction format qsync knows for this model; use one of "
            f"{', '.join(sorted(FORMATS))} (it takes no Gemini task_type)"
        )


def instruct(task: str, text: str) -> str:
    """`text` as the model is to receive it for `task`. The record's own text is never changed: only
    what is sent is."""
    check_task(task)
    return FORMATS[task].format(content=text)


def overhead_bytes(task: str) -> int:
    """Bytes the instruction adds to each text (for plan limits and estimates before counting)."""
    return len(instruct(task, "").encode("utf-8"))


def default_task(model: str) -> str:
    """The record-side task of a model: the document instruction, or the RETRIEVAL_DOCUMENT task type."""
    return DOCUMENT_TASK if takes_instructions(model) else RETRIEVAL_DOCUMENT
