"""The embedding cache: every vector an embedder returned, keyed by who made it and from what text.

Written before the upsert that uses it (never pay twice) and read before any embedder call; shared by
every job in the DuckDB file, so a second job over the same texts and model pays for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from qsync.catalog.models import full_dimensions, nested_dimensions
from qsync.embedders.protocol import Vectors, shortened
from qsync.ledger.vectorfile import VectorFile
from qsync.sql import literal_list, quoted


class CacheIdentity(Protocol):
    """What makes two vectors of one text interchangeable."""

    @property
    def model(self) -> str: ...

    @property
    def dimensions(self) -> int: ...

    @property
    def task_type(self) -> str: ...


def embedder_signature(embedder: CacheIdentity, enrich_fingerprint: str = "") -> str:
    """Who made a vector: model|dimensions|task_type, plus the enrichment that chose its text, if any.
    A record's point counts as unchanged only when its signature matches."""
    base = f"{embedder.model}|{embedder.dimensions}|{embedder.task_type}"
    return f"{base}|enrich:{enrich_fingerprint}" if enrich_fingerprint else base


def cache_key(embedder: CacheIdentity, content_hash: str) -> str:
    return f"{embedder_signature(embedder)}|{content_hash}"


def batch_mode_origin(job_id: str) -> str:
    """The `origin` of vectors a job prefetched in Batch Mode: paid once, at the batch price."""
    return f"batch-mode:{job_id}"


def insert_vectors(
    con: Any,
    embedder: CacheIdentity,
    hashes: list[str],
    offsets: list[int],
    tokens: list[int],
    now: Any,
    origin: str | None,
    *,
    ignore_existing: bool = False,
) -> None:
    """Record vectors already appended to the vector file at `offsets` (inside the caller's transaction).

    A plain INSERT: callers only persist keys the cache did not hold when they looked, and ON CONFLICT
    costs ~6 ms a batch, growing with the cache. If another job saved one of the keys meanwhile, the
    INSERT fails and the caller retries with `ignore_existing` (the first copy wins)."""
    # One statement of lists (~1 ms) rather than an Arrow table registered, inserted and unregistered (three
    # requests to the host, ~3 ms).
    conflict = " ON CONFLICT DO NOTHING" if ignore_existing else ""
    con.execute(
        f"""INSERT INTO embeddings (cache_key, model, dimensions, task_type, content_hash, tokens, byte_offset,
                                    created_at, origin)
            SELECT unnest(?::VARCHAR[]), ?, ?, ?, unnest(?::VARCHAR[]), unnest(?::INTEGER[]), unnest(?::BIGINT[]),
                   ?::TIMESTAMP, ?{conflict}""",
        [[cache_key(embedder, h) for h in hashes], embedder.model, embedder.dimensions, embedder.task_type,
         list(hashes), [int(t) for t in tokens], [int(o) for o in offsets], now, origin],
    )  # fmt: skip


def set_tokens(con: Any, keys: list[str], tokens: list[int]) -> None:
    """The counted tokens of cached vectors recorded with estimates (an answer without usage, counted later): what
    reusing each saves."""
    con.execute(
        "UPDATE embeddings SET tokens = n.t FROM (SELECT unnest(?::VARCHAR[]) AS k, unnest(?::INTEGER[]) AS t) n "
        "WHERE embeddings.cache_key = n.k",
        [keys, tokens],
    )


def append_vectors(vectors_file: VectorFile, vectors: Vectors) -> list[int]:
    """Write vectors to the vector file, to be fsynced before the rows that point at them commit (the group
    commit does it once for the group); their offsets."""
    first = vectors_file.append(vectors, sync=False)
    row = int(vectors.shape[1]) * 4 if len(vectors) else 0
    return [first + i * row for i in range(len(vectors))]


@dataclass
class Lookup:
    """What the cache holds for some texts: content hash -> (vector, tokens reusing it saves), the hashes among
    them that the job's own Batch Mode paid for (embedded by Batch Mode, not cache hits), and the cache keys whose
    bytes the vector file no longer holds (lost: misses now, and to be forgotten, see `forget`)."""

    found: dict[str, tuple[Vectors, int]] = field(default_factory=dict)
    prefetched: set[str] = field(default_factory=set)
    lost: list[str] = field(default_factory=list)


