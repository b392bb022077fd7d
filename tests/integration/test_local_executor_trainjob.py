"""`ctxext local-executor` (a subprocess) plays Kubeflow Trainer v2.3.0 for TrainJobs on the test API server.

The TrainJobs are built by the real TrainJob backend and run on the upstream ``torch-distributed``
ClusterTrainingRuntime that conftest installs. One test runs the real trainer command (torchrun) on
``examples/tiny-cpu.yaml``; the others swap the command for a small Python script, so they check the
executor (PET_* environment, conditions, jobsStatus, suspend, restarts) without torch.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from ctxext.config import OperatorConfig
from ctxext.controller.backends import trainjob_status
from ctxext.controller.backends.trainjob import build_trainjob
from ctxext.manifest import job_from_object
from ctxext.planner import plan_curriculum
from tests.integration.operator_harness import Cluster, Proc, local_executor, wait_for
from tests.unit.helpers import ROOT, example, minimal

pytestmark = pytest.mark.apiserver
NS = "executor-tj"
TJ = ("trainer.kubeflow.org", "v1alpha1", NS, "trainjobs")
RUNTIME = ROOT / "tests/k8s/crds/kubeflow-trainer/torch_distributed_runtime.yaml"
SCRIPT = """
import json, os, sys, time
cfg = json.loads(os.environ["CTXEXT_STAGE_CONFIG"])
os.makedirs(cfg["outputDir"], exist_ok=True)
log = os.path.join(cfg["outputDir"], "runs.log")
first = not os.path.exists(log)
with open(log, "a") as f:
    f.write(json.dumps({k: v for k, v in os.environ.items() if k.startswith("PET_") or k in (
        "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")} | {"pid": os.getpid()}) + "\\n")
mode = sys.argv[1 + int(os.environ["PET_NODE_RANK"])] if len(sys.argv) > 2 else sys.argv[1]
if mode == "sleep" or (mode == "sleep-once" and first):
    time.sleep(600)
