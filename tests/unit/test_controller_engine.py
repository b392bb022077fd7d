"""The engine's I/O orchestration against an in-memory API (no list call exists there) and a dict index.

The events are fed by hand in the order kopf would deliver them; the assertions count passes and
API calls, which is what the controller's scale depends on.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from typing import Any

import pytest
from kubernetes import client

from ctxext.config import OperatorConfig
from ctxext.controller import engine as engine_mod
from ctxext.controller.backends.choice import Served
from ctxext.controller.builder import ANNOTATION_RESULT_KEY
from ctxext.controller.engine import Engine
from ctxext.controller.observe import observe
from ctxext.controller.registry import Owned
from ctxext.results import sign
from tests.unit.helpers import minimal

KEY = "ns/t"


class FakeApi:
    """What KubeApi does, in memory: CEJs and PyTorchJobs with growing resourceVersions."""

    def __init__(self) -> None:
        self.rv = itertools.count(100)
        self.cejs: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.fail_status_patch = False

    def add_cej(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        obj["metadata"].update(namespace="ns", uid="uid-t", generation=1, resourceVersion=str(next(self.rv)))
        self.cejs[obj["metadata"]["name"]] = obj
        return copy.deepcopy(obj)

    def report_result(self, name: str, job: str) -> dict[str, Any]:
        """What trainer rank 0 does before its PyTorchJob ends: patch status.results[job] (no engine call)."""
        status = self.cejs[name].setdefault("status", {})
        entry: dict[str, Any] = {"status": "Succeeded", "finalLoss": 1.5}
        key = self.jobs[job]["metadata"].get("annotations", {}).get(ANNOTATION_RESULT_KEY)
        if key:  # signed with the attempt's key, as the trainer does (ctxext.results.sign)
            entry["signature"] = sign(entry, key)
        status.setdefault("results", {})[job] = entry
        self.cejs[name]["metadata"]["resourceVersion"] = str(next(self.rv))
        return copy.deepcopy(self.cejs[name])

    def current(self, name: str) -> dict[str, Any]:
        """The CEJ as a watch event would carry it (not an API call of the engine's)."""
        return copy.deepcopy(self.cejs[name])

    def index(self) -> tuple[dict[tuple[str, str], list[Owned]]]:
        """kopf's indexes of owned training jobs as the handlers pass them (all PyTorchJobs here: one)."""
        out: dict[tuple[str, str], list[Owned]] = {}
        for j in self.jobs.values():
            out.setdefault(("ns", j["metadata"]["labels"]["ctxext.dev/job"]), []).append(
                Owned(int(j["metadata"]["resourceVersion"]), observe(j)))
        return (out,)

    def set_conditions(self, name: str, *types: str) -> dict[str, Any]:
        job = self.jobs[name]
        job["status"] = {"conditions": [{"type": t, "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
                                        for t in types]}
        job["metadata"]["resourceVersion"] = str(next(self.rv))
        return copy.deepcopy(job)

    # -- the KubeApi interface ------------------------------------------------------------------
    def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append("read")
        return copy.deepcopy(self.cejs.get(name))

    def list_jobs(self, namespace: str, name: str) -> list[dict[str, Any]]:
        self.calls.append("list")
        return [copy.deepcopy(j) for j in self.jobs.values() if j["metadata"]["labels"]["ctxext.dev/job"] == name]

    def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("create")
        name = body["metadata"]["name"]
        if name not in self.jobs:
            self.jobs[name] = {**copy.deepcopy(body), "status": {}}
            self.jobs[name]["metadata"]["resourceVersion"] = str(next(self.rv))
        return copy.deepcopy(self.jobs[name])

    def served(self, runtime: str) -> Served:
        """A cluster that serves PyTorchJob only (discovery: one call, shared by every job for 30 s)."""
        self.calls.append("served")
        return Served(pytorchjob=True, trainjob=False, runtime=None)

    def set_suspend(self, namespace: str, name: str, suspend: bool, kind: str = "PyTorchJob") -> dict[str, Any]:
        self.calls.append("suspend")
        self.jobs[name]["spec"].setdefault("runPolicy", {})["suspend"] = suspend
        self.jobs[name]["metadata"]["resourceVersion"] = str(next(self.rv))
        return copy.deepcopy(self.jobs[name])

    def patch_status(self, namespace: str, name: str, patch: dict[str, Any], *, uid: str | None = None,
                     current: dict[str, Any] | None = None, resource_version: str | None = None) -> dict[str, Any]:
        self.calls.append("status")
        if self.fail_status_patch:
            raise client.ApiException(status=500, reason="etcd unavailable")
        obj = self.cejs[name]
        if uid != obj["metadata"]["uid"]:  # the engine patches only the job it read (KubeApi: a JSON patch test)
            raise client.ApiException(status=422, reason="the test of /metadata/uid failed")
        obj["status"] = {**(obj.get("status") or {}), **patch}
        obj["metadata"]["resourceVersion"] = str(next(self.rv))
        return copy.deepcopy(obj)


@pytest.fixture
def passes(monkeypatch):
    counter = {"n": 0}
    real = engine_mod.reconcile

    def counted(inputs):
        counter["n"] += 1
        return real(inputs)

    monkeypatch.setattr(engine_mod, "reconcile", counted)
    return counter


def config(**kw: Any) -> OperatorConfig:
    return OperatorConfig(post_events=False, resync_seconds=600, status_refresh_seconds=600,
                          result_grace_seconds=0, **kw)


def manifest() -> dict[str, Any]:
    return minimal(curriculum={"stages": [{"seqLen": 16384}, {"seqLen": 65536}]})


def test_two_stages_take_five_passes_and_deletion_frees_everything(passes):
    async def scenario():
        api = FakeApi()
        eng = Engine(config(), api)  # type: ignore[arg-type]
        await eng.cej_event("ADDED", api.add_cej(manifest()), api.index())
        assert sorted(api.jobs) == ["t-s1-a1"] and passes["n"] == 1  # created from the create event
        await eng.job_event("ADDED", "ns", "t-s1-a1", "t", copy.deepcopy(api.jobs["t-s1-a1"]), api.index())
        await eng.cej_event("MODIFIED", api.current("t"), api.index())  # echo of our status patch
        for conds in (("Created",), ("Created", "Running")):  # shown later, decide nothing
            await eng.job_event("MODIFIED", "ns", "t-s1-a1", "t", api.set_conditions("t-s1-a1", *conds), api.index())
        assert passes["n"] == 1 and eng.scheduler.wake_at(KEY) is not None
        await eng.cej_event("MODIFIED", api.report_result("t", "t-s1-a1"), api.index())  # a pass that waits on
        done = api.set_conditions("t-s1-a1", "Created", "Running", "Succeeded")
        await eng.job_event("MODIFIED", "ns", "t-s1-a1", "t", done, api.index())
        assert sorted(api.jobs) == ["t-s1-a1", "t-s2-a1"] and passes["n"] == 3
        await eng.job_event("ADDED", "ns", "t-s2-a1", "t", copy.deepcopy(api.jobs["t-s2-a1"]), api.index())
        await eng.cej_event("MODIFIED", api.report_result("t", "t-s2-a1"), api.index())
        done = api.set_conditions("t-s2-a1", "Created", "Running", "Succeeded")
        await eng.job_event("MODIFIED", "ns", "t-s2-a1", "t", done, api.index())
        assert passes["n"] == 5 and api.cejs["t"]["status"]["phase"] == "Succeeded"
        # No read, no list; one discovery call before the first attempt, none once status.backend records it.
        assert api.calls.count("create") == 2 and api.calls.count("served") == 1
        assert set(api.calls) == {"served", "create", "status"} and api.calls[0] == "served"
        assert api.cejs["t"]["status"]["backend"] == "PyTorchJob"
        await eng.cej_event("DELETED", api.current("t"), api.index())
        left = (len(eng.registry), len(eng.scheduler), dict(eng.phases._phases))
        eng.close()
        return left

    assert asyncio.run(scenario()) == (0, 0, {})


def test_a_restarted_engine_adopts_the_job_it_created_before_the_crash(passes):
    async def scenario():
        api = FakeApi()
        first = Engine(config(), api)  # type: ignore[arg-type]
        api.fail_status_patch = True  # "killed" between the create and the status patch
        await first.cej_event("ADDED", api.add_cej(manifest()), api.index())
        assert sorted(api.jobs) == ["t-s1-a1"] and "stages" not in (api.cejs["t"].get("status") or {})
        assert first.scheduler.wake_at(KEY) is not None  # it would retry in ERROR_RETRY_SECONDS
        first.close()
        api.fail_status_patch = False
        second = Engine(config(), api)  # type: ignore[arg-type]
        await second.cej_event(None, api.current("t"), api.index())  # kopf's listing after the restart
        second.close()
        return api

    api = asyncio.run(scenario())
    assert sorted(api.jobs) == ["t-s1-a1"] and api.calls.count("create") == 1
    stage = api.cejs["t"]["status"]["stages"][0]
    assert (stage["attempts"], stage["jobName"], stage["phase"]) == (1, "t-s1-a1", "Running")


def test_suspend_patches_the_job_once_and_its_echo_needs_no_pass(passes):
    async def scenario():
        api = FakeApi()
        eng = Engine(config(), api)  # type: ignore[arg-type]
        await eng.cej_event("ADDED", api.add_cej(manifest()), api.index())
        api.cejs["t"]["spec"]["suspend"] = True
        api.cejs["t"]["metadata"].update(generation=2, resourceVersion=str(next(api.rv)))
        await eng.cej_event("MODIFIED", api.current("t"), api.index())
        echo = copy.deepcopy(api.jobs["t-s1-a1"])
        await eng.job_event("MODIFIED", "ns", "t-s1-a1", "t", echo, api.index())
        eng.close()
        return api

    api = asyncio.run(scenario())
    assert api.jobs["t-s1-a1"]["spec"]["runPolicy"]["suspend"] is True and passes["n"] == 2
    assert api.calls.count("suspend") == 1 and api.cejs["t"]["status"]["phase"] == "Suspended"


def test_a_job_deleted_before_the_watch_showed_it_is_a_failed_attempt_not_recreated(passes):
    async def scenario():
        api = FakeApi()
        eng = Engine(config(), api)  # type: ignore[arg-type]
        await eng.cej_event("ADDED", api.add_cej(manifest()), api.index())
        gone = api.jobs.pop("t-s1-a1")  # deleted (by hand, or its namespace's quota controller) at once
        await eng.job_event("DELETED", "ns", "t-s1-a1", "t", gone, api.index())
        eng.close()
        return api

    api = asyncio.run(scenario())
    assert sorted(api.jobs) == [] and api.calls.count("create") == 1 and passes["n"] == 2
    stage = api.cejs["t"]["status"]["stages"][0]
    assert stage["nextAttemptTime"] and "PyTorchJob t-s1-a1 was deleted before it reported a result" in stage["message"]


def test_the_resync_lists_the_jobs_and_sees_one_gone_that_a_stale_index_still_shows(passes):
    async def scenario():
        api = FakeApi()
        eng = Engine(config(), api)  # type: ignore[arg-type]
        await eng.cej_event("ADDED", api.add_cej(manifest()), api.index())
        stale = api.index()  # what kopf's index holds if the job's DELETED event was lost with a watch
        api.jobs.clear()
        eng.indexes = stale
        await eng.reconcile(KEY)  # an event-driven pass believes the index
        assert api.calls.count("create") == 1
        await eng.reconcile(KEY, fresh=True)  # the resync does not
        eng.close()
        return api

    api = asyncio.run(scenario())
    assert sorted(api.jobs) == [] and api.calls.count("create") == 1
    assert "was deleted before it reported a result" in api.cejs["t"]["status"]["stages"][0]["message"]
    assert api.calls.count("list") == 1 and api.calls.index("read") < api.calls.index("list")


def test_a_404_on_a_pytorchjob_call_does_not_make_the_engine_forget_the_job(passes):
    """#27 item 8: the PyTorchJob is deleted between the index and the suspend patch."""
    async def scenario():
        api = FakeApi()
        eng = Engine(config(), api)  # type: ignore[arg-type]
        await eng.cej_event("ADDED", api.add_cej(manifest()), api.index())
        stale = api.index()
        api.jobs.clear()

        def gone(namespace: str, name: str, suspend: bool) -> dict[str, Any]:
            raise client.ApiException(status=404, reason="Not Found")

        api.set_suspend = gone  # type: ignore[method-assign]
        api.cejs["t"]["spec"]["suspend"] = True
        api.cejs["t"]["metadata"].update(generation=2, resourceVersion=str(next(api.rv)))
        await eng.cej_event("MODIFIED", api.current("t"), stale)
        kept = (KEY in eng.registry, eng.scheduler.wake_at(KEY) is not None)
        await eng.reconcile(KEY, fresh=True)  # the retry re-reads: the CEJ exists, its job is gone
        eng.close()
        return kept, api

    kept, api = asyncio.run(scenario())
    assert kept == (True, True)
    assert "was deleted before it reported a result" in api.cejs["t"]["status"]["stages"][0]["message"]


def test_a_finished_job_costs_no_periodic_read_or_list(passes):
    async def scenario():
        api = FakeApi()
        eng = Engine(config(), api)  # type: ignore[arg-type]
        await eng.cej_event("ADDED", api.add_cej(minimal(curriculum={"stages": [{"seqLen": 65536}]})), api.index())
        running = eng.scheduler.wake_at(KEY)
        await eng.cej_event("MODIFIED", api.report_result("t", "t-s1-a1"), api.index())  # result before the job ends
        done = api.set_conditions("t-s1-a1", "Created", "Running", "Succeeded")
        await eng.job_event("MODIFIED", "ns", "t-s1-a1", "t", done, api.index())
        finished = (api.cejs["t"]["status"]["phase"], eng.scheduler.wake_at(KEY))
        eng.close()
        return running, finished

    running, finished = asyncio.run(scenario())
    assert running is not None and finished == ("Succeeded", None)


def test_a_409_on_a_job_owned_by_someone_else_is_not_adopted(passes):
    """#27 item 4: a same-named predecessor's job (or one from `ctxext render`) holds the name."""
    async def scenario():
        api = FakeApi()
        eng = Engine(config(), api)  # type: ignore[arg-type]
        old = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "spec": {"runPolicy": {}},
               "metadata": {"name": "t-s1-a1", "resourceVersion": "1", "ownerReferences": [
                   {"kind": "ContextExtensionJob", "uid": "uid-of-the-deleted-t", "controller": True}],
                   "labels": {"ctxext.dev/job": "t", "ctxext.dev/stage": "1", "ctxext.dev/attempt": "1"}},
               "status": {"conditions": [{"type": "Succeeded", "status": "True"}]}}
        body = api.add_cej(manifest())
        api.jobs["t-s1-a1"] = old  # the index has not shown it yet: the create answers 409
        await eng.cej_event("ADDED", body, {})
        first = (api.cejs["t"].get("status"), eng.scheduler.wake_at(KEY) is not None)
        await eng.reconcile(KEY, fresh=True)  # the retry lists it and leaves it alone
        eng.close()
        return first, api

    first, api = asyncio.run(scenario())
    assert first == (None, True)  # no status written from a job that is not ours
    status = api.cejs["t"]["status"]
    assert status["stages"][0]["phase"] == "Pending" and status["stages"][0]["attempts"] == 0
    assert "belongs to another ContextExtensionJob" in status["stages"][0]["message"]
    assert next(c for c in status["conditions"] if c["type"] == "Degraded")["reason"] == "NameTaken"