def lookup_vectors(
    con: Any, vectors_file: VectorFile, embedder: CacheIdentity, hashes: list[str], free_origin: str | None = None
) -> Lookup:
    """The cached vectors of `hashes`, at the embedder's size or cut from the same model's full size (see
    `full_size`): one query for both (it is on every batch's path). Vectors whose origin is `free_origin` (this
    job's own Batch Mode prefetch) save nothing: the job paid for them."""
    keys = lookup_keys(embedder, hashes)
    if not keys:
        return Lookup()
    rows = con.execute(lookup_sql(keys, free_origin)).fetchall()
    return lookup_from_rows(rows, keys, vectors_file, embedder)


def parts_of(found: Lookup, requests: list[list[str]], embedder: CacheIdentity) -> list[Lookup]:
    """One lookup made for several callers' hashes at once (GroupCommit.write_combined), each caller's part of it. A
    key whose bytes are lost is told once, to the first caller that asked (a caller counts what it is told)."""
    parts = []
    lost = set(found.lost)
    for hashes in requests:
        mine = set(hashes)
        keys = lookup_keys(embedder, hashes)
        part = Lookup(
            found={h: v for h, v in found.found.items() if h in mine},
            prefetched=found.prefetched & mine,
            lost=[k for k in found.lost if k in keys and k in lost],
        )
        lost -= set(part.lost)
        parts.append(part)
    return parts


def lookup_keys(embedder: CacheIdentity, hashes: list[str]) -> dict[str, tuple[int, str]]:
    """The cache keys that may serve `hashes` (`serving`): key -> (rank: 0 the embedder's own size, 1 its model's
    full size; content hash)."""
    identities = serving(embedder)
    return {cache_key(identity, h): (rank, h) for rank, identity in enumerate(identities) for h in set(hashes)}


def lookup_sql(keys: dict[str, tuple[int, str]], free_origin: str | None) -> str:
    """The query of `lookup_vectors` (its rows go to `lookup_from_rows`), for a caller that sends it with others."""
    origin = quoted(free_origin or "")
    return (
        f"SELECT content_hash, CASE WHEN origin = {origin} THEN 0 ELSE tokens END AS tokens, byte_offset, "
        f"dimensions, cache_key, coalesce(origin = {origin}, false) FROM embeddings "
        f"WHERE cache_key IN ({literal_list(sorted(keys))})"
    )


def lookup_from_rows(
    rows: list[tuple[Any, ...]], keys: dict[str, tuple[int, str]], vectors_file: VectorFile, embedder: CacheIdentity
) -> Lookup:
    """The vectors `lookup_sql`'s rows point at, read from the vector file."""
    found = Lookup()
    rows = sorted(rows, key=lambda row: keys[str(row[4])][0])  # the own size first, then the full size, cut
    for row, vector in zip(rows, vectors_file.read([int(r[2]) for r in rows], [int(r[3]) for r in rows]), strict=True):
        rank, content_hash = keys[str(row[4])]
        if content_hash in found.found:
            continue
        if vector is None:
            found.lost.append(str(row[4]))
            continue
        found.found[content_hash] = (vector if rank == 0 else shortened(vector, embedder.dimensions), int(row[1]))
        if row[5]:
            found.prefetched.add(content_hash)
    return found


def serving(embedder: CacheIdentity) -> list[CacheIdentity]:
    """Whose cached vectors serve this embedder: its own, then (a Matryoshka model at a smaller size) its model's
    full size, cut. Every reader of the cache asks this, so that a vector paid for once is never paid for again."""
    full = full_size(embedder)
    return [embedder] if full is None else [embedder, full]


def key_prefixes(embedder: CacheIdentity) -> list[str]:
    """The parameters of `uncached_sql`: the cache-key prefixes (`prefix || content_hash`) of `serving(embedder)`,
    always two (the own size's twice when nothing else serves it)."""
    prefixes = [cache_key(identity, "") for identity in serving(embedder)]
    return [prefixes[0], prefixes[-1]]


def uncached_sql(content_hash: str) -> str:
    """SQL true when the cache holds no vector of `content_hash` (an SQL expression) for an embedder, with
    `key_prefixes(embedder)` as its two parameters: for SQL that looks in the cache as `serving` does."""
    return " AND ".join(
        f"NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.cache_key = ? || {content_hash})" for _ in range(2)
    )


@dataclass(frozen=True)
class _Identity:
    model: str
    dimensions: int
    task_type: str


def full_size(embedder: CacheIdentity) -> CacheIdentity | None:
    """The same model and task at the model's full size, when its vector holds this size's (a Matryoshka model:
    a smaller size is the full vector's first dimensions, renormalised); else None. A comparison of sizes, or a
    job at the full size, then pays for every smaller size of the same texts too."""
    if embedder.dimensions <= 0 or not nested_dimensions(embedder.model):
        return None
    full = full_dimensions(embedder.model)
    return _Identity(embedder.model, full, embedder.task_type) if embedder.dimensions < full else None


