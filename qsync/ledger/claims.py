"""Texts being paid for right now, across processes: a run claims the texts it is about to send (in the same
lease-checked transaction that checks nobody else did), so that a second process's run over the same texts waits for
their vectors instead of paying for them again. In one process, engine.inflight does the same for the batches of one
run, without the file.

A claim leaves when its vectors are saved (in that transaction), when its call fails or is refused, when its run
releases its lease, or when its job's lease is taken over; a claim whose run is gone (its lease released, stale, or
its process dead) counts for nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from qsync.ledger.cache import full_size_key
from qsync.ledger.process import lease_is_live
from qsync.spec.defaults import stale_after_s

_HELD = """SELECT c.cache_key, j.owner_pid, j.owner_host, j.heartbeat_at, coalesce(j.stale_after_s, ?), false
           FROM text_claims c JOIN jobs j ON j.job_id = c.job_id AND j.lease_token = c.lease_token
           WHERE c.lease_token <> ? AND c.cache_key IN (SELECT unnest(?::VARCHAR[]))"""


def held_elsewhere(con: Any, keys: list[str], token: str, now: datetime) -> set[str]:
    """The cache keys among `keys` that a live run other than `token`'s has claimed."""
    if not keys:
        return set()
    return _live(con.execute(_HELD, [stale_after_s(), token, keys]).fetchall(), now)


def _live(rows: list[tuple[Any, ...]], now: datetime) -> set[str]:
    return {str(key) for key, pid, host, beat, stale, _ in rows if lease_is_live(pid, host, beat, now, float(stale))}


def claim(con: Any, keys: list[str], job_id: str, token: str, now: datetime) -> set[str]:
    """Claim the keys no live run has claimed and the cache does not hold; return the others: claimed by another
    run (to wait for), or saved since the caller looked in the cache (to take from it). Both are judged in the
    caller's transaction, so that a text saved a moment ago is never claimed and paid for again; in one query (a
    round trip to the host less, on every paid batch's path)."""
    if not keys:
        return set()
    # The keys whose vector the cache holds, at their size or at their model's full size (cut from it).
    fuller = {key: full for key in keys if (full := full_size_key(key)) is not None}
    wanted = [*keys, *fuller.values()]
    placeholders = ", ".join("?" * len(wanted))  # a literal list: DuckDB uses the primary-key index
    rows = con.execute(
        f"""{_HELD} UNION ALL
            SELECT cache_key, NULL, NULL, NULL, NULL, true FROM embeddings WHERE cache_key IN ({placeholders})""",
        [stale_after_s(), token, keys, *wanted],
    ).fetchall()
    held = {str(r[0]) for r in rows if r[5]}
    taken = _live([r for r in rows if not r[5]], now)
    taken |= {key for key in keys if key in held or fuller.get(key) in held}
    mine = [k for k in keys if k not in taken]
    if mine:
        con.execute("INSERT INTO text_claims SELECT unnest(?::VARCHAR[]), ?, ?, ?", [mine, job_id, token, now])
    return taken


def release(con: Any, keys: list[str], token: str) -> None:
    if keys:
        con.execute(
            "DELETE FROM text_claims WHERE lease_token = ? AND cache_key IN (SELECT unnest(?::VARCHAR[]))",
            [token, keys],
        )


def release_job(con: Any, job_id: str) -> None:
    """Every claim of the job's runs (at a new lease: the previous owner's are left over)."""
    con.execute("DELETE FROM text_claims WHERE job_id = ?", [job_id])
