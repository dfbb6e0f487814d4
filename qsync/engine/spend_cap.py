"""A spending cap for a job's whole spend: embeddings, enrichment answers and Batch Mode submissions,
across every resume. A run starts from what the checkpoint says the job has spent; each paid call is
reserved against the cap (at its estimated, or for answers its highest, cost) before it is made, and
settled with its real cost after.

A call that does not fit while others are in flight waits for them: their reservations are bounds, mostly above
what they cost, and settling gives the difference back. Only a call that does not fit beside nothing in flight
pauses the job, so a job spends up to its cap less one call's bound, never a cap less every call in flight.

A call answered without usage is charged its bound until its tokens are counted (engine.counting), which refunds
the difference; before pausing, the cap has such counts made at once (`count_now`). A call that ended without an
answer the API may have billed (a timeout, a dropped connection, an answer that could not be used) is charged its
bound for the rest of the run (`close_unanswered`), as the checkpoint counts it until its tokens are counted: a
retry of it is paid again, and the cap sees both."""

from __future__ import annotations

import threading
from collections.abc import Callable

from qsync.errors import PauseJob
from qsync.ledger.run import LeasedJob


class SpendCap:
    def __init__(self, limit_usd: float | None, spent_usd: float = 0.0) -> None:
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        self._reserved = 0.0
        self._in_flight = 0  # calls reserved and not settled (counted: a float sum of reservations may not return to 0)
        self._settled = threading.Condition()
        self.count_now: Callable[[], object] | None = None  # counts (and refunds) what waits to be counted

    def reserve(self, usd: float) -> None:
        """Claim `usd` for a call about to be made: at once if it fits, after calls in flight settle if it fits
        then, else pause the job (it would break the cap)."""
        if self._reserve(usd, may_pause=self.count_now is None) or self.count_now is None:
            return
        self.count_now()  # calls charged at their bound, counted now, may give back what this one needs
        self._reserve(usd, may_pause=True)

    def _reserve(self, usd: float, may_pause: bool) -> bool:
        with self._settled:
            while self.limit_usd is not None and self.spent_usd + self._reserved + usd > self.limit_usd + 1e-12:
                if not self._in_flight:
                    if not may_pause:
                        return False
                    raise PauseJob(
                        f"the budget of ${self.limit_usd:.4f} would be exceeded (${self.spent_usd:.4f} spent, next "
                        f"call up to ${usd:.6f}); the job is paused until it is given a higher budget"
                    )
                self._settled.wait()
            self._reserved += usd
            self._in_flight += 1
            return True

    def settle(self, reserved_usd: float, actual_usd: float) -> None:
        with self._settled:
            self._in_flight = max(0, self._in_flight - 1)
            self._reserved = max(0.0, self._reserved - reserved_usd) if self._in_flight else 0.0
            self.spent_usd += actual_usd
            self._settled.notify_all()

    def charge(self, usd: float) -> None:
        """`usd` was (or may have been) spent outside any reservation: a call closed unconfirmed."""
        with self._settled:
            self.spent_usd += usd
            self._settled.notify_all()

    def refund(self, usd: float) -> None:
        """A call charged at its bound was counted: `usd` less was spent."""
        with self._settled:
            self.spent_usd -= usd
            self._settled.notify_all()


def close_unanswered(job: LeasedJob, cap: SpendCap, intent: str, exc: BaseException, bound_usd: float) -> None:
    """A paid call (its intent open) ended on `exc` without an answer to save. If the API may have billed it (the
    error says `maybe_billed`), its intent is closed 'unconfirmed' (its bound counted until its tokens are) and the
    cap is charged that bound; else (a refusal: nothing billed) 'void'."""
    billed = bool(getattr(exc, "maybe_billed", False))
    job.close_intent(intent, "unconfirmed" if billed else "void")
    if billed:
        cap.charge(bound_usd)
