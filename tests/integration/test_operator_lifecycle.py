"""`ctxext operator` (a subprocess) against the real test API server; the test plays the training-operator
(writes PyTorchJob conditions) and the trainer (patches status.progress / status.results)."""

from __future__ import annotations

import pytest
from kubernetes import client, config

from tests.integration.operator_harness import Cluster, OperatorProcess, wait_for
from tests.unit.helpers import minimal

pytestmark = pytest.mark.apiserver
NS = "team-a"
ARCH = {"numLayers": 32, "hiddenSize": 4096, "intermediateSize": 14336, "numAttentionHeads": 32,
        "numKeyValueHeads": 8, "vocabSize": 128256}


def manifest(name: str, **spec):
    spec.setdefault("curriculum", {"stages": [{"seqLen": 16384}, {"seqLen": 65536}],
                                   "stageDefaults": {"learningRate": 1e-4}})
    obj = minimal(**spec)
    obj["metadata"]["name"] = name
    return obj


@pytest.fixture(scope="module")
def cluster(k8s_api):
    config.load_kube_config(config_file=k8s_api)
    return Cluster(client.CustomObjectsApi(), NS)


@pytest.fixture(scope="module")
def operator(k8s_api, tmp_path_factory):
    proc = OperatorProcess(k8s_api, tmp_path_factory.mktemp("operator") / "operator.log").start()
    yield proc
    proc.stop()


def test_create_makes_one_owned_labelled_pytorchjob(cluster, operator):
    cej = cluster.create(manifest("life"))
    job = wait_for(lambda: cluster.pytorchjobs("life").get("life-s1-a1"), what="life-s1-a1", proc=operator)
    owner = job["metadata"]["ownerReferences"][0]
    assert owner["uid"] == cej["metadata"]["uid"] and owner["controller"] is True
    labels = job["metadata"]["labels"]
    assert labels["ctxext.dev/job"] == "life" and labels["ctxext.dev/stage"] == "1"
    assert labels["ctxext.dev/attempt"] == "1" and labels["app.kubernetes.io/part-of"] == "ctxext"
    status = wait_for(lambda: (s := cluster.status("life")).get("phase") == "Running" and s, what="Running")
    assert status["stage"] == "1/2" and status["seqLen"] == 16384 and status["ropeTheta"] > 500000
    assert [s["phase"] for s in status["stages"]] == ["Running", "Pending"]
    assert "kopf" not in status  # kopf keeps its progress in ctxext.dev/ annotations


