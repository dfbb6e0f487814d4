"""The design qsync replaces, as a user would write it: one batch after another, no checkpoint, no overlap.

    python benchmarks/plain_loop.py RECORDS.parquet SHARD_FOLDER     # a whole process (gemini_throughput.py whole)

It imports nothing of qsync (a user's loop would not), so its start-up is its own: pandas, google-genai, Qdrant
Edge. Point ids are qsync's (uuid5 of the record id in qsync's namespace), so both write the same points.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

NAMESPACE = uuid.UUID("3b0e1c52-8f0a-4c44-9a3e-7d2b8f6a1e90")  # qsync.spec.target.POINT_ID_NAMESPACE


def plain_loop(frame: Any, qdrant: Path | str, batch: int = 100) -> float:
    """The design qsync replaces: one batch after another, no checkpoint, no overlap. It writes where
    qsync writes: a Qdrant Edge shard in a folder (flushed once at the end: it keeps no promise of
    durability), or qdrant-client's in-memory mode."""
    from google import genai
    from google.genai import types

    started = time.perf_counter()  # like qsync's, the clock runs from opening the clients to the last point
    client = genai.Client(
        api_key=os.environ["GEMINI_API_KEY"],
        http_options=types.HttpOptions(retry_options=types.HttpRetryOptions(attempts=1)),
    )
    upsert, close = _plain_sink(qdrant)
    rows = frame.to_dict("records")
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        contents: Any = [r["text"] for r in chunk]
        response = client.models.embed_content(
            model="gemini-embedding-001", contents=contents,
            config=types.EmbedContentConfig(task_type="RETRIEVAL_DOCUMENT", output_dimensionality=768),
        )  # fmt: skip
        upsert([str(uuid.uuid5(NAMESPACE, str(r["id"]))) for r in chunk], [list(e.values or []) for e in response.embeddings or []],
               [{"id": r["id"]} for r in chunk])  # fmt: skip
    close()
    return len(rows) / (time.perf_counter() - started)


def _plain_sink(qdrant: Path | str) -> tuple[Any, Any]:
    if str(qdrant) == ":memory:":
        from qdrant_client import QdrantClient, models

        client = QdrantClient(location=":memory:")
        client.create_collection("c", vectors_config=models.VectorParams(size=768, distance=models.Distance.COSINE))

        def upsert_client(ids: list[str], vectors: list[list[float]], payloads: list[dict[str, Any]]) -> None:
            points = [
                models.PointStruct(id=i, vector=v, payload=p) for i, v, p in zip(ids, vectors, payloads, strict=True)
            ]
            client.upsert("c", points=points, wait=True)

        return upsert_client, client.close
    from qdrant_edge import Distance, EdgeConfig, EdgeShard, EdgeVectorParams, Point, UpdateOperation

    shard = EdgeShard.create(str(qdrant), EdgeConfig(vectors=EdgeVectorParams(size=768, distance=Distance.Cosine)))

    def upsert_edge(ids: list[str], vectors: list[list[float]], payloads: list[dict[str, Any]]) -> None:
        shard.update(
            UpdateOperation.upsert_points([Point(i, v, p) for i, v, p in zip(ids, vectors, payloads, strict=True)])
        )

    def close_edge() -> None:
        shard.flush()
        shard.close()

    return upsert_edge, close_edge


if __name__ == "__main__":
    import pandas as pd

    plain_loop(pd.read_parquet(sys.argv[1]), Path(sys.argv[2]))
