"""When passes run: one at a time per job, coalesced, and woken up at the job's next deadline.

:class:`Scheduler` serialises and coalesces the passes of each ContextExtensionJob on the event
loop: a request while a pass of the same job runs only marks the job *dirty*, and exactly one more
pass follows (it reads the newest state, so it covers every request in between). Ten events during
one pass cost one extra pass, not ten.

Each job also has at most one *wake-up* (an event-loop timer). A pass cancels it when it starts
(it takes along whatever the wake-up was for) and the controller arms the next one when it ends:
the next deadline the pass named (a retry's backoff, the grace period for a stage result), a
coalesced status refresh, an error retry, else the resync interval. The resync and error retries
run a *fresh* pass (the caller re-reads the job from the API server), which is what keeps the
controller level-triggered: whatever a watch lost is found at the next resync. :meth:`forget` cancels the
wake-up and drops the job's entries, so a deleted job leaves nothing behind.

>>> import asyncio
>>> async def demo():
...     ran = []
...     async def run(key, fresh):
...         ran.append((key, fresh)); await asyncio.sleep(0)
...     s = Scheduler(run)
...     await asyncio.gather(s.request("ns/a"), s.request("ns/a"), s.request("ns/a"))
...     s.wake("ns/a", 0.01, fresh=True); await asyncio.sleep(0.05)
...     return ran, len(s)
>>> asyncio.run(demo())
([('ns/a', False), ('ns/a', False), ('ns/a', True)], 0)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("ctxext.controller")
RunPass = Callable[[str, bool], Awaitable[None]]


class Scheduler:
    """Per-job serialisation, coalescing and wake-ups; see the module docstring."""

    def __init__(self, run: RunPass):
        self._run = run
        self._running: set[str] = set()
        self._dirty: set[str] = set()
        self._wakes: dict[str, tuple[float, asyncio.TimerHandle]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        """Jobs with something scheduled or running (for tests: 0 once everything is done and forgotten)."""
        return len(self._running | self._dirty | set(self._wakes))

    def running(self, key: str) -> bool:
        return key in self._running

    async def request(self, key: str, fresh: bool = False) -> None:
        """Run a pass over ``key`` now, or once more after the one running (then return at once)."""
        if key in self._running:
            self._dirty.add(key)
            return
        self._running.add(key)
        try:
            while True:
                self._dirty.discard(key)
                self._cancel(key)  # the pass takes along whatever the wake-up was for; it re-arms one
                await self._run(key, fresh)
                fresh = False
                if key not in self._dirty:
                    break
        finally:
            self._running.discard(key)

    def wake(self, key: str, delay: float, *, fresh: bool = True) -> None:
        """Run a pass over ``key`` in ``delay`` seconds (``fresh``: re-reading the job); the earliest wins."""
        loop = asyncio.get_running_loop()
        at = loop.time() + max(0.0, delay)
        current = self._wakes.get(key)
        if current is not None:
            if current[0] <= at:
                return
            current[1].cancel()
        self._wakes[key] = (at, loop.call_at(at, self._fire, key, fresh))

    def wake_at(self, key: str) -> float | None:
        """Loop time of the job's wake-up, if one is set."""
        current = self._wakes.get(key)
        return current[0] if current else None

    def _fire(self, key: str, fresh: bool) -> None:
        self._wakes.pop(key, None)
        task = asyncio.ensure_future(self.request(key, fresh=fresh))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cancel(self, key: str) -> None:
        current = self._wakes.pop(key, None)
        if current is not None:
            current[1].cancel()

    def forget(self, key: str) -> None:
        """Cancel the job's wake-up and drop its entries (a running pass finishes on its own)."""
        self._cancel(key)
        self._dirty.discard(key)

    def close(self) -> None:
        for _, handle in self._wakes.values():
            handle.cancel()
        self._wakes.clear()