def test_conditions_and_results_drive_the_stages_to_success(cluster, operator):
    cluster.create(manifest("life2"))  # its own job: this test runs alone or in any order
    wait_for(lambda: cluster.pytorchjobs("life2").get("life2-s1-a1"), what="life2-s1-a1", proc=operator)
    cluster.set_conditions("life2-s1-a1", "Created", "Running")
    cluster.trainer_reports("life2", {"progress": {"jobName": "life2-s1-a1", "step": 7, "loss": 3.5,
                                                  "perplexity": 33.1}})
    wait_for(lambda: cluster.status("life2").get("loss") == 3.5, what="loss mirrored", proc=operator)
    cluster.trainer_reports("life2", {"results": {"life2-s1-a1": {"status": "Succeeded", "finalLoss": 2.0,
                                                                "perplexity": 7.4}}})
    cluster.set_conditions("life2-s1-a1", "Created", "Running", "Succeeded")
    wait_for(lambda: cluster.pytorchjobs("life2").get("life2-s2-a1"), what="stage 2 started", proc=operator)
    # The PyTorchJob is created before the status says so: wait for the status too.
    status = wait_for(lambda: (s := cluster.status("life2")).get("stage") == "2/2" and s, what="status 2/2")
    assert status["stages"][0]["phase"] == "Succeeded" and status["stages"][0]["result"]["finalLoss"] == 2.0
    assert status["progress"]["step"] == 7  # the trainer's fields are never overwritten
    stage2 = cluster.pytorchjob("life2-s2-a1")
    env = {e["name"]: e["value"] for e in
           stage2["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]}
    assert '"modelPath":"/ckpt/team-a/life2/stage-1/model"' in env["CTXEXT_STAGE_CONFIG"]
    cluster.trainer_reports("life2", {"results": {"life2-s2-a1": {"status": "Succeeded", "finalLoss": 1.5,
                                                                "modelPath": "/ckpt/team-a/life2/stage-2/model"}}})
    cluster.set_conditions("life2-s2-a1", "Created", "Running", "Succeeded")
    status = wait_for(lambda: (s := cluster.status("life2")).get("phase") == "Succeeded" and s, what="Succeeded",
                      proc=operator)
    assert status["finalModelPath"] == "/ckpt/team-a/life2/stage-2/model" and status["stage"] == "2/2"
    assert cluster.condition("life2", "Ready")["status"] == "True"
    assert sorted(cluster.pytorchjobs("life2")) == ["life2-s1-a1", "life2-s2-a1"]
    metrics = operator.get("/metrics") or ""
    assert 'ctxext_jobs{phase="Succeeded"}' in metrics and "ctxext_pytorchjobs_created_total" in metrics
    assert 'ctxext_stage_transitions_total{from="Running",to="Succeeded"}' in metrics


def test_failure_retries_with_lower_lr_then_fails_with_the_reason(cluster, operator):
    cluster.create(manifest("flaky", failurePolicy={"maxRetries": 1, "backoffSeconds": 1}))
    wait_for(lambda: cluster.pytorchjobs("flaky").get("flaky-s1-a1"), what="flaky-s1-a1", proc=operator)
    cluster.trainer_reports("flaky", {"results": {"flaky-s1-a1": {
        "status": "Failed", "reason": "non-finite gradients at step 113", "reasonCode": "NonFiniteGradients",
        "checkpoint": "/ckpt/team-a/flaky/stage-1/checkpoints/step-100"}}})
    cluster.set_conditions("flaky-s1-a1", "Created", "Running", "Failed",
                           message="Job flaky-s1-a1 has failed because it has reached the specified backoff limit")
    retry = wait_for(lambda: cluster.pytorchjobs("flaky").get("flaky-s1-a2"), what="attempt 2", proc=operator)
    assert retry["metadata"]["annotations"]["ctxext.dev/learning-rate"] == "5e-05"
    wait_for(lambda: cluster.status("flaky")["stages"][0]["attempts"] == 2, what="attempt 2 in status")
    assert cluster.condition("flaky", "Degraded")["status"] == "True"
    backoff = "Job flaky-s1-a2 has failed because it has reached the specified backoff limit"  # as v1.9 says it
    cluster.set_conditions("flaky-s1-a2", "Created", "Running", "Failed", message=backoff)  # e.g. OOM-killed
    wait_for(lambda: cluster.status("flaky").get("phase") == "Failed", what="Failed", proc=operator)
    failed = cluster.condition("flaky", "Failed")
    assert failed["status"] == "True" and failed["message"].startswith(
        "stage 1/2 failed after 2 attempts: the trainer ended without reporting a result (killed, e.g. out of memory")
    assert failed["message"].endswith(f"; the training-operator says: {backoff}")
    assert sorted(cluster.pytorchjobs("flaky")) == ["flaky-s1-a1", "flaky-s1-a2"]


def test_suspend_and_resume(cluster, operator):
    cluster.create(manifest("pausable"))
    wait_for(lambda: cluster.pytorchjobs("pausable").get("pausable-s1-a1"), what="job", proc=operator)
    cluster.set_conditions("pausable-s1-a1", "Created", "Running")
    cluster.patch_spec("pausable", {"suspend": True})
    wait_for(lambda: cluster.pytorchjob("pausable-s1-a1")["spec"]["runPolicy"]["suspend"] is True,
             what="runPolicy.suspend", proc=operator)
    wait_for(lambda: cluster.status("pausable").get("phase") == "Suspended", what="Suspended", proc=operator)
    assert cluster.condition("pausable", "Progressing")["reason"] == "Suspended"
    cluster.patch_spec("pausable", {"suspend": False})
    wait_for(lambda: cluster.pytorchjob("pausable-s1-a1")["spec"]["runPolicy"]["suspend"] is False,
             what="resumed", proc=operator)
    wait_for(lambda: cluster.status("pausable").get("phase") == "Running", what="Running", proc=operator)
    assert sorted(cluster.pytorchjobs("pausable")) == ["pausable-s1-a1"]


def test_invalid_spec_is_a_condition_naming_the_field_and_can_be_fixed(cluster, operator):
    obj = manifest("toosmall", resources={"gpusPerNode": 8, "gpuMemoryGiB": 1})
    obj["spec"]["model"]["architecture"] = ARCH
    cluster.create(obj)  # the CRD accepts it; only the planner knows it cannot fit
    cond = wait_for(lambda: cluster.condition("toosmall", "InvalidSpec"), what="InvalidSpec", proc=operator)
    assert cond["status"] == "True"
    assert cond["message"].startswith("spec.resources.gpuMemoryGiB: stage 1 (seqLen 16384) needs about")
    assert cluster.status("toosmall")["phase"] == "Failed" and cluster.pytorchjobs("toosmall") == {}
    assert operator.alive()
    cluster.patch_spec("toosmall", {"resources": {"gpuMemoryGiB": 80}})
    wait_for(lambda: cluster.pytorchjobs("toosmall").get("toosmall-s1-a1"), what="fixed spec runs", proc=operator)
    wait_for(lambda: cluster.condition("toosmall", "InvalidSpec").get("status") == "False", what="cleared")
