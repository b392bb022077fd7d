"""Issue 24 on the operator side: a missing trainer identity fails the job with a condition that names it
and the fix (and lifts once mended), results another trainer wrote are ignored, and the operator's own
series (errors, attempts by state, build info)."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from prometheus_client import REGISTRY

from ctxext import __version__
from ctxext.controller import metrics
from ctxext.controller.builder import ANNOTATION_RESULT_KEY
from ctxext.controller.engine import Engine
from ctxext.controller.observe import format_time
from ctxext.results import SIGNATURE, sign
from tests.unit.test_controller_engine import KEY, FakeApi, config, manifest


class IdentityApi(FakeApi):
    """FakeApi plus the ServiceAccount read: True, False (404 naming serviceaccounts) or None (cannot tell)."""

    def __init__(self, exists: bool | None) -> None:
        super().__init__()
        self.exists = exists

    def service_account_exists(self, namespace: str, name: str) -> bool | None:
        self.calls.append(f"sa {namespace}/{name}")
        return self.exists


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == kind)


def test_missing_trainer_identity_fails_fast_naming_it_and_the_fix_then_lifts():
    async def scenario() -> tuple[IdentityApi, dict[str, Any], dict[str, Any]]:
        api = IdentityApi(False)
        eng = Engine(config(trainer_service_account="ctxext-trainer"), api)  # type: ignore[arg-type]
        await eng.cej_event("ADDED", api.add_cej(manifest()), api.index())
        failed = copy.deepcopy(api.cejs["t"])
        assert not api.jobs  # no PyTorchJob whose pods Kubernetes would refuse
        api.exists = True  # the admin added the namespace to trainer.namespaces
        await eng.reconcile(KEY, fresh=True)  # the resync (or any event) after that
        eng.close()
        return api, failed, api.cejs["t"]

    api, failed, mended = asyncio.run(scenario())
    assert failed["status"]["phase"] == "Failed"
    cond = _condition(failed, "Failed")
    assert cond["status"] == "True" and cond["reason"] == "TrainerIdentityMissing"
    assert "ServiceAccount ctxext-trainer does not exist in namespace ns" in cond["message"]
    assert "trainer.namespaces" in cond["message"] and "helm upgrade" in cond["message"]
    assert _condition(failed, "Ready")["reason"] == "TrainerIdentityMissing"
    assert sorted(api.jobs) == ["t-s1-a1"] and mended["status"]["phase"] == "Running"
    assert _condition(mended, "Failed")["status"] == "False"


def test_identity_check_steps_aside_where_it_cannot_tell():
    async def scenario() -> IdentityApi:
        api = IdentityApi(None)  # no rights on serviceaccounts, or a server without them
        eng = Engine(config(trainer_service_account="ctxext-trainer"), api)  # type: ignore[arg-type]
        await eng.cej_event("ADDED", api.add_cej(manifest()), api.index())
        await eng.reconcile(KEY, fresh=True)
        eng.close()
        return api

    api = asyncio.run(scenario())
    assert sorted(api.jobs) == ["t-s1-a1"] and api.cejs["t"]["status"]["phase"] == "Running"
    assert api.calls.count("sa ns/ctxext-trainer") == 1  # asked once, not on every pass


def test_a_result_written_by_another_trainer_does_not_advance_the_stage():
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        api = FakeApi()
        eng = Engine(config(), api)  # type: ignore[arg-type]
        eng.config = eng.config.model_copy(update={"result_grace_seconds": 600})
        await eng.cej_event("ADDED", api.add_cej(manifest()), api.index())
        key = api.jobs["t-s1-a1"]["metadata"]["annotations"][ANNOTATION_RESULT_KEY]
        assert len(key) == 32  # a fresh secret per attempt
        api.set_conditions("t-s1-a1", "Created", "Running", "Succeeded")
        for cond in api.jobs["t-s1-a1"]["status"]["conditions"]:  # it finished just now: the grace holds
            cond["lastTransitionTime"] = format_time(datetime.now(UTC))
        forged = {"status": "Succeeded", "jobName": "t-s1-a1", "stepsDone": 10}
        forged[SIGNATURE] = sign(forged, "a key of another job")
        api.cejs["t"]["status"]["results"] = {"t-s1-a1": forged}
        api.cejs["t"]["metadata"]["resourceVersion"] = str(next(api.rv))
        await eng.reconcile(KEY, fresh=True)
        before = copy.deepcopy(api.cejs["t"]["status"])
        genuine = {**forged, SIGNATURE: sign(forged, key)}
        api.cejs["t"]["status"]["results"] = {"t-s1-a1": genuine}
        api.cejs["t"]["metadata"]["resourceVersion"] = str(next(api.rv))
        await eng.reconcile(KEY, fresh=True)
        eng.close()
        return before, api.cejs["t"]["status"]

    before, after = asyncio.run(scenario())
    assert before["stages"][0]["phase"] == "Running"
    assert "waiting for its stage result" in before["stages"][0]["message"]
    assert after["stages"][0]["phase"] == "Succeeded" and after["stages"][1]["phase"] == "Running"


def _sample(name: str, labels: dict[str, str] | None = None) -> float | None:
    return REGISTRY.get_sample_value(name, labels or {})


def test_operator_exports_errors_attempts_and_build_info():
    assert _sample("ctxext_build_info", {"version": __version__, "python_version": __import__("platform")
                                         .python_version()}) == 1.0
    errors = _sample("ctxext_reconcile_errors_total") or 0.0

    async def scenario() -> None:
        api = FakeApi()
        eng = Engine(config(), api)  # type: ignore[arg-type]
        await eng.cej_event("ADDED", api.add_cej(manifest()), api.index())
        assert eng.attempts.counts["Pending"] == 1  # created, no condition yet
        api.set_conditions("t-s1-a1", "Created", "Running")
        await eng.reconcile(KEY, fresh=True)
        assert eng.attempts.counts["Running"] == 1 and eng.attempts.counts["Pending"] == 0
        assert _sample("ctxext_stage_attempts", {"state": "Running"}) >= 1  # type: ignore[operator]
        def unavailable(namespace: str, name: str) -> None:
            raise client.ApiException(status=503, reason="etcd unavailable")

        api.read = unavailable  # type: ignore[method-assign]
        await eng._pass(KEY, True)  # an API error: counted, retried later
        eng.forget(KEY)
        assert eng.attempts.counts["Running"] == 0
        eng.close()

    asyncio.run(scenario())
    assert _sample("ctxext_reconcile_errors_total") == errors + 1
    assert set(metrics.ATTEMPT_STATES) == {"Pending", "Created", "Running", "Restarting", "Suspended"}
