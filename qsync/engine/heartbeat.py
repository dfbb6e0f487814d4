"""A run's heartbeat: while the `with` block runs, renew the lease every `interval_s` on a thread of its own.

`renew` returns False when a cancel was requested (then `on_cancel` is called) and raises LeaseLost when another
runner took the job (kept in `lost`, and `on_lost` is called). A beat that fails because the file is busy or the
disk is full is logged and tried again at the next beat.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType

from qsync.errors import LeaseLost, LedgerError

log = logging.getLogger("qsync")


class Heartbeat:
    def __init__(
        self,
        renew: Callable[[], bool],
        interval_s: float,
        on_cancel: Callable[[], None],
        on_lost: Callable[[], None],
    ) -> None:
        self._renew = renew
        self.interval_s = interval_s
        self._on_cancel = on_cancel
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="qsync-heartbeat", daemon=True)
        self.lost: LeaseLost | None = None

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if not self._renew():
                    self._on_cancel()
            except LeaseLost as exc:
                self.lost = exc
                self._on_lost()
                return
            except LedgerError as exc:  # the file is busy or the disk is full: the next beat may succeed
                log.warning("qsync heartbeat failed: %s", exc)
