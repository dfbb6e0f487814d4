"""Search a job's collection with a text: the question the backfill was for.

    qsync.search("wordnet:wordnet_sample", "a musical instrument with strings", limit=5)

The text is embedded by the job's own embedder (same model and dimensions; Gemini with the query task type,
RETRIEVAL_QUERY, as the documents were embedded with RETRIEVAL_DOCUMENT; gemini-embedding-2 with the query
instruction `task: search result | query: …`, as records got `title: none | text: …`) and looked up in the job's
own collection through its sink, so the vectors compared were made the same way.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from qsync.catalog.instructions import QUERY_TASK, takes_instructions
from qsync.catalog.models import RETRIEVAL_QUERY
from qsync.embedders.factory import build_embedder
from qsync.errors import ConfigError
from qsync.ledger.jobs import job_record
from qsync.ledger.ledger import Ledger
from qsync.ledger.queries import planned_records
from qsync.sink.factory import open_sink
from qsync.spec.embedder import EmbedderSpec


def query_embedder_spec(spec: EmbedderSpec) -> EmbedderSpec:
    """The job's embedder, set to embed a query: Gemini's query task type (for gemini-embedding-2, the query
    instruction, `task: search result | query: …`); any other embedder as is."""
    if spec.kind != "gemini":
        return spec
    return replace(spec, task_type=QUERY_TASK if takes_instructions(spec.resolved_model) else RETRIEVAL_QUERY)


def search(ledger: Ledger, job: str, text: str, limit: int = 10) -> pd.DataFrame:
    """The `limit` records of the job's collection nearest to `text`, best first: `score`, `id`, the job's payload
    columns, and the `text` that was embedded for each record (a media record's caption); for a job with a media
    column, `media`: the path of each hit's image or PDF as planned (None for a text record of another job in the
    collection)."""
    if not text.strip():
        raise ConfigError("type something to search for")
    if limit < 1:
        raise ConfigError(f"limit must be at least 1, not {limit}")
    spec = job_record(ledger, job).spec
    embedder = build_embedder(query_embedder_spec(spec.embedder))
    vector = np.asarray(embedder.embed([text]).vectors[0], dtype=np.float32)
    sink = open_sink(spec.sink, spec.collection, embedder.dimensions, spec.collection_options, base=ledger.path.parent)
    try:
        hits = sink.query(vector, limit)
    finally:
        sink.close()
    id_column, payload_columns = spec.columns.id_column, list(spec.columns.payload_columns)
    records: list[dict[str, Any]] = []
    for hit in hits:
        record: dict[str, Any] = {"score": hit.score, "id": hit.payload.get(id_column, hit.point_id)}
        record.update({c: hit.payload.get(c) for c in payload_columns if c != id_column})
        records.append(record)
    frame = pd.DataFrame(records, columns=["score", "id", *[c for c in payload_columns if c != id_column]])
    if not frame.empty:
        frame["id"] = frame["id"].astype(str)
        planned = planned_records(ledger, spec.collection, list(frame["id"]))
        frame["text"] = [planned.get(i, (None, None))[0] for i in frame["id"]]
        if spec.columns.media_column:
            frame["media"] = [planned.get(i, (None, None))[1] for i in frame["id"]]
    elif spec.columns.media_column:
        frame["text"], frame["media"] = [], []
    return frame
