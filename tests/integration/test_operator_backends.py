"""#22 item 5: the operator runs a job on the Kubeflow API the cluster serves, on a real API server whose
CRDs change under a running operator (its own server: the session's serves both APIs throughout).

One operator (CTXEXT_BACKEND=auto, the shipped default) sees, in turn, a cluster that serves
1. neither API: the job fails, its condition naming both CRDs to install;
2. TrainJob without its ClusterTrainingRuntime: the job says which runtime is missing;
3. TrainJob with the upstream ``torch-distributed`` runtime: the same job starts by itself, as a TrainJob
   that the API server validated (Strict), and says so in status.backend;
4. both APIs: a new job gets TrainJob, one with spec.backend PyTorchJob gets a PyTorchJob, one with a
   priority class (which a TrainJob cannot carry) gets a PyTorchJob, and the same job forced onto TrainJob
   is refused (InvalidSpec) before anything is created;
5. PyTorchJob only (the TrainJob CRD deleted; kopf then stops, and the operator is restarted as its
   Deployment would): a new job gets a PyTorchJob.

CTXEXT_RESYNC_SECONDS=3 here (shipped 300): a job that failed for want of a CRD starts at the next resync
after it is installed, and this test should not wait 5 minutes for each of its two recoveries.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config

from tests.conftest import ROOT, START, UPSTREAM, install_crds
from tests.integration.operator_harness import Cluster, OperatorProcess, wait_for
from tests.unit.helpers import minimal

pytestmark = pytest.mark.apiserver
NS = "backends"
TRAINER = UPSTREAM / "kubeflow-trainer"
OURS = sorted((ROOT / "crds").glob("*.yaml"))


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> Iterator[tuple[str, client.ApiClient]]:
    """A second API server that serves only the ContextExtensionJob CRD to begin with."""
    run_dir = tmp_path_factory.mktemp("bare-api")
    subprocess.run([str(START), "start", str(run_dir)], check=True, stdout=subprocess.DEVNULL, timeout=1800)
    try:
        kubeconfig = str(run_dir / "kubeconfig")
        with config.new_client_from_config(config_file=kubeconfig) as api:
            install_crds(api, OURS)
            yield kubeconfig, api
    finally:
        subprocess.run([str(START), "stop", str(run_dir)], check=False)


def job(name: str, **spec: Any) -> dict[str, Any]:
    obj = minimal(**spec)
    obj["metadata"]["name"] = name
    return obj


def failed(cluster: Cluster, name: str, reason: str) -> dict[str, Any] | None:
    cond = cluster.condition(name, "Failed")
    return cond if cond.get("status") == "True" and cond.get("reason") == reason else None


def test_the_operator_runs_each_job_on_the_api_the_cluster_serves(bare, tmp_path):
    kubeconfig, api = bare
    custom = client.CustomObjectsApi(api)
    trainjobs, pytorchjobs = Cluster(custom, NS, "trainjob"), Cluster(custom, NS, "pytorchjob")
    op = OperatorProcess(kubeconfig, tmp_path / "operator.log", "auto", CTXEXT_RESYNC_SECONDS="3").start()
    try:
        # 1. Neither API is served.
        trainjobs.create(job("early"))
        cond = wait_for(lambda: failed(trainjobs, "early", "TrainingApiMissing"), what="TrainingApiMissing", proc=op)
        assert "pytorchjobs.kubeflow.org" in cond["message"] and "trainjobs.trainer.kubeflow.org" in cond["message"]
        assert trainjobs.status("early")["phase"] == "Failed"

        # 2. Kubeflow Trainer's CRDs, but not its runtimes yet.
        install_crds(api, sorted(TRAINER.glob("trainer.kubeflow.org_*.yaml")))
        cond = wait_for(lambda: failed(trainjobs, "early", "TrainingRuntimeMissing"), what="TrainingRuntimeMissing",
                        proc=op)
        assert "ClusterTrainingRuntime torch-distributed" in cond["message"]

        # 3. The upstream runtime: the job starts by itself, on a TrainJob the server validated.
        install_crds(api, [TRAINER / "torch_distributed_runtime.yaml"])
        made = wait_for(lambda: trainjobs.jobs("early").get("early-s1-a1"), what="TrainJob early-s1-a1", proc=op)
        assert made["spec"]["runtimeRef"]["name"] == "torch-distributed"
        status = wait_for(lambda: (s := trainjobs.status("early")).get("phase") == "Running" and s,
                          what="early Running", proc=op)
        assert status["backend"] == "TrainJob" and "TrainJob early-s1-a1" in status["stages"][0]["message"]

        # 4. Both APIs.
        install_crds(api, [UPSTREAM / "kubeflow.org_pytorchjobs.yaml"])
        trainjobs.create(job("auto"))
        pytorchjobs.create(job("forced", backend="PyTorchJob"))
        pytorchjobs.create(job("prio", scheduling={"priorityClassName": "high"}))  # only a PyTorchJob carries it
        trainjobs.create(job("prio-tj", backend="TrainJob", scheduling={"priorityClassName": "high"}))
        wait_for(lambda: trainjobs.jobs("auto").get("auto-s1-a1"), what="TrainJob auto-s1-a1", proc=op)
        wait_for(lambda: pytorchjobs.jobs("forced").get("forced-s1-a1"), what="PyTorchJob forced-s1-a1", proc=op)
        wait_for(lambda: pytorchjobs.jobs("prio").get("prio-s1-a1"), what="PyTorchJob prio-s1-a1", proc=op)
        invalid = wait_for(lambda: (c := trainjobs.condition("prio-tj", "InvalidSpec")).get("status") == "True"
                           and c, what="prio-tj InvalidSpec", proc=op)
        assert "spec.scheduling.priorityClassName" in invalid["message"]
        assert trainjobs.jobs("prio-tj") == {} and pytorchjobs.jobs("prio-tj") == {}
        assert pytorchjobs.jobs("auto") == {} and trainjobs.jobs("forced") == {}

        # 5. PyTorchJob only. kopf stops the operator when a CRD it watches is deleted under it (its watch gets
        # 404), and the Deployment restarts it: so does this test.
        client.ApiextensionsV1Api(api).delete_custom_resource_definition("trainjobs.trainer.kubeflow.org")
        wait_for(lambda: not _serves(custom, "trainer.kubeflow.org", "trainjobs"), what="TrainJob CRD gone")
        op.stop()
        op = OperatorProcess(kubeconfig, tmp_path / "operator.log", "auto", CTXEXT_RESYNC_SECONDS="3").start()
        pytorchjobs.create(job("late"))
        wait_for(lambda: pytorchjobs.jobs("late").get("late-s1-a1"), what="PyTorchJob late-s1-a1", proc=op)
        assert wait_for(lambda: pytorchjobs.status("late").get("backend"), what="late backend",
                        proc=op) == "PyTorchJob"
    finally:
        op.stop()


def _serves(custom: client.CustomObjectsApi, group: str, plural: str) -> bool:
    try:
        return any(r.name == plural for r in custom.get_api_resources(group, "v1alpha1").resources or [])
    except client.ApiException:
        return False

