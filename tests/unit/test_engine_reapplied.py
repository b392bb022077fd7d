"""A job deleted and re-applied at once under the same name: kopf handles each UID's events on its own, so the
old job's DELETED event may come after the new job's ADDED one. The engine must not forget the new job then,
and must not judge its spec by the old one's cached checks (both start at generation 1)."""

from __future__ import annotations

import asyncio
import copy

from ctxext.controller.engine import Engine
from tests.unit.test_controller_engine import KEY, FakeApi, config, manifest


def test_the_old_jobs_late_deleted_event_does_not_forget_its_successor():
    async def scenario() -> None:
        api = FakeApi()
        eng = Engine(config(), api)  # type: ignore[arg-type]
        first = api.add_cej(manifest())
        await eng.cej_event("ADDED", first, api.index())
        assert "t-s1-a1" in api.jobs
        gone = api.current("t")
        second = copy.deepcopy(manifest())
        second["spec"]["scheduling"] = {"priorityClassName": "high"}
        body = api.add_cej(second)  # the same name, a new UID
        body["metadata"]["uid"] = api.cejs["t"]["metadata"]["uid"] = "uid-2"
        await eng.cej_event("ADDED", body, api.index())  # the new job first ...
        await eng.cej_event("DELETED", gone, api.index())  # ... then the old one's deletion
        assert KEY in eng.registry and eng.scheduler.wake_at(KEY) is not None  # still reconciled and resynced
        status = api.cejs["t"]["status"]
        degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
        assert degraded["reason"] == "NameTaken"  # t-s1-a1 is the old job's: never adopted
        eng.close()

    asyncio.run(scenario())
