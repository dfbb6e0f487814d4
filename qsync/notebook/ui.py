"""Where widget updates run: on the kernel's side.

A job's events arrive on its run thread, the launcher plans on a thread of its own, and a monitor following a job
run elsewhere polls on another. Widgets changed from all of them at once can interleave (a figure drawn from
stale numbers after a newer one, a button enabled by one thread and disabled by another). So each widget tree
holds a `KernelSide`, made in the kernel's main thread when the widget is made, and every update from another
thread is queued to the kernel's event loop, where they run one at a time, in order, while the kernel is idle.
Outside a kernel (plain Python, tests that drive the widgets) there is no loop, and updates run at once. Code
that blocks the kernel's main thread waiting for a thread whose updates are queued (a headless notebook's
`launcher.wait()`) runs them itself with `drain()`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Callable
from typing import Any


class KernelSide:
    def __init__(self) -> None:
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._thread = threading.get_ident()
        self._queue: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = collections.deque()
        self._draining = threading.RLock()  # an update may queue another: it runs in this same drain

    def call(self, update: Callable[..., Any], *args: Any) -> None:
        """Run `update(*args)` on the kernel's side: now if this is it (or there is no kernel), else queued."""
        loop = self._loop
        if loop is None or threading.get_ident() == self._thread or loop.is_closed():
            self.drain()  # what was queued before this comes first
            update(*args)
            return
        self._queue.append((update, args))
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (kernel shutting down): drop it
            loop.call_soon_threadsafe(self.drain)

    def drain(self) -> None:
        """Run the queued updates, in order (on the kernel's side: its loop, or its main thread blocked waiting)."""
        if threading.get_ident() != self._thread:
            return
        with self._draining:
            while self._queue:
                update, args = self._queue.popleft()
                update(*args)
