"""Each distinct text is paid for once, also when two batches that run at once both hold it.

Before a batch sends texts to the embedder it claims them here. A text that another batch of this run
is embedding right now is not sent again: the batch waits for that call, then takes the vector it
saved. If the owner's call fails, its waiters are told so and claim the text themselves.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from qsync.embedders.protocol import Vectors
from qsync.engine.control import Control


@dataclass
class _Pending:
    resolved: bool = False
    vector: Vectors | None = None
    tokens: int = 0


class InFlight:
    def __init__(self) -> None:
        # One condition for all texts rather than an Event per text: a batch claims 100 texts, and
        # waiting for another batch's call is rare.
        self._cond = threading.Condition()
        self._pending: dict[str, _Pending] = {}

    def claim(self, keys: Iterable[str]) -> tuple[list[str], list[str]]:
        """Split `keys` into those this caller now owns (must embed, then `resolve`) and those another
        batch is embedding (to `wait` for)."""
        owned: list[str] = []
        others: list[str] = []
        with self._cond:
            for key in keys:
                if key in self._pending:
                    others.append(key)
                else:
                    self._pending[key] = _Pending()
                    owned.append(key)
        return owned, others

    def resolve(self, key: str, vector: Vectors | None, tokens: int = 0) -> None:
        """The owner's call ended: with the vector (already persisted), or None if it failed."""
        with self._cond:
            pending = self._pending.pop(key, None)
            if pending is not None:
                pending.vector, pending.tokens, pending.resolved = vector, tokens, True
                self._cond.notify_all()

    def wait(self, keys: list[str], control: Control) -> tuple[dict[str, tuple[Vectors, int]], list[str]]:
        """Wait for other batches' calls: (vectors they saved with their tokens, keys whose call failed).
        Raises Interrupted if the run stops meanwhile."""
        found: dict[str, tuple[Vectors, int]] = {}
        failed: list[str] = []
        with self._cond:
            waits = {k: self._pending.get(k) for k in keys}
        for key, pending in waits.items():
            if pending is None:  # resolved between claim and wait: the vector is in the cache now
                failed.append(key)
                continue
            with self._cond:
                while not pending.resolved:
                    self._cond.wait(0.05)
                    control.check()
            if pending.vector is None:
                failed.append(key)
            else:
                found[key] = (pending.vector, pending.tokens)
        return found, failed
