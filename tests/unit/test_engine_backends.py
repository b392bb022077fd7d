"""#22: the engine runs a job on the Kubeflow API it chooses (or is told), keeps it, and fails in plain words
when the cluster serves neither; the state machine is the same for both APIs.

In memory (tests/unit/test_controller_engine.py's FakeApi with a configurable discovery answer): the choice
rules themselves are a pure table below; the real API server (both CRDs, one, or neither) is in
tests/integration/test_operator_backends.py.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from ctxext.controller.backends import observe_job
from ctxext.controller.backends.choice import API_MISSING, RUNTIME_MISSING, Choice, Problem, Served, choose
from ctxext.controller.engine import Engine
from ctxext.controller.registry import Owned
from tests.unit.test_controller_engine import KEY, FakeApi, config, manifest

BOTH = Served(pytorchjob=True, trainjob=True, runtime=True)


def test_auto_takes_pytorchjob_for_a_spec_only_it_carries_where_both_are_served():
    assert choose("Auto", "auto", BOTH, "r", trainjob_fits=False).kind == "PyTorchJob"  # type: ignore[union-attr]
    only = choose("Auto", "auto", Served(False, True, True), "r", trainjob_fits=False)
    assert isinstance(only, Choice) and only.kind == "TrainJob"  # then InvalidSpec names the field
    forced = choose("TrainJob", "auto", BOTH, "r", trainjob_fits=False)
    assert isinstance(forced, Choice) and forced.kind == "TrainJob"


@pytest.mark.parametrize(("requested", "default", "served", "expected"), [
    ("Auto", "auto", BOTH, "TrainJob"),
    ("Auto", "auto", Served(True, True, False), "PyTorchJob"),  # the runtime is missing: the other API
    ("Auto", "auto", Served(True, True, None), "PyTorchJob"),  # cannot read the runtime: not assumed
    ("Auto", "auto", Served(True, False, None), "PyTorchJob"),
    ("Auto", "auto", Served(False, True, True), "TrainJob"),
    ("Auto", "auto", Served(False, True, None), "TrainJob"),  # TrainJob is all there is: try it
    ("Auto", "auto", Served(False, True, False), RUNTIME_MISSING),
    ("Auto", "auto", Served(False, False, None), API_MISSING),
    ("Auto", "pytorchjob", BOTH, "PyTorchJob"),
    ("Auto", "trainjob", Served(True, True, False), RUNTIME_MISSING),
    ("Auto", "pytorchjob", Served(False, True, True), API_MISSING),
    ("TrainJob", "pytorchjob", BOTH, "TrainJob"),  # the job's own spec.backend wins
    ("PyTorchJob", "auto", BOTH, "PyTorchJob"),
    ("TrainJob", "auto", Served(True, False, None), API_MISSING),
])
def test_choice_table(requested, default, served, expected):
    answer = choose(requested, default, served, "torch-distributed")
    got = answer.kind if isinstance(answer, Choice) else answer.reason
    assert got == expected
    if isinstance(answer, Problem):  # the message says what to install, and that the job starts after
        crd = "trainjobs.trainer.kubeflow.org" if "TrainJob" in requested or default == "trainjob" else \
            "pytorchjobs.kubeflow.org" if requested == "PyTorchJob" or default == "pytorchjob" else None
        assert "starts once" in answer.message
        if answer.reason == API_MISSING:
            assert (crd or "pytorchjobs.kubeflow.org") in answer.message
            assert crd is not None or "trainjobs.trainer.kubeflow.org" in answer.message
        else:
            assert "ClusterTrainingRuntime torch-distributed" in answer.message


class Cluster(FakeApi):
    """FakeApi whose discovery answer a test sets, and whose index holds both kinds."""

    def __init__(self, served: Served) -> None:
        super().__init__()
        self.answer = served

    def served(self, runtime: str) -> Served:
        self.calls.append("served")
        return self.answer

    def index(self) -> tuple[dict[tuple[str, str], list[Owned]], dict[tuple[str, str], list[Owned]]]:
        by_kind: dict[str, dict[tuple[str, str], list[Owned]]] = {"PyTorchJob": {}, "TrainJob": {}}
        for j in self.jobs.values():
            by_kind[j["kind"]].setdefault(("ns", j["metadata"]["labels"]["ctxext.dev/job"]), []).append(
                Owned(int(j["metadata"]["resourceVersion"]), observe_job(j)))
        return by_kind["PyTorchJob"], by_kind["TrainJob"]

    def set_suspend(self, namespace: str, name: str, suspend: bool, kind: str = "PyTorchJob") -> dict[str, Any]:
        assert kind == self.jobs[name]["kind"], "suspended through the wrong API"
        self.calls.append("suspend")
        spec = self.jobs[name]["spec"]
        if kind == "TrainJob":
            spec["suspend"] = suspend
        else:
            spec.setdefault("runPolicy", {})["suspend"] = suspend
        self.jobs[name]["metadata"]["resourceVersion"] = str(next(self.rv))
        return copy.deepcopy(self.jobs[name])


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_both_served_creates_a_trainjob_records_it_and_suspends_it_through_its_own_api():
    async def scenario() -> Cluster:
        api = Cluster(BOTH)
        eng = Engine(config(), api)  # type: ignore[arg-type]
        await eng.cej_event("ADDED", api.add_cej(manifest()), api.index())
        job = api.jobs["t-s1-a1"]
        assert job["kind"] == "TrainJob" and job["spec"]["runtimeRef"]["name"] == "torch-distributed"
        status = api.cejs["t"]["status"]
        assert status["backend"] == "TrainJob" and "TrainJob t-s1-a1" in status["stages"][0]["message"]
        api.cejs["t"]["spec"]["suspend"] = True
        api.cejs["t"]["metadata"].update(generation=2, resourceVersion=str(next(api.rv)))
        await eng.cej_event("MODIFIED", api.current("t"), api.index())
        assert api.jobs["t-s1-a1"]["spec"]["suspend"] is True and "runPolicy" not in api.jobs["t-s1-a1"]["spec"]
        eng.close()
        return api

    api = run(scenario())
    assert api.calls.count("served") == 1 and api.calls.count("suspend") == 1


def test_a_job_keeps_the_kind_it_owns_and_status_records_even_when_the_cluster_changes():
    async def scenario() -> None:
        api = Cluster(Served(pytorchjob=True, trainjob=False, runtime=None))
        eng = Engine(config(), api)  # type: ignore[arg-type]
        await eng.cej_event("ADDED", api.add_cej(manifest()), api.index())
        assert api.jobs["t-s1-a1"]["kind"] == "PyTorchJob"
        api.answer = BOTH  # Kubeflow Trainer installed mid-run: stage 2 still runs as a PyTorchJob
        eng.close()
        fresh = Engine(config(), api)  # type: ignore[arg-type]  # an operator restart forgets everything kept
        await fresh.cej_event(None, api.current("t"), api.index())
        api.set_conditions("t-s1-a1", "Succeeded")
        api.report_result("t", "t-s1-a1")
        await fresh.reconcile(KEY, fresh=True)
        assert api.jobs["t-s2-a1"]["kind"] == "PyTorchJob" and api.cejs["t"]["status"]["backend"] == "PyTorchJob"
        fresh.close()

    run(scenario())


def test_a_cluster_serving_neither_api_fails_the_job_in_plain_words_and_it_starts_once_one_is_served():
    async def scenario() -> Cluster:
        api = Cluster(Served(pytorchjob=False, trainjob=False, runtime=None))
        eng = Engine(config(), api)  # type: ignore[arg-type]
        await eng.cej_event("ADDED", api.add_cej(manifest()), api.index())
        status = api.cejs["t"]["status"]
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert status["phase"] == "Failed" and failed["reason"] == API_MISSING and not api.jobs
        assert "pytorchjobs.kubeflow.org" in failed["message"] and "trainjobs.trainer.kubeflow.org" in failed["message"]
        assert eng.scheduler.wake_at(KEY) is not None  # still resynced, unlike a job that failed for good
        api.answer = Served(pytorchjob=False, trainjob=True, runtime=True)
        eng.backends._served = None  # the 30 s discovery cache has expired by the resync
        await eng.reconcile(KEY, fresh=True)
        assert api.jobs["t-s1-a1"]["kind"] == "TrainJob" and api.cejs["t"]["status"]["phase"] == "Running"
        eng.close()
        return api

    run(scenario())


def test_what_a_trainjob_cannot_carry_runs_as_a_pytorchjob_or_is_invalid_spec_before_anything_is_created():
    async def scenario() -> Cluster:
        api = Cluster(BOTH)
        eng = Engine(config(), api)  # type: ignore[arg-type]
        body = manifest()
        body["spec"]["scheduling"] = {"priorityClassName": "high"}
        await eng.cej_event("ADDED", api.add_cej(body), api.index())  # Auto, both served: the API that carries it
        assert api.jobs["t-s1-a1"]["kind"] == "PyTorchJob"
        assert api.jobs["t-s1-a1"]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"][
            "priorityClassName"] == "high"
        for name, served, backend in (("u", BOTH, "TrainJob"), ("v", Served(False, True, True), "Auto")):
            api.answer = served
            eng.backends._served = None
            body["metadata"]["name"], body["spec"]["backend"] = name, backend
            await eng.cej_event("ADDED", api.add_cej(body), api.index())
            status = api.cejs[name]["status"]
            invalid = next(c for c in status["conditions"] if c["type"] == "InvalidSpec")
            assert status["phase"] == "Failed" and invalid["status"] == "True", name
            assert "spec.scheduling.priorityClassName" in invalid["message"] and "TrainJob" in invalid["message"]
            assert not [j for j in api.jobs if j.startswith(f"{name}-")]
        eng.close()
        return api

    run(scenario())


def test_a_choice_nothing_ran_on_is_not_kept():
    """A job refused on the API chosen from a stale discovery answer (the PyTorchJob CRD installed a moment ago)
    is chosen for again once the answer is fresh: status.backend is recorded only with the first job."""
    async def scenario() -> Cluster:
        api = Cluster(Served(pytorchjob=False, trainjob=True, runtime=True))
        eng = Engine(config(), api)  # type: ignore[arg-type]
        body = manifest()
        body["spec"]["scheduling"] = {"priorityClassName": "high"}
        await eng.cej_event("ADDED", api.add_cej(body), api.index())
        status = api.cejs["t"]["status"]
        assert status["phase"] == "Failed" and "backend" not in status and not api.jobs
        api.answer = BOTH
        eng.backends._served = None
        await eng.reconcile(KEY, fresh=True)  # the resync of a job that failed before it started
        assert api.jobs["t-s1-a1"]["kind"] == "PyTorchJob" and api.cejs["t"]["status"]["backend"] == "PyTorchJob"
        assert api.cejs["t"]["status"]["phase"] == "Running"
        eng.close()
        return api

    run(scenario())
