"""Trainer pod settings and signed results on a real API server (issue 24): the CRD admits the allow-listed
overlay and rejects what ``ctxext validate`` rejects, the upstream PyTorchJob CRD takes the pods it yields,
and a signed stage result still verifies after the API server stored it."""

from __future__ import annotations

import copy

import pytest
from kubernetes import client, config

from ctxext.api.base import GROUP, PLURAL, VERSION
from ctxext.config import OperatorConfig
from ctxext.controller.builder import build_pytorchjob
from ctxext.manifest import job_from_object
from ctxext.planner import plan_curriculum
from ctxext.results import SIGNATURE, sign, verify
from tests.unit.helpers import minimal
from tests.unit.test_trainer_pod import BAD_OVERLAYS, OVERLAY

pytestmark = pytest.mark.apiserver
NS = "team-b"


@pytest.fixture(scope="module")
def api(k8s_api):
    config.load_kube_config(config_file=k8s_api)
    return client.CustomObjectsApi()


def _fitted(name: str) -> dict:
    obj = minimal(pod=OVERLAY, resources={"gpusPerNode": 8, "extraResources": {"rdma/hca": "1"}},
                  parallelism={"sequenceParallel": 8})
    obj["metadata"].update(name=name, namespace=NS)
    return obj


def test_overlay_is_admitted_and_its_pytorchjob_too(api):
    obj = _fitted("fitted")
    created = api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, obj, field_validation="Strict")
    try:
        assert created["spec"]["pod"] == OVERLAY
        job = job_from_object(created)
        body = build_pytorchjob(job, plan_curriculum(job.spec), 1, result_key="k",
                                config=OperatorConfig(trainer_service_account="ctxext-trainer"))
        made = api.create_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs", body,
                                                   field_validation="Strict")
        assert made["spec"]["pytorchReplicaSpecs"] == body["spec"]["pytorchReplicaSpecs"]
        api.delete_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs", made["metadata"]["name"])
    finally:
        api.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "fitted")


@pytest.mark.parametrize(("spec", "field"), BAD_OVERLAYS, ids=[f for _, f in BAD_OVERLAYS])
def test_server_rejects_the_overlays_python_rejects(api, spec, field):
    obj = minimal(**copy.deepcopy(spec))
    obj["metadata"]["name"] = "bad-overlay"
    with pytest.raises(client.ApiException) as err:
        api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, obj, field_validation="Strict")
    assert err.value.status in (400, 422)
    assert field in err.value.body


def test_signed_result_verifies_after_the_api_server_stored_it(api):
    obj = _fitted("signed")
    api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, obj, field_validation="Strict")
    try:
        result = {"status": "Succeeded", "jobName": "signed-s1-a1", "reason": None, "finalLoss": 2.0,
                  "perplexity": 7.38905609893065, "learningRate": 1e-5, "ropeTheta": 3580165449.0,
                  "tokensPerSecond": 1234.5, "health": {"nonFiniteSteps": 0, "maxGradNorm": None},
                  "evaluation": {"passkeyAccuracy": {"512": 1.0, "1024": 0.97}}, "warnings": [],
                  "gates": [{"metric": "passkeyAccuracy", "passed": True, "value": 1.0}]}
        entry = {**result, SIGNATURE: sign(result, "attempt-key")}
        api.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "signed",
                                                  {"status": {"results": {"signed-s1-a1": entry}}})
        stored = api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "signed")["status"]["results"]
        assert verify(stored["signed-s1-a1"], "attempt-key", "signed-s1-a1")
        # Another trainer (another job's key) rewriting the outcome is caught.
        forged = {**stored["signed-s1-a1"], "status": "Failed"}
        assert not verify(forged, "attempt-key", "signed-s1-a1")
    finally:
        api.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "signed")


def test_identity_check_is_feature_detected_on_a_server_without_serviceaccounts(k8s_api):
    """The test API server serves no serviceaccounts: the check must say "cannot tell" (None), not "missing",
    so jobs still start there; a real cluster answers True or False (tests/unit/test_operator_observability.py)."""
    from ctxext.controller.kube import KubeApi

    with config.new_client_from_config(config_file=k8s_api) as raw:
        kube = KubeApi(client.CustomObjectsApi(raw), core=client.CoreV1Api(raw))
        assert kube.service_account_exists(NS, "ctxext-trainer") is None
