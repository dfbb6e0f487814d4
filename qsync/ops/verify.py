"""`qsync verify`: does the collection hold what the ledger says the job loaded? `--repair` makes it so.

The expected state is the `points` table: every record the job (and its earlier runs of the same name: NAME,
NAME#2, …) loaded into its target (collection and vector), minus those deleted since, with the hash of the text
embedded and the payload written. Verify scans the collection and reports the job's points missing, points whose
payload id is wrong, vectors of the wrong size, and points no job of the ledger wrote (other jobs' points in the
same collection are counted apart, never as a problem). Repair re-upserts the missing and wrong ones with
vectors from the embedding cache (it never calls the embedder), and recreates a collection that is gone.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from qsync.ledger.batches import point_key
from qsync.ledger.cache import SignatureIdentity, cache_key, count_beyond, vectors_by_key
from qsync.ledger.jobs import job_record
from qsync.ledger.ledger import Ledger
from qsync.ledger.queries import expected_points
from qsync.sink.factory import open_sink
from qsync.sink.protocol import Sink
from qsync.spec.job import base_name

PathLike = str | os.PathLike[str]
SAMPLE = 20


@dataclass
class VerifyReport:
    job: str
    collection: str
    expected: int  # points this job (and its earlier runs) loaded, per the ledger
    present: int  # of those, in the collection
    missing: int
    unexpected: int  # points in the collection that no job of this ledger wrote
    wrong_payload: int
    wrong_size: int
    other_jobs: int = 0  # points other jobs of this ledger loaded into the same collection
    collection_missing: bool = False  # the collection (an Edge shard) was not there at all
    lost_vectors: int = 0  # cached vectors (any job's) whose bytes the vector file no longer holds
    repaired: int = 0
    unrepairable: int = 0  # expected points whose vector is not in the cache
    samples: dict[str, list[str]] = field(default_factory=dict)  # a few record/point ids of each kind

    @property
    def ok(self) -> bool:
        problems = self.missing + self.wrong_payload + self.wrong_size
        fixed = problems == 0 or (self.repaired == problems and self.unrepairable == 0)
        return fixed and self.lost_vectors == 0

    @property
    def advice(self) -> str | None:
        """What to run about what was found, in a sentence (None when all is well)."""
        steps = []
        if self.collection_missing and not self.repaired:
            steps.append("the collection is gone: `qsync verify JOB --repair` rebuilds it from the cache (no API call)")
        elif (self.missing or self.wrong_payload or self.wrong_size) and not self.repaired:
            steps.append("`qsync verify JOB --repair` re-upserts them from the cache (no API call)")
        if self.lost_vectors or self.unrepairable:
            steps.append(
                f"{self.lost_vectors or self.unrepairable:,} cached vectors are gone from the vector file (truncated, "
                "deleted or replaced): `qsync run` the job again (with --full) to embed them anew; only those are paid "
                "for again"
            )
        return "; ".join(steps) or None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "advice": self.advice}


def verify(ledger: Ledger, job: str, *, repair: bool = False) -> VerifyReport:
    record = job_record(ledger, job)
    spec = record.spec
    sink = open_sink(spec.sink, spec.collection, spec.embedder.dimensions, spec.collection_options,
                     base=ledger.path.parent)  # fmt: skip
    target = record.target
    lineage = base_name(job)
    points = expected_points(ledger, target)
    points["own"] = pd.Series([base_name(str(j)) == lineage for j in points["job_id"]], index=points.index, dtype=bool)
    try:
        return _verify(ledger, job, sink, points, spec.columns.id_column, spec.embedder.dimensions, repair)
    finally:
        sink.close()


def _verify(
    ledger: Ledger, job: str, sink: Sink, points: pd.DataFrame, id_column: str, dimensions: int, repair: bool
) -> VerifyReport:
    expected = points[points["own"]]
    others = {str(p) for p in points.loc[~points["own"], "point_id"]}
    by_point = {str(p): i for i, p in enumerate(expected["point_id"])}
    present: set[str] = set()
    wrong_payload: list[str] = []
    wrong_size: list[str] = []
    unexpected: list[str] = []
    broken_points: set[str] = set()  # a record cut into chunks has several points: the broken ones are repaired
    other_jobs = 0
    collection_missing = not sink.exists()
    for pid, payload, size in [] if collection_missing else sink.scan():
        row = by_point.get(pid)
        if row is None:
            if pid in others:
                other_jobs += 1
            else:
                unexpected.append(pid)
            continue
        present.add(pid)
        record_id = str(expected["record_id"].iat[row])
        if str(payload.get(id_column)) != record_id:
            wrong_payload.append(record_id)
            broken_points.add(pid)
        if size != dimensions:
            wrong_size.append(record_id)
            broken_points.add(pid)
    missing = [str(r) for r, p in zip(expected["record_id"], expected["point_id"], strict=True) if p not in present]
    broken_points.update(str(p) for p in expected["point_id"] if p not in present)
    report = VerifyReport(
        job, sink.collection, len(expected), len(present), len(missing), len(unexpected), len(wrong_payload),
        len(wrong_size), other_jobs, collection_missing,
        samples={"missing": missing[:SAMPLE], "unexpected": unexpected[:SAMPLE],
                 "wrong_payload": wrong_payload[:SAMPLE], "wrong_size": wrong_size[:SAMPLE]},
    )  # fmt: skip
    with ledger.reading() as con:
        report.lost_vectors = count_beyond(con, ledger.vectors.size())
    if repair:
        if collection_missing:
            sink.ensure_collection()
        todo = expected[expected["point_id"].astype(str).isin(broken_points)]
        report.repaired, report.unrepairable = _repair(ledger, sink, todo)
    return report


def _repair(ledger: Ledger, sink: Sink, todo: pd.DataFrame) -> tuple[int, int]:
    """Re-upsert from the embedding cache, 500 points at a time. Returns (repaired, not in the cache)."""
    repaired = unrepairable = 0
    for start in range(0, len(todo), 500):
        chunk = todo.iloc[start : start + 500]
        keys = [
            cache_key(SignatureIdentity(e), h) for e, h in zip(chunk["embedder"], chunk["vector_hash"], strict=True)
        ]
        with ledger.reading() as con:
            found = vectors_by_key(con, ledger.vectors, keys)
        ids, vectors, payloads = [], [], []
        for key, record_id, chunk_no, payload in zip(
            keys, chunk["record_id"], chunk["chunk_no"], chunk["payload"], strict=True
        ):
            if key not in found:
                unrepairable += 1
                continue
            ids.append(point_key(str(record_id), int(chunk_no)))  # the point's own id: its record's, or its chunk's
            vectors.append(found[key])
            payloads.append(json.loads(payload))
        if ids:
            sink.upsert(ids, np.asarray(vectors, dtype=np.float32), payloads)
            repaired += len(ids)
    return repaired, unrepairable
