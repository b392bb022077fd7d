"""The pure parts of ``ctxext local-executor`` for TrainJobs: processes from a TrainJob and its runtime
(the upstream ``torch-distributed`` ClusterTrainingRuntime, or one with its own env and policies), and the
kind-by-kind listing that skips a CRD the server does not serve."""

from __future__ import annotations

import copy
import json
import logging
import sys
from typing import Any

import yaml
from kubernetes import client

from ctxext.controller.backends.trainjob import build_trainjob
from ctxext.controller.local_executor import PTJ, TRAINJOB, LocalExecutor
from ctxext.controller.local_trainjob import node_plan, set_condition
from ctxext.manifest import job_from_object
from ctxext.planner import plan_curriculum
from tests.unit.helpers import ROOT, minimal

RUNTIME = yaml.safe_load((ROOT / "tests/k8s/crds/kubeflow-trainer/torch_distributed_runtime.yaml").read_text())


def built(**spec: Any) -> dict[str, Any]:
    obj = minimal(resources={"gpusPerNode": 0, "processesPerNode": 2},
                  curriculum={"stages": [{"seqLen": 65536, "nodes": 2}]},
                  data={"source": "pvc://corpus/books"}, checkpoint={"claimName": "ckpt"}, **spec)
    job = job_from_object(obj)
    return copy.deepcopy(build_trainjob(job, plan_curriculum(job.spec), 1))


def test_nodes_of_the_built_trainjob_on_the_upstream_runtime(tmp_path):
    plan = node_plan(built(), RUNTIME, tmp_path, 29511)
    assert [p.replica for p in plan.procs] == ["node-0", "node-1"]
    assert plan.procs[0].argv == [sys.executable, "-m", "ctxext_trainer.launch", "--module", "ctxext_trainer"]
    env = plan.procs[1].env
    assert {k: v for k, v in env.items() if k.startswith("PET_")} == {
        "PET_NNODES": "2", "PET_NPROC_PER_NODE": "2", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": "29511"}
    assert not {"MASTER_ADDR", "WORLD_SIZE", "RANK", "PYTHONUNBUFFERED"} & set(env)  # training-operator v1's
    cfg = json.loads(env["CTXEXT_STAGE_CONFIG"])  # the runtime patch's volume mounts map to ROOT/<mountPath>
    assert cfg["outputDir"] == f"{tmp_path}/ckpt/default/t/stage-1"
    assert cfg["modelPath"] == f"{tmp_path}/models/models/llama"
    assert cfg["data"]["source"] == f"file://{tmp_path}/data/corpus/books"
    assert set(plan.procs[0].mkdirs) == {tmp_path / "ckpt", tmp_path / "models/models", tmp_path / "data/corpus"}
    # The pod's grace period (from the runtime patch); the Job's default backoffLimit 6 under JobSet's
    # default restartPolicy OnFailure; no JobSet failure policy.
    assert (plan.failures_allowed, plan.max_restarts) == (6, None)
    assert plan.grace is not None and plan.grace > 0


def test_runtime_env_command_policies_and_counts_come_from_the_runtime_where_the_trainjob_is_silent(tmp_path):
    runtime = copy.deepcopy(RUNTIME)
    runtime["spec"]["mlPolicy"]["numNodes"] = 3
    jobset = runtime["spec"]["template"]["spec"]
    jobset["failurePolicy"] = {"maxRestarts": 2}
    job_spec = jobset["replicatedJobs"][0]["template"]["spec"]
    job_spec["backoffLimit"] = 4
    pod = job_spec["template"]["spec"]
    pod.update(restartPolicy="Never", terminationGracePeriodSeconds=7)
    pod["containers"][0].update(command=["torchrun"], args=["train.py"], env=[
        {"name": "FROM_RUNTIME", "value": "/ckpt/x"}, {"name": "OMP_NUM_THREADS", "value": "8"}],
        resources={"requests": {"cpu": "3500m"}})
    tj = built()
    for key in ("numNodes", "numProcPerNode", "command"):
        del tj["spec"]["trainer"][key]
    del tj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    plan = node_plan(tj, runtime, tmp_path, 1)
    assert len(plan.procs) == 3 and plan.procs[2].env["PET_NNODES"] == "3"
    assert plan.procs[0].env["PET_NPROC_PER_NODE"] == "4"  # "auto" without GPUs: CPUs requested, rounded up
    assert plan.procs[0].argv[1:] == ["train.py"] and plan.procs[0].argv[0].endswith("torchrun")
    env = plan.procs[0].env
    assert env["FROM_RUNTIME"] == f"{tmp_path}/ckpt/x" and env["OMP_NUM_THREADS"] == "1"  # the TrainJob's wins
    assert (plan.grace, plan.failures_allowed, plan.max_restarts) == (7.0, 5, 2)  # Never: more than backoffLimit
    no_trainer = {**tj, "spec": {k: v for k, v in tj["spec"].items() if k != "trainer"}}
    assert not any(k.startswith("PET_") for k in node_plan(no_trainer, runtime, tmp_path, 1).procs[0].env)
    del runtime["spec"]["mlPolicy"]["torch"]  # no torch policy, no torch plugin: no PET_* at all
    assert not any(k.startswith("PET_") for k in node_plan(tj, runtime, tmp_path, 1).procs[0].env)
    unlabelled = copy.deepcopy(RUNTIME)  # a "node" job that is not the trainer step: its parallelism, no PET_*
    del unlabelled["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["metadata"]
    unlabelled["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["parallelism"] = 2
    procs = node_plan(tj, unlabelled, tmp_path, 1).procs
    assert len(procs) == 2 and not any(k.startswith("PET_") for k in procs[0].env)


def test_set_condition_keeps_the_transition_time_while_the_status_holds():
    conds = set_condition([], "Failed", "True", "FailedJobs", "a", "t1")
    again = set_condition(conds, "Failed", "True", "DeadlineExceeded", "b", "t2")
    assert again == [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "b",
                      "lastTransitionTime": "t1"}]
    assert conds[0]["reason"] == "FailedJobs"  # not changed in place


class _OneKindServed:
    """A CustomObjectsApi double that serves TrainJobs and answers 404 for PyTorchJobs, as an API server
    without the training-operator's CRD does (the test API server serves both, so this cannot be shown there)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def list_cluster_custom_object(self, group: str, version: str, plural: str) -> dict[str, Any]:
        self.calls.append(plural)
        if plural == PTJ[2]:
            raise client.ApiException(status=404, reason="Not Found")
        return {"items": []}


def test_a_kind_whose_crd_is_not_served_is_skipped_and_logged_once(tmp_path, caplog):
    api = _OneKindServed()
    executor = LocalExecutor(api, tmp_path)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="ctxext.local_executor"):
        executor.tick()
        executor.tick()
    assert api.calls == [PTJ[2], TRAINJOB[2]] * 2
    assert [r.getMessage() for r in caplog.records].count(
        "pytorchjobs.kubeflow.org is not served by the API server (404): not running any until it is") == 1
    assert executor.list_objects(TRAINJOB) == [] and executor.list_objects(PTJ) is None
