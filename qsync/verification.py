"""`qsync verify`: does the collection hold what the ledger says it should? `--repair` makes it so.

The expected state is the `points` table for the job's target: every record any job loaded into that
collection (and vector), minus those deleted since, with the hash of the text embedded and the payload
written. Verify scans the collection and reports points missing, points the ledger does not know, points
whose payload id is wrong and vectors of the wrong size. Repair re-upserts the missing and wrong ones
with vectors from the embedding cache: it never calls the embedder.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .cache import cache_key
from .config import resolve_db
from .errors import JobNotFound
from .sink import CollectionOptions, QdrantSink, SinkSpec
from .store import open_store
from .vectorfile import vector_file_for

PathLike = str | os.PathLike[str]
SAMPLE = 20


@dataclass
class VerifyReport:
    job: str
    collection: str
    expected: int
    present: int
    missing: int
    unexpected: int
    wrong_payload: int
    wrong_size: int
    repaired: int = 0
    unrepairable: int = 0  # expected points whose vector is not in the cache
    samples: dict[str, list[str]] = field(default_factory=dict)  # a few record/point ids of each kind

    @property
    def ok(self) -> bool:
        problems = self.missing + self.wrong_payload + self.wrong_size
        return problems == 0 or (self.repaired == problems and self.unrepairable == 0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


class _Identity:
    def __init__(self, signature: str) -> None:
        model, dims, task = [*signature.split("|"), "", "", ""][:3]
        self.model, self.dimensions, self.task_type = model, int(dims or 0), task


def verify(job: str, *, db: PathLike | None = None, repair: bool = False) -> VerifyReport:
    store = open_store(resolve_db(db), writable=False)
    rows = store.query_rows("SELECT config, collection FROM jobs WHERE job_id = ?", [job])
    if not rows:
        raise JobNotFound(f"no job named {job!r} in {store.path}")
    config, collection = json.loads(rows[0][0]), rows[0][1]
    id_column = config["columns"]["id_column"]
    dimensions = int(config["embedder"]["dimensions"])
    sink = QdrantSink(
        SinkSpec.from_dict(config["sink"]), collection, dimensions,
        CollectionOptions.from_dict(config.get("collection_options")),
    )  # fmt: skip
    target = config.get("target", sink.target)
    expected = store.query_df(
        "SELECT record_id, point_id, vector_hash, embedder, payload FROM points WHERE target = ?", [target]
    )
    try:
        return _verify(job, store, sink, expected, id_column, dimensions, collection, repair)
    finally:
        sink.close()


def _verify(
    job: str, store: Any, sink: QdrantSink, expected: Any, id_column: str, dimensions: int, collection: str,
    repair: bool,
) -> VerifyReport:  # fmt: skip
    by_point = {p: i for i, p in enumerate(expected["point_id"])}
    present: set[str] = set()
    wrong_payload: list[str] = []
    wrong_size: list[str] = []
    unexpected: list[str] = []
    for pid, payload, size in sink.scan():
        present.add(pid)
        row = by_point.get(pid)
        if row is None:
            unexpected.append(pid)
            continue
        record_id = str(expected["record_id"].iat[row])
        if str(payload.get(id_column)) != record_id:
            wrong_payload.append(record_id)
        if size != dimensions:
            wrong_size.append(record_id)
    missing = [r for r, p in zip(expected["record_id"], expected["point_id"], strict=True) if p not in present]
    report = VerifyReport(
        job, collection, len(expected), len(present), len(missing), len(unexpected), len(wrong_payload),
        len(wrong_size),
        samples={"missing": missing[:SAMPLE], "unexpected": unexpected[:SAMPLE],
                 "wrong_payload": wrong_payload[:SAMPLE], "wrong_size": wrong_size[:SAMPLE]},
    )  # fmt: skip
    if repair:
        broken = set(missing) | set(wrong_payload) | set(wrong_size)
        todo = expected[expected["record_id"].isin(broken)]
        report.repaired, report.unrepairable = _repair(store, sink, todo)
    return report


def _repair(store: Any, sink: QdrantSink, todo: Any) -> tuple[int, int]:
    """Re-upsert from the embedding cache, 500 points at a time. Returns (repaired, not in the cache)."""
    repaired = unrepairable = 0
    vector_file = vector_file_for(store.path)
    for start in range(0, len(todo), 500):
        chunk = todo.iloc[start : start + 500]
        keys = [cache_key(_Identity(e), h) for e, h in zip(chunk["embedder"], chunk["vector_hash"], strict=True)]
        placeholders = ", ".join("?" * len(keys))
        rows = store.query_rows(
            f"SELECT cache_key, byte_offset, dimensions FROM embeddings WHERE cache_key IN ({placeholders})", keys
        )
        matrix = vector_file.read([int(r[1]) for r in rows], [int(r[2]) for r in rows])
        found = {str(r[0]): matrix[i] for i, r in enumerate(rows)}
        ids, vectors, payloads = [], [], []
        for key, record_id, payload in zip(keys, chunk["record_id"], chunk["payload"], strict=True):
            if key not in found:
                unrepairable += 1
                continue
            ids.append(record_id)
            vectors.append(found[key])
            payloads.append(json.loads(payload))
        if ids:
            sink.upsert(ids, np.asarray(vectors, dtype=np.float32), payloads)
            repaired += len(ids)
    return repaired, unrepairable
