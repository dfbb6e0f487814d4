"""Prices embedding answers that came without usage (Google's batchEmbedContents sends none) after the fact, many
calls at a time, off the batches' path: a batch never waits for a count.

A call answered without usage has its vectors saved at once (never pay twice) with its intent left `uncounted`:
its bound (every token at least a byte) stays in every total and in the spend cap until the count replaces it.
This thread gathers such calls and counts their texts together, in one countTokens call for up to COUNT_TEXTS
texts (a count refused for its size is cut in halves), shares the total among the calls by their estimates (the
sum is what the API meters), and settles them in one transaction, giving the difference back to the spend cap.
Groups are counted side by side (up to COUNTS_AT_ONCE calls in flight), so that the count left at the end of a run
costs one call's latency, not one per thousand texts.
A crash before that leaves the intents uncounted: the next run counts them before its first batch. A count that
fails leaves the bound standing: spend over-reported for a while, never under.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from qsync.embedders.protocol import CountsTokens, Embedder, split_tokens
from qsync.errors import QsyncError, TransientError
from qsync.ledger.run import LeasedJob
from qsync.ledger.spend import Counted

log = logging.getLogger("qsync")

COUNT_TEXTS = 1_000  # texts counted in one countTokens call: ten calls of 100 priced with one round trip
COUNT_BYTES = 4 * 1024 * 1024  # and at most this much text in it: the API's request size
LINGER_S = 2.0  # the oldest uncounted call waits at most this long for company (figures exact soon after)
COUNTS_AT_ONCE = 4  # countTokens calls in flight at once (each settles its own group)


@dataclass(frozen=True)
class Uncounted:
    """One embedding call answered without usage, its vectors saved, its tokens to count."""

    intent: str
    batch_no: int
    hashes: list[str]
    texts: list[str]
    estimates: list[int]  # qsync's estimate of each text: how a counted total is shared among them
    bound_usd: float  # what the spend cap was charged for it until counted


class DeferredCounts:
    """Counts uncounted calls in groups, off the batches' threads; `flush` counts what waits now and waits for the
    counts in flight (the spend cap calls it before pausing a job: a bound may be all that stands between the job
    and its budget)."""

    def __init__(
        self,
        job: LeasedJob,
        embedder: Embedder,
        refund: Callable[[float], None],
        group_texts: int = COUNT_TEXTS,
        linger_s: float = LINGER_S,
    ) -> None:
        if not isinstance(embedder, CountsTokens):
            raise TypeError(f"{embedder.model} cannot count tokens")
        self._job = job
        self._embedder = embedder
        self._count = embedder.count_tokens
        self._price = embedder.price_per_million_tokens / 1_000_000
        self._refund = refund
        self._group_texts = group_texts
        self._linger_s = linger_s
        self._waiting: list[tuple[float, Uncounted]] = []
        self._closing = False
        self._cond = threading.Condition()
        self._in_flight: set[Future[int]] = set()  # counts sent and not yet settled (guarded by _cond)
        self._pool = ThreadPoolExecutor(COUNTS_AT_ONCE, thread_name_prefix="qsync-count")
        self._thread = threading.Thread(target=self._run, name="qsync-counts", daemon=True)
        self._thread.start()

    def add(self, call: Uncounted) -> None:
        with self._cond:
            self._waiting.append((time.monotonic(), call))
            self._cond.notify_all()

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    def flush(self) -> bool:
        """Count every call waiting now, and wait for the counts in flight; whether any was settled."""
        with self._cond:
            calls = [call for _, call in self._waiting]
            self._waiting = []
            sent = [*self._in_flight, *self._send(calls)]
        return sum(future.result() for future in wait(sent).done) > 0

    def close(self) -> None:
        """Count what waits (once more: a count that failed is not tried again here), then stop counting."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        try:
            self.flush()
        finally:
            self._pool.shutdown(wait=True)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not self._due():
                    self._cond.wait(self._waiting[0][0] + self._linger_s - time.monotonic() if self._waiting else None)
                if self._closing:
                    return
                calls = [call for _, call in self._waiting]
                self._waiting = []
                self._send(calls)

    def _due(self) -> bool:
        texts = sum(len(call.texts) for _, call in self._waiting)
        return bool(self._waiting) and (
            texts >= self._group_texts or time.monotonic() - self._waiting[0][0] >= self._linger_s
        )

    def _send(self, calls: list[Uncounted]) -> list[Future[int]]:
        """Count `calls` a group a call, side by side (under _cond)."""
        futures = [self._pool.submit(self._settle, group) for group in self._groups(calls)]
        self._in_flight.update(futures)
        for future in futures:
            future.add_done_callback(self._sent)
        return futures

    def _sent(self, future: Future[int]) -> None:
        with self._cond:
            self._in_flight.discard(future)

    def _settle(self, group: list[Uncounted]) -> int:
        """Count and settle one group; if its count failed for a while, it waits again (only what was not settled:
        a group cut in halves settles each half alone). How many calls were settled."""
        try:
            return self._count_group(group)
        except TransientError as exc:  # the API is busy or away: try at the next count
            log.info("qsync will count tokens later: %s", exc)
            with self._cond:
                self._waiting[:0] = [(time.monotonic(), call) for call in group]
        except QsyncError as exc:  # the lease is lost, the file is gone: the bound stands (resume counts)
            log.warning("qsync could not count the tokens of %d calls: %s", len(group), exc)
        return 0

    def _groups(self, calls: list[Uncounted]) -> list[list[Uncounted]]:
        groups: list[list[Uncounted]] = []
        texts = size = 0
        for call in calls:
            call_size = sum(len(t.encode("utf-8")) for t in call.texts)
            if not groups or texts + len(call.texts) > self._group_texts or size + call_size > COUNT_BYTES:
                groups.append([])
                texts = size = 0
            groups[-1].append(call)
            texts += len(call.texts)
            size += call_size
        return groups

    def _count_group(self, group: list[Uncounted]) -> int:
        """One countTokens call for the group's texts (cut in halves if the API refuses it for its size)."""
        try:
            total = self._count([t for call in group for t in call.texts])
        except TransientError:
            raise
        except QsyncError:
            if len(group) == 1:
                raise
            half = len(group) // 2
            # Each half settles, or waits again, on its own: a half settled must not be counted again with the other.
            return self._settle(group[:half]) + self._settle(group[half:])
        shares = split_tokens(total, [e for call in group for e in call.estimates])
        rows: list[Counted] = []
        for call in group:
            tokens, shares = shares[: len(call.texts)], shares[len(call.texts) :]
            rows.append((call.intent, call.batch_no, call.hashes, tokens, sum(tokens) * self._price))
        settled = self._job.settle_counted(self._embedder, rows)  # those still uncounted: settled once, never twice
        self._refund(
            sum(call.bound_usd - row[4] for call, row in zip(group, rows, strict=True) if call.intent in settled)
        )
        return len(settled)
