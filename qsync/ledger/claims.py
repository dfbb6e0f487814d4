"""Texts being paid for right now, across processes: a run claims the texts it is about to send (in the same
lease-checked transaction that checks nobody else did), so that a second process's run over the same texts waits for
their vectors instead of paying for them again. In one process, engine.inflight does the same for the batches of one
run, without the file.

A claim leaves when its batch is done (in the transaction that marks it done, one statement for the group: until then
the text's vector, saved already, is what anyone looking finds first, so the claim holds nobody up), when its call
fails or is refused, when its run releases its lease, or when its job's lease is taken over; a claim whose run is
gone (its lease released, stale, or its process dead) counts for nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from qsync.ledger.cache import (
    CacheIdentity,
    Lookup,
    cache_key,
    forget,
    lookup_from_rows,
    lookup_keys,
    lookup_sql,
    parts_of,
)
from qsync.ledger.process import lease_is_live
from qsync.ledger.vectorfile import VectorFile
from qsync.spec.defaults import stale_after_s

_HELD = """SELECT c.cache_key, j.owner_pid, j.owner_host, j.heartbeat_at, coalesce(j.stale_after_s, ?), false
           FROM text_claims c JOIN jobs j ON j.job_id = c.job_id AND j.lease_token = c.lease_token
           WHERE c.lease_token <> ? AND c.cache_key IN (SELECT unnest(?::VARCHAR[]))"""


def held_elsewhere(con: Any, keys: list[str], token: str, now: datetime) -> set[str]:
    """The cache keys among `keys` that a live run other than `token`'s has claimed."""
    if not keys:
        return set()
    return live(con.execute(_HELD, [stale_after_s(), token, keys]).fetchall(), now)


def live(rows: list[tuple[Any, ...]], now: datetime) -> set[str]:
    """The keys of `_HELD` rows whose run is alive."""
    return {str(key) for key, pid, host, beat, stale, _ in rows if lease_is_live(pid, host, beat, now, float(stale))}


def held_and_cached(con: Any, keys: list[str], token: str, cached_sql: str) -> tuple[Any, Any]:
    """Inside the caller's transaction, sent together (one round trip): the claims of other runs on `keys` (rows for
    `live`), and `cached_sql`'s rows (cache.lookup_sql: what the cache holds of the same texts). Judged in the
    transaction that claims the rest (`take`), so that a text saved a moment ago is taken from the cache, never
    claimed and paid for again."""
    return con.execute(_HELD, [stale_after_s(), token, keys]), con.execute(cached_sql)


def claim_uncached(
    con: Any, vectors: VectorFile, embedder: CacheIdentity, hashes: list[str], job_id: str, token: str, now: datetime,
    free_origin: str,
) -> tuple[Lookup, set[str]]:  # fmt: skip
    """Inside the caller's lease-checked transaction, one round trip: what the cache holds of these texts (their
    vectors: taken from it, not claimed; `free_origin` as in cache.lookup_vectors), and the hashes another live run
    has claimed (to wait for); the rest claimed for the run of `token`. A cached vector whose bytes the vector file
    lost is forgotten here, and its text claimed (to be paid once more)."""
    keys = lookup_keys(embedder, hashes)
    own = {cache_key(embedder, h): h for h in dict.fromkeys(hashes)}
    held, cached = held_and_cached(con, list(own), token, lookup_sql(keys, free_origin))
    taken = live(held.fetchall(), now)
    found = lookup_from_rows(cached.fetchall(), keys, vectors, embedder)
    if found.lost:
        forget(con, found.lost)
    take(con, [k for k, h in own.items() if h not in found.found and k not in taken], job_id, token, now)
    return found, {own[k] for k in taken if own[k] not in found.found}


def claim_uncached_many(
    con: Any, vectors: VectorFile, embedder: CacheIdentity, requests: list[list[str]], job_id: str, token: str,
    now: datetime, free_origin: str,
) -> list[tuple[Lookup, set[str]]]:  # fmt: skip
    """`claim_uncached` for several callers' hashes at once (GroupCommit.write_combined): one round trip and one insert
    for all of them, each caller's part of the answer returned to it. A hash two callers ask for is claimed once (the
    second's claim, made alone, would have found the first's: the same run's claims hold nobody of that run up)."""
    if len(requests) == 1:
        return [claim_uncached(con, vectors, embedder, requests[0], job_id, token, now, free_origin)]
    found, elsewhere = claim_uncached(
        con, vectors, embedder, [h for hashes in requests for h in hashes], job_id, token, now, free_origin
    )
    parts = parts_of(found, requests, embedder)
    return [(part, elsewhere & set(hashes)) for part, hashes in zip(parts, requests, strict=True)]


def take(con: Any, keys: list[str], job_id: str, token: str, now: datetime) -> None:
    """Claim `keys` for the run of `token` (checked free by `held_and_cached` in the same transaction)."""
    if keys:
        con.execute("INSERT INTO text_claims SELECT unnest(?::VARCHAR[]), ?, ?, ?", [keys, job_id, token, now])


def release(con: Any, keys: list[str], token: str) -> None:
    if keys:
        con.execute(
            "DELETE FROM text_claims WHERE lease_token = ? AND cache_key IN (SELECT unnest(?::VARCHAR[]))",
            [token, keys],
        )


def release_job(con: Any, job_id: str) -> None:
    """Every claim of the job's runs (at a new lease: the previous owner's are left over)."""
    con.execute("DELETE FROM text_claims WHERE job_id = ?", [job_id])
