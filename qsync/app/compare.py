"""Choose the model and the size with evidence: embed a sample once at full size per model, and measure what each
smaller size keeps of its neighbours, next to what the whole table would cost, take and occupy.

    comparison = qsync.compare("data/wordnet_sample.jsonl", sample=300, db=DB)
    comparison.table          # model, dimensions, neighbours_kept, cost_usd, minutes, storage_gb
    qsync compare data/wordnet_sample.jsonl --sample 300

The sample is paid for like any job (a job per model, and one for the queries if any: in the checkpoint file,
within a budget, resumable), and its
vectors stay in the embedding cache at full size: a later run of any size of the same model cuts them from there
instead of paying again (ledger.cache: Gemini's models are Matryoshka-trained). The sample is the records whose
ids hash lowest, so it is the same sample every time for the same table, and mostly the same after the table grows.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from qsync.app import jobs
from qsync.app.options import SourceLike, SpecOptions
from qsync.app.reading import status
from qsync.catalog.instructions import QUERY_TASK, takes_instructions
from qsync.catalog.models import RETRIEVAL_QUERY, embedding_models, full_dimensions, model_info, nested_dimensions
from qsync.embedders.protocol import Vectors
from qsync.engine.events import Listener
from qsync.errors import ConfigError, QsyncError
from qsync.formatting import MISSING, count, duration, gigabytes, usd
from qsync.input.sample import sample_records
from qsync.input.sources import as_source
from qsync.ledger.cache import SignatureIdentity, cache_key, vectors_by_key
from qsync.ledger.jobs import newest_job
from qsync.ledger.ledger import Ledger
from qsync.ledger.queries import planned_units
from qsync.money.estimate import estimate
from qsync.money.what_if import storage_gb
from qsync.ops.agreement import recall_at_k
from qsync.spec.columns import Columns
from qsync.spec.defaults import resolve_db
from qsync.spec.settings import RunSettings
from qsync.spec.target import MEMORY

PathLike = str | os.PathLike[str]
COMPARE_SIZES = (128, 256, 512, 768, 1536, 3072)
DEFAULT_SAMPLE = 300
NEIGHBOURS = 10
MIN_SAMPLE = 50  # fewer records, and a record's 10 nearest are most of the sample: the figure says little
_COLLECTION = "compare"  # the sample's points go to an in-memory Qdrant: only its vectors (cached) are kept


@dataclass
class Comparison:
    """What `compare` found. `table`: one row per model and size: `neighbours_kept` (recall@10 of each sampled
    record's nearest sampled records at full size), `neighbours_kept_queries` (with `queries`: of each query's),
    `records` (how many sampled records the model's measure rests on: a record it skips is not measured), and for
    the whole table at that model: `cost_usd` still to pay (what the cache holds at full size counted, the sample
    included), `minutes` at the tier's limits, `storage_gb` in Qdrant, `tokens_basis` (how its tokens were counted,
    as an estimate says it). Only a Matryoshka model's smaller sizes are
    measured (`measured_sizes`)."""

    source: str
    sample_records: int
    sample_cost_usd: dict[str, float]  # per model, estimated before anything was paid (the cache counted)
    spent_usd: float = 0.0  # what embedding the sample (and queries) recorded in this call
    jobs: list[str] = field(default_factory=list)
    queries: int = 0
    table: pd.DataFrame = field(default_factory=pd.DataFrame)


def compare(
    source: SourceLike,
    *,
    db: PathLike | None = None,
    sample: int = DEFAULT_SAMPLE,
    models: Sequence[str] | None = None,
    sizes: Sequence[int] = COMPARE_SIZES,
    queries: Sequence[str] = (),
    id_column: str = "id",
    text_column: str | None = "text",
    text_template: str | None = None,
    source_db: str | None = None,
    chunk_tokens: int | None = None,
    chunk_overlap: int = 0,
    max_cost_usd: float | None = None,
    dry_run: bool = False,
    settings: RunSettings | None = None,
    listeners: Sequence[Listener] = (),
    on_sample: Callable[[Comparison], None] | None = None,
) -> Comparison:
    """Embed a sample of `source` at each model's full size, then measure each smaller size against it.
    `dry_run`: only choose the sample and say what embedding it costs (`sample_cost_usd`); `on_sample` is told the
    same before anything is paid. `max_cost_usd`: a cap on each model's sample job; a job stopped short is resumed
    by calling again."""
    models = list(models or embedding_models())
    if sample < MIN_SAMPLE:
        raise ConfigError(f"a sample of {sample} records is too small to compare neighbours; use {MIN_SAMPLE} or more")
    if any(int(d) < 1 for d in sizes):
        raise ConfigError(f"vector sizes are positive numbers of dimensions, not {', '.join(map(str, sizes))}")
    columns = Columns(id_column, None if text_template else text_column, text_template)
    described = as_source(source, database=source_db)
    frame = sample_records(described, columns, sample)
    if frame.empty:
        raise QsyncError(f"{described.description}: no record with a text to sample")
    found = Comparison(
        described.description, len(frame),
        {m: float(estimate(frame, model=m, dimensions=full_dimensions(m), db=db, chunk_tokens=chunk_tokens,
                           chunk_overlap=chunk_overlap)["cost_usd"]) for m in models},
    )  # fmt: skip
    asked = pd.DataFrame({"id": [f"q{i}" for i in range(len(queries))], "text": list(queries)})
    found.queries = len(asked)
    for m in models if queries else ():
        found.sample_cost_usd[m] += float(
            estimate(asked, model=m, dimensions=full_dimensions(m), task_type=query_task(m), db=db)["cost_usd"]
        )
    if on_sample is not None:
        on_sample(found)
    if dry_run:
        return found
    digest = _digest(frame, chunk_tokens, chunk_overlap)
    rows = []
    for model in models:
        name = f"{_COLLECTION}:{model}-{digest}"
        items = _embedded(found, frame, name, model, db, max_cost_usd, settings, listeners,
                          chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap)  # fmt: skip
        query_vectors = None
        if queries:
            query_vectors = _embedded(found, asked, f"{_COLLECTION}:queries-{model}-{_digest(asked)}", model, db,
                                      max_cost_usd, settings, listeners, task_type=query_task(model))  # fmt: skip
        # The source as read for the sample: a DataFrame converted once, a RecordBatchReader (read once only) not again.
        whole = estimate(described, model=model, dimensions=full_dimensions(model), db=db, id_column=id_column,
                         text_column=text_column, text_template=text_template, source_db=source_db,
                         chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap)  # fmt: skip
        for dims in measured_sizes(model, sizes):
            rows.append({
                "model": model, "dimensions": dims, "records": len(items),
                "neighbours_kept": recall_at_k(items, None, dims, NEIGHBOURS),
                **({"neighbours_kept_queries": recall_at_k(items, query_vectors, dims, NEIGHBOURS)}
                   if query_vectors is not None else {}),
                "cost_usd": float(whole["cost_usd"]), "minutes": float(whole["expected_minutes"]),
                "storage_gb": storage_gb(int(whole["chunks"]), dims), "tokens_basis": str(whole["tokens_basis"]),
            })  # fmt: skip
    found.table = pd.DataFrame(rows)
    return found


def measured_sizes(model: str, sizes: Sequence[int]) -> list[int]:
    """The sizes a model offers among `sizes` (its full size always): only a Matryoshka model's smaller sizes can be
    cut from its full-size vectors."""
    full = full_dimensions(model)
    low = int(model_info(model).get("min_dimensions", 1))
    smaller = sorted({int(d) for d in sizes if low <= int(d) < full}) if nested_dimensions(model) else []
    return [*smaller, full]


def sample_sentence(found: Comparison) -> str:
    """What embedding the sample costs, said before it is paid (the CLI and the notebook say it alike)."""
    each = ", ".join(f"{m} {usd(c)}" for m, c in found.sample_cost_usd.items())
    queries = f" and {count(found.queries)} queries" if found.queries else ""
    return (
        f"A sample of {count(found.sample_records)} records{queries} of {found.source}, embedded once at full size "
        f"by each model: {usd(sum(found.sample_cost_usd.values()))} ({each}; what the cache holds is free). Its "
        "vectors stay in the cache: a later run of the same model at any size reuses them."
    )


def spent_sentence(found: Comparison) -> str:
    """What embedding the sample cost in this call, and where the ledger has it."""
    if not found.jobs:
        return "The sample was already embedded: nothing paid now."
    return (
        f"Embedding the sample cost {usd(found.spent_usd)} now, recorded as {count(len(found.jobs))} jobs named "
        f"{_COLLECTION}:… (qsync jobs, qsync cost)."
    )


MEANING = (
    f"neighbours kept: of each sampled record's {NEIGHBOURS} nearest sampled records at the model's full size, the "
    f"share still among its {NEIGHBOURS} nearest at this size (with queries: of each query's). It says what a smaller "
    "size loses against the model's own best on your data; it is neighbour agreement, not relevance: it cannot tell "
    "whether either neighbourhood is what a person would want, nor compare one model with the other. Cost and time "
    "(at the tier's limits) are what the whole table still takes, the sample now in the cache left out and its tokens "
    "counted as said below: an estimate made before the sample differs by that. Storage is the whole table's; a long "
    "record counts by its first chunk."
)


def meaning(table: pd.DataFrame) -> str:
    """MEANING, and how the whole table's tokens were counted for each model (a count calibrated with the API can
    differ by a few percent from the estimate at ~4 bytes a token that a job's what-if table shows)."""
    if table.empty or "tokens_basis" not in table:
        return MEANING
    bases = table.groupby("model", sort=False)["tokens_basis"].first()
    if bases.nunique() == 1:
        return f"{MEANING} Its tokens: {bases.iloc[0]}."
    return f"{MEANING} Its tokens: " + "; ".join(f"{model}: {basis}" for model, basis in bases.items()) + "."