print("finishing with", mode)
sys.exit(3 if mode == "crash" else 0)
"""


@pytest.fixture(scope="module")
def cluster(k8s_api):
    config.load_kube_config(config_file=k8s_api)
    return Cluster(client.CustomObjectsApi(), NS)


@pytest.fixture
def executor(k8s_api, tmp_path):
    proc = local_executor(k8s_api, tmp_path / "root", NS, tmp_path / "executor.log")
    yield proc
    proc.stop()


def submit(cluster: Cluster, name: str, *modes: str, nodes: int = 1, procs: int = 1,
           spec: dict | None = None) -> dict:
    """The TrainJob of stage 1 of a small job, its command swapped for SCRIPT (one mode, or one per node)."""
    obj = minimal(resources={"gpusPerNode": 0, "processesPerNode": procs},
                  curriculum={"stages": [{"seqLen": 65536, "nodes": nodes}]})
    obj["metadata"].update(name=name, namespace=NS)
    job = job_from_object(obj)
    body = copy.deepcopy(build_trainjob(job, plan_curriculum(job.spec), 1))
    body["spec"]["trainer"]["command"] = ["python", "-c", SCRIPT, *modes]
    body["spec"].update(spec or {})
    return dict(cluster.api.create_namespaced_custom_object(*TJ, body, field_validation="Strict"))


def trainjob(cluster: Cluster, name: str) -> dict:
    return dict(cluster.api.get_namespaced_custom_object(*TJ, f"{name}-s1-a1"))


def conditions(cluster: Cluster, name: str) -> dict[str, dict]:
    return {c["type"]: c for c in (trainjob(cluster, name).get("status") or {}).get("conditions") or []}


def condition(cluster: Cluster, name: str, kind: str) -> bool:
    return conditions(cluster, name).get(kind, {}).get("status") == "True"


def node_jobs(cluster: Cluster, name: str) -> dict:
    (entry,) = trainjob(cluster, name)["status"]["jobsStatus"]
    return dict(entry)


def runs(root: Path, name: str) -> list[dict]:
    path = root / "ckpt" / NS / name / "stage-1" / "runs.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.distributed
def test_real_trainer_runs_the_tiny_cpu_trainjob_to_complete_with_the_torch_plugins_env(cluster, executor, tmp_path):
    """examples/tiny-cpu.yaml as shipped but for stage 1's steps (150 → 4: CI time; everything the executor
    does is the same for 4 steps as for 150), built by the TrainJob backend, run by torchrun."""
    shipped = example("tiny-cpu.yaml")
    shipped["metadata"]["namespace"] = NS
    shipped["spec"]["curriculum"]["stages"][0]["steps"] = 4
    job = job_from_object(shipped)
    cluster.create(shipped)  # the ContextExtensionJob the trainer reports its result to
    body = build_trainjob(job, plan_curriculum(job.spec), 1, config=OperatorConfig())
    cluster.api.create_namespaced_custom_object(*TJ, body, field_validation="Strict")
    name = job.metadata["name"]
    try:
        wait_for(lambda: any(condition(cluster, name, t) for t in ("Complete", "Failed")), what="finished",
                 timeout=900, proc=executor)
        result = cluster.status(name)["results"][f"{name}-s1-a1"]
    finally:  # no operator runs here: a CEJ left behind would be run by the next test's cluster-wide operator
        cluster.api.delete_namespaced_custom_object("ctxext.dev", "v1alpha1", NS, "contextextensionjobs", name)
    done = trainjob(cluster, name)
    assert trainjob_status.observe(done).state == "Succeeded"
    complete = conditions(cluster, name)["Complete"]
    assert (complete["reason"], complete["message"]) == ("AllJobsCompleted", "jobset completed successfully")
    assert node_jobs(cluster, name) == {"name": "node", "active": 0, "ready": 0, "succeeded": 1, "failed": 0,
                                        "suspended": 0}
    # The trainer's own record of its world: torchrun started PET_NNODES × PET_NPROC_PER_NODE = 1 × 2 workers,
    # whose checkpoint says so (one ZeRO shard per rank); its result went to the ContextExtensionJob.
    out = tmp_path / "root" / "ckpt" / NS / name / "stage-1"
    state = json.loads((out / "checkpoints" / "step-4" / "trainer_state.json").read_text())
    assert state["worldSize"] == 2
    assert result["stepsDone"] == 4


def test_nodes_get_the_pet_environment_and_complete_when_all_exit_zero(cluster, executor, tmp_path):
    submit(cluster, "two", "ok", nodes=2, procs=2)
    wait_for(lambda: condition(cluster, "two", "Complete"), what="Complete", proc=executor)
    seen = sorted(runs(tmp_path / "root", "two"), key=lambda r: r["PET_NODE_RANK"])
    assert [r["PET_NODE_RANK"] for r in seen] == ["0", "1"]
    assert {(r["PET_NNODES"], r["PET_NPROC_PER_NODE"], r["PET_MASTER_ADDR"]) for r in seen} == {("2", "2", "127.0.0.1")}
    assert len({r["PET_MASTER_PORT"] for r in seen}) == 1
    assert not any(k in r for r in seen for k in ("MASTER_ADDR", "WORLD_SIZE", "RANK"))  # training-operator's only
    assert trainjob_status.observe(trainjob(cluster, "two")).state == "Succeeded"
    assert "Suspended" not in conditions(cluster, "two")  # never suspended: no condition (setSuspendedCondition)


def test_a_failing_node_restarts_until_the_backoff_limit_then_fails_as_jobset_says(cluster, executor, tmp_path):
    """The torch-distributed runtime sets no backoffLimit: the Job's default 6, restartPolicy OnFailure."""
    submit(cluster, "broken", "sleep", "crash", nodes=2)
    wait_for(lambda: condition(cluster, "broken", "Failed"), what="Failed", proc=executor)
    failed = conditions(cluster, "broken")["Failed"]
    assert (failed["reason"], failed["message"]) == (
        "FailedJobs", "jobset failed due to one or more job failures (first failed job: broken-s1-a1-node-0)")
    started = runs(tmp_path / "root", "broken")
    assert sorted(r["PET_NODE_RANK"] for r in started) == ["0"] + ["1"] * 6
    assert not any(alive(r["pid"]) for r in started)  # the sleeping node 0 was stopped
    assert node_jobs(cluster, "broken")["failed"] == 1
    assert trainjob_status.observe(trainjob(cluster, "broken")).state == "Failed"


def test_a_deleted_trainjobs_nodes_are_stopped(cluster, executor, tmp_path):
    """Its pods would be garbage-collected with its JobSet."""
    submit(cluster, "gone", "sleep")
    wait_for(lambda: runs(tmp_path / "root", "gone"), what="running", proc=executor)
    cluster.api.delete_namespaced_custom_object(*TJ, "gone-s1-a1")
    wait_for(lambda: not alive(runs(tmp_path / "root", "gone")[0]["pid"]), what="stopped", proc=executor)


def test_active_deadline_fails_the_trainjob_with_deadline_exceeded(cluster, executor, tmp_path):
    submit(cluster, "slow", "sleep", spec={"activeDeadlineSeconds": 2})
    wait_for(lambda: condition(cluster, "slow", "Failed"), what="Failed", proc=executor)
    failed = conditions(cluster, "slow")["Failed"]
    assert (failed["reason"], failed["message"]) == ("DeadlineExceeded", "TrainJob exceeded its active deadline")
    assert not alive(runs(tmp_path / "root", "slow")[0]["pid"])


