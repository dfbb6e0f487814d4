"""The engine's parts on their own, fast: the spend cap, texts in flight, the completer, the scheduler, and the
rate limiter shared per API key. No file, no service: each part through its own interface."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from datetime import datetime

import pytest

from qsync.embedders.protocol import Vectors
from qsync.engine.completer import Completer
from qsync.engine.control import Control
from qsync.engine.inflight import InFlight
from qsync.engine.outcome import Outcome, Upserted
from qsync.engine.ratelimit import RateLimiter, shared_limiter
from qsync.engine.scheduler import Scheduler
from qsync.engine.slots import CallSlots
from qsync.engine.spend_cap import SpendCap
from qsync.errors import Interrupted, PauseJob
from qsync.ledger.batches import BatchWork, Completion

# -- the spend cap ---------------------------------------------------------------------------------------------


def test_the_spend_cap_counts_what_was_spent_before_and_what_is_in_flight() -> None:
    cap = SpendCap(1.00, spent_usd=0.70)  # a resume: $0.70 spent by earlier runs
    cap.reserve(0.20)
    # 0.70 + 0.20 in flight + 0.15 > 1.00: the call waits for the one in flight instead of pausing the job.
    waiter = threading.Thread(target=cap.reserve, args=(0.15,))
    waiter.start()
    waiter.join(timeout=0.3)
    assert waiter.is_alive()
    cap.settle(0.20, 0.05)  # the call cost less than it reserved: 0.75 + 0.15 fits now
    waiter.join(timeout=30)
    assert not waiter.is_alive() and cap.spent_usd == pytest.approx(0.75)
    # 0.75 + 0.15 in flight + 0.15 does not fit; once nothing is in flight and it still does not, the job pauses.
    outcome: list[BaseException] = []
    second = threading.Thread(target=lambda: _pausing(cap, 0.15, outcome))
    second.start()
    cap.settle(0.15, 0.15)
    second.join(timeout=30)
    assert len(outcome) == 1 and re.search(r"budget of \$1\.0000 would be exceeded \(\$0\.9000 spent", str(outcome[0]))
    assert cap.spent_usd == pytest.approx(0.90)  # never past the cap


def _pausing(cap: SpendCap, usd: float, outcome: list[BaseException]) -> None:
    try:
        cap.reserve(usd)
    except PauseJob as exc:
        outcome.append(exc)


def test_no_cap_reserves_anything() -> None:
    cap = SpendCap(None)
    for _ in range(1000):
        cap.reserve(1e6)
    cap.settle(1e6, 3.0)
    assert cap.spent_usd == 3.0


# -- texts in flight -------------------------------------------------------------------------------------------


def test_a_text_in_flight_is_waited_for_and_its_vector_handed_over() -> None:
    import numpy as np

    inflight, control = InFlight(), Control()
    owned, others = inflight.claim(["a", "b"])
    assert owned == ["a", "b"] and others == []
    owned2, waiting = inflight.claim(["b", "c"])
    assert owned2 == ["c"] and waiting == ["b"]
    result: list[tuple[dict[str, tuple[Vectors, int]], list[str]]] = []
    waiter = threading.Thread(target=lambda: result.append(inflight.wait(waiting, control)))
    waiter.start()
    inflight.resolve("b", np.ones(3, np.float32), tokens=7)
    waiter.join(5)
    found, failed = result[0]
    assert list(found) == ["b"] and found["b"][1] == 7 and failed == []


def test_a_failed_owner_tells_its_waiters_to_claim_the_text_themselves() -> None:
    inflight, control = InFlight(), Control()
    inflight.claim(["x"])
    _, waiting = inflight.claim(["x"])
    threading.Timer(0.05, lambda: inflight.resolve("x", None)).start()
    found, failed = inflight.wait(waiting, control)
    assert found == {} and failed == ["x"]
    assert inflight.claim(["x"]) == (["x"], [])  # free to be claimed again


def test_a_stop_cuts_a_wait_for_a_text_in_flight_short() -> None:
    inflight, control = InFlight(), Control()
    inflight.claim(["x"])
    threading.Timer(0.05, control.request_stop).start()
    with pytest.raises(Interrupted):
        inflight.wait(["x"], control)


# -- the completer ---------------------------------------------------------------------------------------------


def _upserted(batch_no: int) -> Upserted:
    work = BatchWork(batch_no, 1, [batch_no], [f"r{batch_no}"], ["h"], ["t"], [1], ["{}"])
    return Upserted(Completion(work, 0, 0, 0.0), Outcome(batch_no), written=batch_no)


def test_the_completer_marks_batches_done_in_groups_and_delivers_every_outcome() -> None:
    groups: list[list[int]] = []
    delivered: list[int] = []

    def complete(group: Sequence[Upserted]) -> list[Outcome]:
        groups.append([u.outcome.batch_no for u in group])
        for u in group:
            u.outcome.kind = "done"
        return [u.outcome for u in group]

    completer = Completer(complete, lambda o: delivered.append(o.batch_no), max_waiting=100, linger_s=0.2)
    for batch_no in range(10):  # handed in faster than the linger: one group
        completer.submit(_upserted(batch_no))
    completer.close()
    assert sorted(delivered) == list(range(10))
    assert len(groups) < 10 and sorted(b for g in groups for b in g) == list(range(10))


def test_a_failing_completion_is_delivered_as_lost_never_swallowed() -> None:
    delivered: list[Outcome] = []

    def complete(group: Sequence[Upserted]) -> list[Outcome]:
        raise OSError("flush failed")

    completer = Completer(complete, delivered.append, max_waiting=4, linger_s=0.01)
    completer.submit(_upserted(1))
    completer.close()
    assert [o.kind for o in delivered] == ["lost"] and isinstance(delivered[0].fatal, OSError)


# -- the scheduler ---------------------------------------------------------------------------------------------


class _Pipeline:
    """Stands in for BatchPipeline: each batch takes `seconds`; batch `fail` fails, batch `halt` must stop the job."""

    def __init__(self, seconds: float = 0.0, fail: int = -1, halt: int = -1) -> None:
        self.seconds, self.fail, self.halt = seconds, fail, halt
        self.started: list[int] = []
        self.lock = threading.Lock()

    def process(self, batch_no: int) -> Outcome | Upserted:
        with self.lock:
            self.started.append(batch_no)
        time.sleep(self.seconds)
        if batch_no == self.fail:
            return Outcome(batch_no, "failed", error="boom")
        if batch_no == self.halt:
            return Outcome(batch_no, "halted", halt=PauseJob("budget"))
        return _upserted(batch_no)

    def complete(self, group: Sequence[Upserted]) -> list[Outcome]:
        for u in group:
            u.outcome.kind = "done"
        return [u.outcome for u in group]


def test_the_scheduler_runs_every_batch_once_on_its_workers() -> None:
    pipeline = _Pipeline(seconds=0.01, fail=3)
    outcomes: list[Outcome] = []
    scheduler = Scheduler(pipeline, workers=4, control=Control())  # type: ignore[arg-type]
    assert scheduler.run(list(range(20)), outcomes.append)
    assert sorted(pipeline.started) == list(range(20))
    kinds = {o.batch_no: o.kind for o in outcomes}
    assert kinds[3] == "failed" and all(kinds[b] == "done" for b in range(20) if b != 3)
    assert scheduler.in_flight == 0


def test_a_batch_that_must_stop_the_job_starts_no_new_batch() -> None:
    pipeline = _Pipeline(halt=0)
    outcomes: list[Outcome] = []
    scheduler = Scheduler(pipeline, workers=1, control=Control())  # type: ignore[arg-type]
    scheduler.run(list(range(10)), outcomes.append)
    assert pipeline.started == [0]  # one worker: it heard the halt before taking another batch
    assert outcomes[0].halt is not None


def test_a_stop_lets_the_batches_under_way_finish_and_starts_no_other() -> None:
    control = Control()
    pipeline = _Pipeline(seconds=0.2)
    outcomes: list[Outcome] = []
    threading.Timer(0.05, control.request_stop).start()
    Scheduler(pipeline, workers=2, control=control).run(list(range(10)), outcomes.append)  # type: ignore[arg-type]
    assert sorted(pipeline.started) == [0, 1]
    assert sorted(o.batch_no for o in outcomes) == [0, 1] and all(o.kind == "done" for o in outcomes)


def test_a_call_slot_is_waited_for_and_a_stop_ends_the_wait() -> None:
    control, slots = Control(), CallSlots(1)
    took: list[str] = []
    with slots.held(control):
        waiter = threading.Thread(target=lambda: _hold(slots, control, took))
        waiter.start()
        time.sleep(0.05)
        assert took == []  # the one slot is held: the second call waits
    waiter.join(timeout=5)
    assert took == ["slot"]
    with slots.held(control):
        stopped: list[BaseException] = []
        waiter = threading.Thread(target=lambda: _hold(slots, control, took, stopped))
        waiter.start()
        control.request_stop()
        waiter.join(timeout=5)
    assert not waiter.is_alive() and isinstance(stopped[0], Interrupted) and took == ["slot"]
    with pytest.raises(Interrupted), slots.held(control):  # a stopping run takes no free slot either
        pass
    winding = Control()  # the budget or a refused key stops the job: a batch not yet calling does not call
    winding.wind_down()
    with pytest.raises(Interrupted), slots.held(winding):
        pass


def _hold(slots: CallSlots, control: Control, took: list[str], errors: list[BaseException] | None = None) -> None:
    try:
        with slots.held(control):
            took.append("slot")
    except Interrupted as exc:
        assert errors is not None
        errors.append(exc)


# -- pacing ----------------------------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def now(self) -> datetime:
        raise NotImplementedError


def test_the_limiter_paces_texts_to_the_limit_with_its_margin() -> None:
    clock = _Clock()
    limiter = RateLimiter(texts_per_minute=600, tokens_per_minute=None, clock=clock)
    waits = [limiter.acquire(100, 0) for _ in range(6)]  # 600 texts at once: 97% of 10 a second
    assert waits[0] == pytest.approx(100 / (600 * 0.97 / 60))
    assert waits[-1] == pytest.approx(600 / (600 * 0.97 / 60))


def test_runs_that_share_a_key_share_one_limiter_at_the_lower_pace() -> None:
    first = shared_limiter("gemini|key-a|m", 3000, None)
    second = shared_limiter("gemini|key-a|m", 1500, None)  # another job, same key: one pace, the lower one
    other = shared_limiter("gemini|key-b|m", 3000, None)
    assert first is second and first is not other
    assert first.limits == (1500.0, None) and other.limits == (3000.0, None)
