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
from qsync.sink.protocol import Hit, Sink
from qsync.spec.chunking import CHUNK_FIELDS
from qsync.spec.embedder import EmbedderSpec

_MAX_FETCH = 10_000  # points one search reads at most while gathering records


def query_embedder_spec(spec: EmbedderSpec) -> EmbedderSpec:
    """The job's embedder, set to embed a query: Gemini's query task type (for gemini-embedding-2, the query
    instruction, `task: search result | query: …`); any other embedder as is."""
    if spec.kind != "gemini":
        return spec
    return replace(spec, task_type=QUERY_TASK if takes_instructions(spec.resolved_model) else RETRIEVAL_QUERY)


def search(ledger: Ledger, job: str, text: str, limit: int = 10, *, chunks: bool = False) -> pd.DataFrame:
    """The `limit` records of the job's collection nearest to `text`, best first: `score`, `id`, the job's payload
    columns, and the `text` that was embedded for each record (a media record's caption); for a job with a media
    column, `media`: the path of each hit's image or PDF as planned (None for a text record of another job in the
    collection).

    A record cut into chunks is one row, scored by its best chunk, whose passage is its `text`; `chunk` says which
    (e.g. "3/7"). With `chunks`, every chunk is a row of its own (the `limit` nearest chunks)."""
    if not text.strip():
        raise ConfigError("type something to search for")
    if limit < 1:
        raise ConfigError(f"limit must be at least 1, not {limit}")
    spec = job_record(ledger, job).spec
    embedder = build_embedder(query_embedder_spec(spec.embedder))
    vector = np.asarray(embedder.embed([text]).vectors[0], dtype=np.float32)
    sink = open_sink(spec.sink, spec.collection, embedder.dimensions, spec.collection_options, base=ledger.path.parent)
    id_column = spec.columns.id_column
    try:
        hits = _best_hits(sink, vector, limit, id_column, by_record=not chunks)
    finally:
        sink.close()
    payload_columns = [c for c in spec.columns.payload_columns if c != id_column]
    records: list[dict[str, Any]] = []
    for hit in hits:
        record: dict[str, Any] = {"score": hit.score, "id": hit.payload.get(id_column, hit.point_id)}
        record.update({c: hit.payload.get(c) for c in payload_columns})
        records.append(record)
    frame = pd.DataFrame(records, columns=["score", "id", *payload_columns])
    if any(CHUNK_FIELDS[1] in hit.payload for hit in hits):
        frame["chunk"] = [_chunk_label(hit.payload) for hit in hits]
    if not frame.empty:
        frame["id"] = frame["id"].astype(str)
        keys = [(i, int(hit.payload.get(CHUNK_FIELDS[0]) or 0)) for i, hit in zip(frame["id"], hits, strict=True)]
        planned = planned_records(ledger, spec.collection, keys)
        frame["text"] = [planned.get(k, (None, None))[0] for k in keys]
        if spec.columns.media_column:
            frame["media"] = [planned.get(k, (None, None))[1] for k in keys]
    elif spec.columns.media_column:
        frame["text"], frame["media"] = [], []
    return frame


def _best_hits(sink: Sink, vector: np.ndarray, limit: int, id_column: str, *, by_record: bool) -> list[Hit]:
    """The `limit` nearest points, or (`by_record`) the nearest point of each of the `limit` nearest records: points
    are asked for in growing numbers until `limit` records are found or the collection has no more."""
    fetch = limit if not by_record else limit * 4
    while True:
        hits = sink.query(vector, fetch)
        if not by_record:
            return hits
        best: dict[Any, Hit] = {}
        for hit in hits:  # best first: a record's first hit is its best chunk
            best.setdefault(hit.payload.get(id_column, hit.point_id), hit)
        if len(best) >= limit or len(hits) < fetch or fetch >= _MAX_FETCH:
            return list(best.values())[:limit]
        fetch *= 4


def _chunk_label(payload: dict[str, Any]) -> str | None:
    count = payload.get(CHUNK_FIELDS[1])
    return f"{int(payload.get(CHUNK_FIELDS[0]) or 0) + 1}/{int(count)}" if count else None
