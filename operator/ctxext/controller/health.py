"""What ``/healthz`` (kopf's liveness endpoint) answers: is the operator still in touch with the API server?

kopf's endpoint answers 200 as long as its event loop runs, even when every watch and request has failed
for an hour (expired credentials, an API server the pod cannot reach). Our probe handler adds the one
thing a restart can mend: contact with the API server, through the same client, credentials and route
the watches use. Each probe (kopf caches its answer for 10 s) starts a cheap request when the last success
is older than ``interval`` — a ``list`` of ContextExtensionJobs with ``limit=1``, which the operator's RBAC
allows in every mode — waits for it at most ``wait`` seconds (less than the kubelet's probe timeout; a slow
request goes on in the background), and answers: healthy while the last success is at most
``stale_seconds`` old. So a slow API server never makes the probe itself time out, and a short outage
restarts nothing.

>>> clock = iter([0.0, 100.0, 200.0]).__next__
>>> h = ApiContact(lambda: None, stale_seconds=120, clock=clock)  # t=0: start-up counts as contact
>>> h.verdict()  # t=100
(True, {'apiContactSecondsAgo': 100.0})
>>> h.last_error = "ConnectionRefusedError: [Errno 111] Connection refused"
>>> h.verdict()  # t=200
(False, {'apiContactSecondsAgo': 200.0, 'lastError': 'ConnectionRefusedError: [Errno 111] Connection refused'})
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


class ApiContact:
    """Tracks the last successful API request of the probe's own ``check`` (a blocking call)."""

    def __init__(self, check: Callable[[], Any], stale_seconds: float, *, interval: float = 10.0,
                 wait: float = 3.0, clock: Callable[[], float] = time.monotonic):
        self.check, self.stale, self.interval, self.wait, self.clock = check, stale_seconds, interval, wait, clock
        self.last_ok = clock()  # start-up just talked to the API server (kopf and our CRD check)
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def verdict(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, what to show in /healthz)."""
        age = round(self.clock() - self.last_ok, 1)
        report: dict[str, Any] = {"apiContactSecondsAgo": age}
        if self.last_error:
            report["lastError"] = self.last_error
        return age <= self.stale, report

    async def _run_check(self) -> None:
        try:
            await asyncio.wait_for(asyncio.to_thread(self.check), timeout=max(self.interval, 1.0))
        except Exception as exc:  # any failure is "no contact": reported in /healthz, not raised
            self.last_error = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        else:
            self.last_ok, self.last_error = self.clock(), None

    async def probe(self) -> tuple[bool, dict[str, Any]]:
        """Start a check when one is due, wait for it at most ``wait`` seconds (it goes on in the background
        after that), and answer from what is known then."""
        if (self._task is None or self._task.done()) and self.clock() - self.last_ok >= self.interval:
            self._task = asyncio.create_task(self._run_check())
        if self._task is not None and not self._task.done():
            await asyncio.wait({self._task}, timeout=self.wait)  # asyncio.wait cancels nothing on timeout
        return self.verdict()