def comparison_view(table: pd.DataFrame) -> pd.DataFrame:
    """The table as a person reads it: shares as percentages, dollars, durations and sizes."""
    if table.empty:
        return table
    view = pd.DataFrame({"model": table["model"], "size": table["dimensions"].map(count)})
    view["records measured"] = table["records"].map(count)
    view["neighbours kept"] = table["neighbours_kept"].map(_share)
    if "neighbours_kept_queries" in table:
        view["of your queries"] = table["neighbours_kept_queries"].map(_share)
    view["whole table: cost to pay"] = table["cost_usd"].map(usd)
    view["time"] = (table["minutes"] * 60).map(duration)
    view["Qdrant storage"] = table["storage_gb"].map(gigabytes)
    return view


def _share(value: float) -> str:
    return MISSING if pd.isna(value) else f"{value:.0%}"


def is_comparison(job: str) -> bool:
    """Whether a job is one of `compare`'s samples (not a backfill)."""
    return job.startswith(f"{_COLLECTION}:")


def query_task(model: str) -> str:
    """How a model embeds a search query (qsync.search embeds queries so too)."""
    return QUERY_TASK if takes_instructions(model) else RETRIEVAL_QUERY


def _embedded(
    found: Comparison,
    frame: pd.DataFrame,
    name: str,
    model: str,
    db: PathLike | None,
    max_cost_usd: float | None,
    settings: RunSettings | None,
    listeners: Sequence[Listener],
    *,
    task_type: str | None = None,
    chunk_tokens: int | None = None,
    chunk_overlap: int = 0,
) -> Vectors:
    """The full-size vectors of `frame`'s units, embedded by the job `name` (run, resumed, or already done)."""
    path = resolve_db(db)
    done = None
    if path.exists():
        with Ledger(path, create=False) as ledger:
            done = newest_job(ledger, name)
    if done is None or done.status != "completed":  # a cancelled sample job is run again (a re-sync): it goes on
        options: SpecOptions = {
            "collection": _COLLECTION, "job": name, "embedder": "gemini", "model": model,
            "dimensions": full_dimensions(model), "task_type": task_type, "qdrant_path": MEMORY,
            "id_column": "id", "text_column": "text", "chunk_tokens": chunk_tokens, "chunk_overlap": chunk_overlap,
        }  # fmt: skip
        # What this call pays: a resumed sample job's cost less what it had (a re-sync #2 starts at nothing).
        before_job = done.job_id if done is not None else None
        before = float(status(before_job, db=path)["cost_usd"]) if before_job is not None else 0.0
        result = jobs.run(frame, db=path, settings=settings, listeners=listeners, max_cost_usd=max_cost_usd, **options)
        found.jobs.append(result.job_id)
        paid = float(status(result.job_id, db=path)["cost_usd"]) - (before if result.job_id == before_job else 0.0)
        found.spent_usd += paid
        if not result.ok:
            raise QsyncError(
                f"embedding the sample stopped ({result.status}: {result.message or 'no message'}) after "
                f"{usd(found.spent_usd)} paid in this call; what was paid is kept: call compare again to go on"
            )
    with Ledger(path, create=False) as ledger:
        record = newest_job(ledger, name)
        assert record is not None
        identity = SignatureIdentity(str(record.config["embedder_signature"]))
        units = planned_units(ledger, name)
        # A record is one item: its first chunk (a long record's chunks would be each other's nearest at any size).
        keys = [cache_key(identity, h) for h in units[units["chunk_no"] == 0]["content_hash"]]
        with ledger.reading() as con:
            vectors = vectors_by_key(con, ledger.vectors, keys)
    return np.stack([vectors[k] for k in keys if k in vectors])


def _digest(frame: pd.DataFrame, *parts: object) -> str:
    """Names the sample by what it holds: another sample (a changed table, size or chunking) is another job."""
    hashed = hashlib.sha256(repr(parts).encode())
    for record_id, text in zip(frame["id"], frame["text"], strict=True):
        hashed.update(f"{record_id}\0{text}\0".encode())
    return hashed.hexdigest()[:10]