def forget(con: Any, keys: list[str]) -> int:
    """Drop cache entries whose bytes are lost, so the vectors are embedded (and paid for) once more."""
    if not keys:
        return 0
    con.execute("DELETE FROM embeddings WHERE cache_key IN (SELECT unnest(?::VARCHAR[]))", [keys])
    return len(keys)


# A row's bytes end at byte_offset + 4 * dimensions; dimensions are at most 3,072. Filtering on byte_offset alone
# first lets DuckDB skip every row group whose offsets are all well inside the file (its min/max per group): a
# check before each append costs a fraction of a millisecond, not a scan of the cache.
_BEYOND = "byte_offset > ? - 4 * 4096 AND byte_offset + 4 * dimensions > ?"


def count_beyond(con: Any, size: int) -> int:
    """Cache entries whose bytes lie past the end of the vector file (`size` bytes)."""
    return int(con.execute(f"SELECT count(*) FROM embeddings WHERE {_BEYOND}", [size, size]).fetchall()[0][0])


def forget_beyond(con: Any, size: int) -> int:
    """Drop cache entries whose bytes lie past the end of the vector file (`size` bytes: it was truncated, or
    deleted and started again), before anything is appended where they point. How many."""
    lost = count_beyond(con, size)
    if lost:
        con.execute(f"DELETE FROM embeddings WHERE {_BEYOND}", [size, size])
    return lost


def forget_within(con: Any, start: int, stop: int) -> None:
    """Drop cache entries whose bytes overlap bytes [start, stop) of the vector file: bytes a write appended for its
    own vectors, which entries its rolled-back first try had forgotten may point at again (fresh.Appender)."""
    con.execute("DELETE FROM embeddings WHERE byte_offset < ? AND byte_offset + 4 * dimensions > ?", [stop, start])


def cached_hashes(con: Any, embedder: CacheIdentity, hashes: list[str]) -> set[str]:
    """The hashes among `hashes` whose vector (by this embedder, or cut from its full size) the cache holds."""
    found: set[str] = set()
    for identity in serving(embedder):
        todo = [h for h in hashes if h not in found]
        for start in range(0, len(todo), 1000):
            keys = [cache_key(identity, h) for h in todo[start : start + 1000]]
            placeholders = ", ".join("?" * len(keys))
            sql = f"SELECT content_hash FROM embeddings WHERE cache_key IN ({placeholders})"
            found.update(str(r[0]) for r in con.execute(sql, keys).fetchall())
    return found


def vectors_by_key(con: Any, vectors_file: VectorFile, keys: list[str]) -> dict[str, Vectors]:
    """cache key -> vector, for the keys the cache holds (and whose bytes the vector file still has), at their own
    size or cut from their model's full size."""
    found = _by_key(con, vectors_file, keys)
    fuller = {key: full for key in keys if key not in found and (full := full_size_key(key)) is not None}
    if fuller:
        full_vectors = _by_key(con, vectors_file, sorted(set(fuller.values())))
        found.update({
            key: shortened(full_vectors[full], SignatureIdentity(key.rpartition("|")[0]).dimensions)
            for key, full in fuller.items() if full in full_vectors
        })  # fmt: skip
    return found


def full_size_key(key: str) -> str | None:
    """The key of the full-size vector a cache key's vector is cut from (a Matryoshka model at a smaller size)."""
    signature, _, content_hash = key.rpartition("|")
    full = full_size(SignatureIdentity(signature))
    return None if full is None else cache_key(full, content_hash)


def _by_key(con: Any, vectors_file: VectorFile, keys: list[str]) -> dict[str, Vectors]:
    if not keys:
        return {}
    placeholders = ", ".join("?" * len(keys))
    rows = con.execute(
        f"SELECT cache_key, byte_offset, dimensions FROM embeddings WHERE cache_key IN ({placeholders})", keys
    ).fetchall()
    vectors = vectors_file.read([int(r[1]) for r in rows], [int(r[2]) for r in rows])
    return {str(r[0]): v for r, v in zip(rows, vectors, strict=True) if v is not None}


class SignatureIdentity:
    """The cache identity named by an embedder signature (model|dimensions|task_type[|enrich:…])."""

    def __init__(self, signature: str) -> None:
        model, dims, task = [*signature.split("|"), "", "", ""][:3]
        self.model, self.dimensions, self.task_type = model, int(dims or 0), task
