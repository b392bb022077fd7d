"""`ctxext operator` against the real test API server, with the test acting as Kueue and as a user who
deletes and re-applies a ContextExtensionJob (#27 items 1 and 4), on both backends (PyTorchJob and TrainJob,
#22 item 1). The test API server has no garbage collector, so a deleted CEJ's training job stays, as one
awaiting garbage collection does on a cluster."""

from __future__ import annotations

import pytest
from kubernetes import client, config

from tests.integration.operator_harness import Cluster, OperatorProcess, wait_for
from tests.unit.helpers import minimal

pytestmark = pytest.mark.apiserver
NS = "realities"


def manifest(name: str, **spec):
    spec.setdefault("curriculum", {"stages": [{"seqLen": 16384}, {"seqLen": 65536}],
                                   "stageDefaults": {"learningRate": 1e-4}})
    obj = minimal(**spec)
    obj["metadata"] = {"name": name, "namespace": NS}
    return obj


@pytest.fixture(scope="module", params=["pytorchjob", "trainjob"])
def cluster(k8s_api, request):
    config.load_kube_config(config_file=k8s_api)
    return Cluster(client.CustomObjectsApi(), f"{NS}-{request.param}", request.param)


@pytest.fixture(scope="module")
def operator(k8s_api, tmp_path_factory, cluster):
    proc = OperatorProcess(k8s_api, tmp_path_factory.mktemp("operator") / "operator.log", cluster.backend).start()
    yield proc
    proc.stop()


def kind(cluster: Cluster) -> str:
    return {"pytorchjob": "PyTorchJob", "trainjob": "TrainJob"}[cluster.backend]


def gone(cluster: Cluster, name: str) -> bool:
    try:
        cluster.cej(name)
    except client.ApiException as exc:
        return exc.status == 404
    return False


def test_with_a_kueue_queue_the_operator_never_resumes_what_kueue_holds(cluster, operator):
    cluster.create(manifest("queued", scheduling={"queueName": "gpu-queue"}))
    job = wait_for(lambda: cluster.jobs("queued").get("queued-s1-a1"), what="queued-s1-a1", proc=operator)
    assert cluster.suspended(job)  # created suspended: Kueue admits it
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    wait_for(lambda: cluster.status("queued").get("phase") == "Queued", what="phase Queued", proc=operator)
    assert "Kueue LocalQueue gpu-queue" in cluster.condition("queued", "Progressing")["message"]

    cluster.set_suspend("queued-s1-a1", False)  # Kueue admits it; the training-operator runs it
    cluster.set_conditions("queued-s1-a1", "Created", "Running")
    wait_for(lambda: cluster.status("queued").get("phase") == "Running", what="phase Running", proc=operator)

    cluster.set_suspend("queued-s1-a1", True)  # Kueue preempts it (evicts the workload)
    cluster.set_conditions("queued-s1-a1", "Created", "Suspended")
    wait_for(lambda: cluster.status("queued").get("phase") == "Queued", what="Queued again", proc=operator)
    assert cluster.suspended(cluster.job("queued-s1-a1"))  # not resumed by the operator
    assert cluster.condition("queued", "Progressing")["reason"] == "Queued"


def test_a_re_applied_job_never_adopts_its_predecessors_pytorchjob(cluster, operator):
    first = cluster.create(manifest("again"))
    wait_for(lambda: cluster.jobs("again").get("again-s1-a1"), what="again-s1-a1", proc=operator)
    cluster.set_conditions("again-s1-a1", "Created", "Running", "Failed",
                           message="Job again-s1-a1 has failed because it has reached the specified backoff limit")
    cluster.api.delete_namespaced_custom_object("ctxext.dev", "v1alpha1", cluster.ns, "contextextensionjobs", "again")
    wait_for(lambda: gone(cluster, "again"), what="the first CEJ deleted", proc=operator)
    second = cluster.create(manifest("again"))  # the usual way to retry a Failed job
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    wait_for(lambda: cluster.condition("again", "Degraded").get("reason") == "NameTaken", what="NameTaken",
             proc=operator)
    assert cluster.status("again")["stages"][0]["phase"] != "Failed"  # the predecessor's failure is not its own
    old = cluster.job("again-s1-a1")
    assert old["metadata"]["ownerReferences"][0]["uid"] == first["metadata"]["uid"]  # nothing created or adopted

    cluster.delete_job("again-s1-a1")  # GC
    mine = wait_for(lambda: (j := cluster.jobs("again").get("again-s1-a1")) and
                    j["metadata"]["ownerReferences"][0]["uid"] == second["metadata"]["uid"] and j,
                    what="its own again-s1-a1", proc=operator)
    assert not cluster.suspended(mine) and "status" not in mine
    wait_for(lambda: cluster.status("again").get("phase") == "Running", what="Running", proc=operator)


def test_a_pytorchjob_deleted_without_a_result_is_a_failed_attempt_not_recreated(cluster, operator):
    """#27 item 3: `kubectl delete pytorchjob` (or ttlSecondsAfterFinished: 0) with maxRetries 0."""
    cluster.create(manifest("vanish", failurePolicy={"maxRetries": 0}))
    wait_for(lambda: cluster.jobs("vanish").get("vanish-s1-a1"), what="vanish-s1-a1", proc=operator)
    cluster.delete_job("vanish-s1-a1")
    wait_for(lambda: cluster.status("vanish").get("phase") == "Failed", what="Failed", proc=operator)
    assert cluster.condition("vanish", "Failed")["message"] == (
        f"stage 1/2 failed (no retries allowed): {kind(cluster)} vanish-s1-a1 was deleted before it reported a result")
    assert cluster.jobs("vanish") == {}
