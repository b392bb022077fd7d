"""Trainer pods on real GPU clusters (issue 24): identity per replica, signed results, named metrics ports,
and the allow-listed pod overlay (pull secrets, capabilities, extended resources, labels, annotations)."""

from __future__ import annotations

import copy

import pytest

from ctxext.config import OperatorConfig
from ctxext.controller.builder import ANNOTATION_RESULT_KEY, RUN_AS_USER
from ctxext.controller.observe import observe
from ctxext.errors import SpecError
from ctxext.manifest import job_from_object
from ctxext.results import SIGNATURE, sign, trusted_results, verify
from ctxext.stage_config import ENV_VAR, load_stage_config
from tests.unit.helpers import minimal
from tests.unit.test_pytorchjob_builder import build, container, gpu_job

OVERLAY = {"imagePullSecrets": ["nvcr", "team-registry"], "capabilities": ["IPC_LOCK"],
           "runtimeClassName": "nvidia", "labels": {"team": "llm"},
           "annotations": {"k8s.v1.cni.cncf.io/networks": "ib-sriov-0,ib-sriov-1"}}


def pod(body, replica="Master"):
    return body["spec"]["pytorchReplicaSpecs"][replica]["template"]


def test_trainer_pods_run_as_the_image_user():
    spec = pod(build(gpu_job()))["spec"]["securityContext"]
    assert spec["runAsUser"] == spec["runAsGroup"] == spec["fsGroup"] == RUN_AS_USER == 10001


def test_only_the_rank0_pod_gets_a_service_account_token():
    body = build(gpu_job(), 2, config=OperatorConfig(trainer_service_account="ctxext-trainer"))
    master, worker = pod(body)["spec"], pod(body, "Worker")["spec"]
    assert master["serviceAccountName"] == worker["serviceAccountName"] == "ctxext-trainer"
    assert "automountServiceAccountToken" not in master  # rank 0 patches status.progress / results
    assert worker["automountServiceAccountToken"] is False
    # Nothing else differs between the two replicas.
    assert {k: v for k, v in worker.items() if k != "automountServiceAccountToken"} == master


def test_one_named_metrics_port_per_local_rank_at_spec_metrics_port():
    body = build(gpu_job(metrics={"port": 9500}), 1)  # 4 GPUs per node
    ports = {p["name"]: p["containerPort"] for p in container(body)["ports"]}
    assert ports == {"pytorchjob-port": 23456, "metrics-0": 9500, "metrics-1": 9501, "metrics-2": 9502,
                     "metrics-3": 9503}
    cpu = job_from_object(minimal(resources={"gpusPerNode": 0, "processesPerNode": 1}))
    assert [p["name"] for p in container(build(cpu))["ports"]] == ["pytorchjob-port", "metrics-0"]
    assert all(len(p["name"]) <= 15 for p in container(body)["ports"])  # IANA service name limit


def test_result_key_reaches_the_trainer_and_the_annotation_only_when_given():
    body = build(gpu_job(), 1, result_key="s3cret")
    assert body["metadata"]["annotations"][ANNOTATION_RESULT_KEY] == "s3cret"
    config = load_stage_config({e["name"]: e["value"] for e in container(body)["env"]}[ENV_VAR])
    assert config.report.result_key == "s3cret"
    assert observe(body).result_key == "s3cret"
    plain = build(gpu_job(), 1)
    assert ANNOTATION_RESULT_KEY not in plain["metadata"]["annotations"] and observe(plain).result_key is None


def test_results_of_another_trainer_are_ignored():
    mine = {"status": "Succeeded", "jobName": "a-s1-a1", "finalLoss": 2.0, "reason": None,
            "evaluation": {"passkeyAccuracy": {"512": 1.0}}}
    signed = {**mine, SIGNATURE: sign(mine, "key-a")}
    # What the API server gives back: nulls dropped by the merge patch, 2.0 read back as 2.
    stored = {k: v for k, v in signed.items() if v is not None} | {"finalLoss": 2}
    assert verify(stored, "key-a", "a-s1-a1")
    forged = copy.deepcopy(stored)
    forged["evaluation"]["passkeyAccuracy"]["512"] = 0.1
    assert not verify(forged, "key-a", "a-s1-a1")
    assert not verify({**mine, SIGNATURE: sign(mine, "key-b")}, "key-a", "a-s1-a1")  # signed by job B's key
    assert not verify(stored, "key-a", "a-s1-a2")  # replayed under another attempt's name
    kept = trusted_results({"a-s1-a1": forged, "a-s1-a2": stored, "gone-s1-a1": mine, "old-s1-a1": mine},
                           {"a-s1-a1": "key-a", "a-s1-a2": "key-a2", "old-s1-a1": None})
    assert sorted(kept) == ["gone-s1-a1", "old-s1-a1"]


def test_pod_overlay_fits_trainer_pods_to_infiniband_nodes():
    job = gpu_job(pod=OVERLAY)
    job.spec.resources.extra_resources["rdma/rdma_shared_device_a"] = "1"
    body = build(job, 2, config=OperatorConfig(trainer_image_pull_secrets=["nvcr", "mirror"]))
    for replica in ("Master", "Worker"):
        template = pod(body, replica)
        spec, c = template["spec"], template["spec"]["containers"][0]
        assert spec["imagePullSecrets"] == [{"name": "nvcr"}, {"name": "mirror"}, {"name": "team-registry"}]
        assert spec["runtimeClassName"] == "nvidia"
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["resources"]["limits"]["rdma/rdma_shared_device_a"] == "1"
        assert c["resources"]["requests"]["rdma/rdma_shared_device_a"] == "1"
        assert template["metadata"]["labels"]["team"] == "llm"
        assert template["metadata"]["labels"]["ctxext.dev/job"] == "t"
        assert template["metadata"]["annotations"] == OVERLAY["annotations"]
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in spec["volumes"]


def test_no_overlay_changes_nothing():
    spec = pod(build(gpu_job()))["spec"]
    assert "imagePullSecrets" not in spec and "runtimeClassName" not in spec
    assert spec["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}


BAD_OVERLAYS = [
    ({"pod": {"capabilities": ["SYS_ADMIN"]}}, "capabilities"),
    ({"pod": {"capabilities": ["IPC_LOCK", "IPC_LOCK"]}}, "capabilities"),
    ({"pod": {"labels": {"ctxext.dev/job": "other"}}}, "labels"),
    ({"pod": {"annotations": {"app.kubernetes.io/name": "x"}}}, "annotations"),
    ({"pod": {"labels": {"bad key!": "x"}}}, "labels"),
    ({"pod": {"imagePullSecrets": ["Not_A_Name"]}}, "imagePullSecrets"),
    ({"pod": {"hostNetwork": True}}, "hostNetwork"),
    ({"resources": {"extraResources": {"nvidia.com/gpu": "8"}}}, "extraResources"),
    ({"resources": {"extraResources": {"memory": "1"}}}, "extraResources"),
    ({"resources": {"extraResources": {"rdma/hca": "0.5"}}}, "extraResources"),
]


@pytest.mark.parametrize(("spec", "field"), BAD_OVERLAYS, ids=[f for _, f in BAD_OVERLAYS])
def test_bad_overlays_get_one_plain_error_naming_the_field(spec, field):
    with pytest.raises(SpecError) as err:
        job_from_object(minimal(**spec))
    assert field in str(err.value)
