"""Write-ahead for money: every paid call (an embedding request, an enrichment answer, a Batch Mode submission)
is recorded as an intent, with the most it can cost, before it is sent; when its answer is saved, the intent is
settled in the same transaction (the real figures are then in batches, generations or remote_jobs). An intent a
crash left open, or whose call got no answer, is *unconfirmed* spend: counted in every total, so what qsync
reports is never less than what was billed.

Intent states: open -> settled (answer saved) | void (refused: not billed) | unconfirmed (may have been billed)
| uncounted (answer saved without usage: its bound stands until its tokens are counted, then settled).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from qsync.ledger.ledger import Ledger

Counted = tuple[str, int, list[str], list[int], float]  # an uncounted call counted: intent, batch, hashes, tokens, cost


def open_intent(
    con: Any,
    job_id: str,
    batch_no: int | None,
    kind: str,
    texts: int,
    tokens: int,
    cost: float,
    hashes: list[str] | None,
    token: str,
    now: Any,
    intent: str | None = None,
) -> str:
    """Record a paid call about to be sent; its id (`intent`, else a new one), to settle or close once the call
    ends."""
    return open_intents(con, job_id, [Intent(batch_no, kind, texts, tokens, cost, hashes, intent)], token, now)[0]


class Intent(NamedTuple):
    """A paid call about to be sent (see open_intent)."""

    batch_no: int | None
    kind: str
    texts: int
    tokens: int
    cost: float
    hashes: list[str] | None
    intent: str | None = None


def open_intents(con: Any, job_id: str, calls: Sequence[Intent], token: str, now: Any) -> list[str]:
    """`open_intent` for many calls, in one statement: their ids, in order."""
    ids = [call.intent or uuid.uuid4().hex for call in calls]
    con.execute(
        """INSERT INTO spend_intents (job_id, intent_id, batch_no, kind, texts, tokens, cost_usd, state,
               content_hashes, lease_token, created_at)
           SELECT ?, unnest(?::VARCHAR[]), unnest(?::INTEGER[]), unnest(?::VARCHAR[]), unnest(?::INTEGER[]),
                  unnest(?::BIGINT[]), unnest(?::DOUBLE[]), 'open', unnest(?::VARCHAR[][]), ?, ?""",
        [job_id, ids, [c.batch_no for c in calls], [c.kind for c in calls], [c.texts for c in calls],
         [c.tokens for c in calls], [c.cost for c in calls], [c.hashes for c in calls], token, now],
    )  # fmt: skip
    return ids


def close_intent(con: Any, job_id: str, intent: str, state: str, now: Any) -> None:
    con.execute(
        "UPDATE spend_intents SET state = ?, closed_at = ? WHERE job_id = ? AND intent_id = ?",
        [state, now, job_id, intent],
    )


def close_intents(con: Any, job_id: str, intents: list[tuple[str, str]], now: Any) -> None:
    """`close_intent` for many (intent, state) at once: one statement."""
    if intents:
        con.execute(
            "UPDATE spend_intents SET state = n.state, closed_at = ? FROM (SELECT unnest(?::VARCHAR[]) AS intent_id, "
            "unnest(?::VARCHAR[]) AS state) n WHERE job_id = ? AND spend_intents.intent_id = n.intent_id",
            [now, [i for i, _ in intents], [s for _, s in intents], job_id],
        )


def rename_intent(con: Any, job_id: str, intent: str, name: str) -> None:
    """A Batch Mode submission's intent takes the remote job's name, to be settled when it is ingested."""
    con.execute("UPDATE spend_intents SET intent_id = ? WHERE job_id = ? AND intent_id = ?", [name, job_id, intent])


def uncounted(con: Any, job_id: str) -> list[tuple[str, str, list[str]]]:
    """Unconfirmed embedding calls and Batch Mode submissions whose tokens are still the upper bound: (intent,
    kind, content hashes sent)."""
    rows = con.execute(
        "SELECT intent_id, kind, content_hashes FROM spend_intents WHERE job_id = ? "
        "AND kind IN ('embed', 'batch_mode') AND state = 'unconfirmed' AND NOT counted ORDER BY created_at",
        [job_id],
    ).fetchall()
    return [(str(i), str(k), list(h or [])) for i, k, h in rows]


def unrecorded_submissions(con: Any, job_id: str) -> list[tuple[str, list[str]]]:
    """Batch Mode submissions that may have created a remote job whose name the ledger never got (a crash or a lost
    answer between the submit and its record): (intent id = the job's display name, content hashes in order).
    Intents of an older qsync (not named `qsync-…`) cannot be looked up and are left as they are."""
    rows = con.execute(
        """SELECT intent_id, content_hashes FROM spend_intents s
           WHERE job_id = ? AND kind = 'batch_mode' AND state IN ('open', 'unconfirmed') AND intent_id LIKE 'qsync-%'
             AND NOT EXISTS (SELECT 1 FROM remote_jobs r WHERE r.job_id = s.job_id AND r.name = s.intent_id)
           ORDER BY created_at""",
        [job_id],
    ).fetchall()
    return [(str(i), list(h or [])) for i, h in rows]


def texts_sent(con: Any, job_id: str, hashes: list[str]) -> list[tuple[str, bool]]:
    """The texts of these content hashes as planned, and whether each is a media record's caption."""
    rows = con.execute(
        "SELECT any_value(text), bool_or(media_ref IS NOT NULL) FROM manifest WHERE job_id = ? AND "
        "content_hash IN (SELECT unnest(?::VARCHAR[])) GROUP BY content_hash",
        [job_id, hashes],
    ).fetchall()
    return [(str(t), bool(m)) for t, m in rows]


def set_counted(con: Any, job_id: str, intent: str, tokens: int, cost: float) -> None:
    con.execute(
        "UPDATE spend_intents SET tokens = ?, cost_usd = ?, counted = true WHERE job_id = ? AND intent_id = ?",
        [tokens, cost, job_id, intent],
    )


def uncounted_calls(con: Any, job_id: str) -> list[tuple[str, int, list[str], float]]:
    """Embedding calls answered without usage whose vectors are saved and whose tokens are not counted yet (a
    crash came before the count): (intent, batch, content hashes sent, the bound their cost stands at)."""
    rows = con.execute(
        "SELECT intent_id, batch_no, content_hashes, cost_usd FROM spend_intents WHERE job_id = ? AND kind = 'embed' "
        "AND state = 'uncounted' ORDER BY created_at",
        [job_id],
    ).fetchall()
    return [(str(i), int(b), list(h or []), float(c)) for i, b, h, c in rows]


def planned_texts(con: Any, job_id: str, hashes: list[str]) -> dict[str, tuple[str, int]]:
    """content hash -> (text as planned, its token estimate)."""
    rows = con.execute(
        "SELECT content_hash, any_value(text), any_value(token_estimate) FROM manifest WHERE job_id = ? AND "
        "content_hash IN (SELECT unnest(?::VARCHAR[])) GROUP BY content_hash",
        [job_id, hashes],
    ).fetchall()
    return {str(h): (str(t), int(e)) for h, t, e in rows}


def settle_counted(con: Any, job_id: str, calls: list[tuple[str, int, int, float]], now: Any) -> set[str]:
    """Uncounted calls counted: each (intent, batch, tokens, cost) whose intent is still uncounted is settled, exact
    now (its bound leaves the unconfirmed total), and adds its tokens and cost to its batch, in the caller's
    transaction; an intent settled already adds nothing again. Two statements for any number of calls. Returns the
    intents settled here."""
    intents, tokens, costs = ([c[0] for c in calls], [c[2] for c in calls], [c[3] for c in calls])
    settled = {
        str(row[0])
        for row in con.execute(
            """UPDATE spend_intents SET state = 'settled', tokens = n.t, cost_usd = n.c, counted = true, closed_at = ?
               FROM (SELECT unnest(?::VARCHAR[]) AS i, unnest(?::BIGINT[]) AS t, unnest(?::DOUBLE[]) AS c) n
               WHERE spend_intents.job_id = ? AND spend_intents.intent_id = n.i AND spend_intents.state = 'uncounted'
               RETURNING spend_intents.intent_id""",
            [now, intents, tokens, costs, job_id],
        ).fetchall()
    }
    kept = [c for c in calls if c[0] in settled]
    if kept:
        con.execute(
            """UPDATE batches SET tokens = batches.tokens + n.t, cost_usd = batches.cost_usd + n.c
               FROM (SELECT b, sum(t) AS t, sum(c) AS c FROM (SELECT unnest(?::INTEGER[]) AS b,
                     unnest(?::BIGINT[]) AS t, unnest(?::DOUBLE[]) AS c) GROUP BY b) n
               WHERE batches.job_id = ? AND batches.batch_no = n.b""",
            [[c[1] for c in kept], [c[2] for c in kept], [c[3] for c in kept], job_id],
        )
    return settled


def count_unconfirmed(
    ledger: Ledger, write: Callable[[Callable[[Any], None]], None], job_id: str, count_tokens: Callable[[list[str]], int],
    prices: dict[str, float],
) -> int:  # fmt: skip
    """Replace the upper bound of a job's unconfirmed paid calls (embedding calls, Batch Mode submissions: the kinds
    in `prices`, per 1M tokens) by their exact token count (countTokens on the texts they sent, at most 100 a
    call), each written with `write` (the run's lease-checked commit). Returns how many intents were counted."""
    with ledger.reading() as con:
        open_ones = [u for u in uncounted(con, job_id) if u[1] in prices]
    counted = 0
    for intent, kind, hashes in open_ones:
        with ledger.reading() as con:
            sent = texts_sent(con, job_id, hashes)
        # countTokens on the captions alone would undercount a media call: its upper bound stays.
        if not sent or any(media for _, media in sent):
            continue
        texts = [t for t, _ in sent]
        tokens = sum(int(count_tokens(texts[i : i + 100])) for i in range(0, len(texts), 100))
        cost = tokens * prices[kind] / 1e6
        write(partial(set_counted, job_id=job_id, intent=intent, tokens=tokens, cost=cost))
        counted += 1
    return counted