def test_suspend_stops_resume_restarts_to_complete_and_a_restarted_executor_runs_nothing_twice(
        cluster, executor, tmp_path):
    submit(cluster, "pause", "sleep-once")
    submit(cluster, "done", "ok")
    wait_for(lambda: len(runs(tmp_path / "root", "pause")) == 1 and node_jobs(cluster, "pause")["ready"] == 1,
             what="running", proc=executor)
    first = runs(tmp_path / "root", "pause")[0]["pid"]
    cluster.api.patch_namespaced_custom_object(*TJ, "pause-s1-a1", {"spec": {"suspend": True}})
    wait_for(lambda: condition(cluster, "pause", "Suspended"), what="Suspended", proc=executor)
    suspended = conditions(cluster, "pause")["Suspended"]
    assert (suspended["reason"], suspended["message"]) == ("Suspended", "TrainJob is suspended")
    wait_for(lambda: node_jobs(cluster, "pause")["suspended"] == 1, what="jobsStatus suspended", proc=executor)
    assert not alive(first)
    cluster.api.patch_namespaced_custom_object(*TJ, "pause-s1-a1", {"spec": {"suspend": False}})
    wait_for(lambda: condition(cluster, "pause", "Complete"), what="Complete after resume", proc=executor)
    resumed = conditions(cluster, "pause")["Suspended"]
    assert (resumed["status"], resumed["reason"], resumed["message"]) == ("False", "Resumed", "TrainJob is resumed")
    assert len(runs(tmp_path / "root", "pause")) == 2
    # SIGKILL the executor while a TrainJob runs: the next one kills what it left and runs it again once;
    # the finished TrainJobs are not run again.
    wait_for(lambda: condition(cluster, "done", "Complete"), what="done Complete", proc=executor)
    submit(cluster, "again", "sleep")
    wait_for(lambda: len(runs(tmp_path / "root", "again")) == 1, what="again running", proc=executor)
    orphan = runs(tmp_path / "root", "again")[0]["pid"]
    executor.kill()
    second = Proc(executor.args, tmp_path / "executor2.log", executor.env).start()
    try:
        wait_for(lambda: len(runs(tmp_path / "root", "again")) == 2, what="again restarted", proc=second)
        wait_for(lambda: not alive(orphan), what="the orphan killed", proc=second)
        assert len(runs(tmp_path / "root", "pause")) == 2 and len(runs(tmp_path / "root", "done")) == 1
    finally:
        second.stop()


def test_runtime_refs_trainer_cannot_use(cluster, executor, tmp_path):
    """An unknown runtime kind fails the TrainJob (TrainingRuntimeNotSupported); a runtime that does not
    exist gets no condition, only a warning, as Trainer's controller does (its webhook would refuse it)."""
    submit(cluster, "alien", "ok", spec={"runtimeRef": {"name": "x", "kind": "RayRuntime",
                                                         "apiGroup": "trainer.kubeflow.org"}})
    submit(cluster, "missing", "ok", spec={"runtimeRef": {"name": "no-such-runtime"}})
    wait_for(lambda: condition(cluster, "alien", "Failed"), what="alien Failed", proc=executor)
    failed = conditions(cluster, "alien")["Failed"]
    assert (failed["reason"], failed["message"]) == (
        "TrainingRuntimeNotSupported", "unsupported runtime: RayRuntime.trainer.kubeflow.org")
    wait_for(lambda: "not found ClusterTrainingRuntime specified in TrainJob" in executor.tail(100),
             what="the missing runtime logged", proc=executor)
    assert not (trainjob(cluster, "missing").get("status") or {}).get("conditions")
    assert runs(tmp_path / "root", "missing") == [] and runs(tmp_path / "root", "alien") == []


def test_a_namespaced_runtime_with_a_jobset_failure_policy_restarts_every_node_then_fails(cluster, executor, tmp_path):
    """A TrainingRuntime in the TrainJob's namespace: backoffLimit 0 fails the node Job at its first failure,
    and JobSet's failurePolicy.maxRestarts 1 recreates it once (every node starts again) before failing."""
    runtime = yaml.safe_load(RUNTIME.read_text())
    runtime.update(kind="TrainingRuntime", metadata={"name": "strict", "namespace": NS})
    jobset = runtime["spec"]["template"]["spec"]
    jobset["failurePolicy"] = {"maxRestarts": 1}
    jobset["replicatedJobs"][0]["template"]["spec"]["backoffLimit"] = 0
    cluster.api.create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", NS, "trainingruntimes", runtime,
                                                field_validation="Strict")
    submit(cluster, "strict", "sleep", "crash", nodes=2,
           spec={"runtimeRef": {"name": "strict", "kind": "TrainingRuntime", "apiGroup": "trainer.kubeflow.org"}})
    wait_for(lambda: condition(cluster, "strict", "Failed"), what="Failed", proc=executor)
    failed = conditions(cluster, "strict")["Failed"]
    assert (failed["reason"], failed["message"]) == (
        "ReachedMaxRestarts",
        "jobset failed due to reaching max number of restarts (first failed job: strict-s1-a1-node-0)")
    started = runs(tmp_path / "root", "strict")
    assert sorted(r["PET_NODE_RANK"] for r in started) == ["0", "0", "1", "1"]
    assert len({r["PET_MASTER_PORT"] for r in started}) == 2  # a new rendezvous for the recreated nodes
    assert not any(alive(r["pid"]) for r in started)
