"""`ctxext local-executor` (a subprocess) plays the training-operator for PyTorchJobs on the test API server.

The jobs are rendered by the real builder; only the command is swapped for a small Python script,
so these tests check the executor (env, volume mapping, conditions, suspend, restart) without torch.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
from kubernetes import client, config

from ctxext.controller.builder import build_pytorchjob
from ctxext.manifest import job_from_object
from ctxext.planner import plan_curriculum
from tests.integration.operator_harness import Cluster, Proc, local_executor, wait_for
from tests.unit.helpers import minimal

pytestmark = pytest.mark.apiserver
NS = "executor"
SCRIPT = """
import json, os, sys, time
cfg = json.loads(os.environ["CTXEXT_STAGE_CONFIG"])
os.makedirs(cfg["outputDir"], exist_ok=True)
with open(os.path.join(cfg["outputDir"], "runs.log"), "a") as f:
    f.write(json.dumps({k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK",
        "PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "OMP_NUM_THREADS")} | {"outputDir": cfg["outputDir"],
        "executable": sys.executable, "pid": os.getpid()})
        + "\\n")
mode = sys.argv[1]
if mode == "sleep":
    time.sleep(600)
print("finishing with", mode)
sys.exit(0 if mode == "ok" else 3)
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


def submit(cluster: Cluster, name: str, mode: str, nodes: int = 1, *, worker_mode: str | None = None,
           procs: int = 1, run_policy: dict | None = None) -> dict:
    obj = minimal(resources={"gpusPerNode": 0, "processesPerNode": procs},
                  curriculum={"stages": [{"seqLen": 65536, "nodes": nodes}]})
    obj["metadata"].update(name=name, namespace=NS)
    job = job_from_object(obj)
    body = build_pytorchjob(job, plan_curriculum(job.spec), 1)
    for kind, replica in body["spec"]["pytorchReplicaSpecs"].items():
        replica["template"] = copy.deepcopy(replica["template"])  # the builder shares one template
        replica["template"]["spec"]["containers"][0]["command"] = [
            "python", "-c", SCRIPT, worker_mode if kind == "Worker" and worker_mode else mode]
    policy = body["spec"]["runPolicy"]
    policy.update(run_policy or {})
    for key in [k for k, v in policy.items() if v is None]:  # None removes the builder's value
        del policy[key]
    return dict(cluster.api.create_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs", body,
                                                            field_validation="Strict"))


def condition(cluster: Cluster, name: str, kind: str) -> bool:
    conds = (cluster.pytorchjob(f"{name}-s1-a1").get("status") or {}).get("conditions") or []
    return any(c["type"] == kind and c["status"] == "True" for c in conds)


def runs(root: Path, name: str) -> list[dict]:
    path = root / "ckpt" / NS / name / "stage-1" / "runs.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def conditions(cluster: Cluster, name: str) -> dict[str, dict]:
    return {c["type"]: c for c in (cluster.pytorchjob(f"{name}-s1-a1").get("status") or {}).get("conditions") or []}


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_runs_replicas_with_kubeflow_env_and_mapped_volumes(cluster, executor, tmp_path):
    submit(cluster, "two-nodes", "ok", nodes=2, procs=2)
    wait_for(lambda: condition(cluster, "two-nodes", "Succeeded"), what="Succeeded", proc=executor)
    conds = conditions(cluster, "two-nodes")  # as training-operator v1.9 writes them
    assert (conds["Created"]["reason"], conds["Created"]["message"]) == (
        "PyTorchJobCreated", "PyTorchJob two-nodes-s1-a1 is created.")
    assert (conds["Succeeded"]["reason"], conds["Succeeded"]["message"]) == (
        "PyTorchJobSucceeded", "PyTorchJob two-nodes-s1-a1 is successfully completed.")
    assert conds["Running"]["status"] == "False" and conds["Running"]["reason"] == "PyTorchJobRunning"
    seen = runs(tmp_path / "root", "two-nodes")
    assert sorted(r["RANK"] for r in seen) == ["0", "1"] and {r["PET_NNODES"] for r in seen} == {"2"}
    assert {r["WORLD_SIZE"] for r in seen} == {"4"} and {r["PET_NPROC_PER_NODE"] for r in seen} == {"2"}
    assert {r["MASTER_ADDR"] for r in seen} == {"127.0.0.1"} and len({r["MASTER_PORT"] for r in seen}) == 1
    assert seen[0]["outputDir"] == str((tmp_path / "root" / "ckpt" / NS / "two-nodes" / "stage-1").resolve())


def test_a_failed_replica_fails_the_job_as_upstream_says_it_and_stops_the_others(cluster, executor, tmp_path):
    submit(cluster, "broken", "sleep", nodes=2, worker_mode="crash")
    wait_for(lambda: condition(cluster, "broken", "Failed"), what="Failed", proc=executor)
    failed = conditions(cluster, "broken")["Failed"]
    assert (failed["reason"], failed["message"]) == (
        "PyTorchJobFailed", "Job broken-s1-a1 has failed because it has reached the specified backoff limit")
    assert "replica Worker-0 exited with code 3: finishing with crash" in executor.tail(200)
    started = runs(tmp_path / "root", "broken")
    assert len(started) == 2 and not any(alive(r["pid"]) for r in started)  # the sleeping Master was stopped


def test_the_master_decides_success_and_clean_pod_policy_stops_the_workers(cluster, executor, tmp_path):
    """pytorchjob_controller.go: the job succeeds when the Master does; common/job.go then deletes the pods
    still running, unless cleanPodPolicy is None."""
    pids_dir = tmp_path / "root" / ".executor" / "pids"
    submit(cluster, "clean", "ok", nodes=2, worker_mode="sleep", run_policy={"cleanPodPolicy": "Running"})
    submit(cluster, "keep", "ok", nodes=2, worker_mode="sleep", run_policy={"cleanPodPolicy": "None"})
    wait_for(lambda: (pids_dir / f"{NS}_keep-s1-a1").exists(), what="keep started", proc=executor)
    keep = json.loads((pids_dir / f"{NS}_keep-s1-a1").read_text())
    for name in ("clean", "keep"):
        wait_for(lambda n=name: condition(cluster, n, "Succeeded"), what=f"{name} Succeeded", proc=executor)
    assert not (pids_dir / f"{NS}_clean-s1-a1").exists()  # its Worker was stopped
    assert alive(keep["Worker-0"]) and not alive(keep["Master"])
    cluster.api.delete_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs", "keep-s1-a1")
    wait_for(lambda: not alive(keep["Worker-0"]), what="the deleted job's Worker stopped", proc=executor)


def test_without_backoff_limit_the_replica_type_is_named_and_clean_pod_policy_none_keeps_the_rest(
        cluster, executor, tmp_path):
    """pytorchjob_controller.go UpdateJobStatus fails the job naming the failed replicas; upstream's default
    cleanPodPolicy (None, pytorch_defaults.go) then deletes no pod of the finished job."""
    pids_dir = tmp_path / "root" / ".executor" / "pids"
    submit(cluster, "lax", "sleep", nodes=2, worker_mode="crash",
           run_policy={"backoffLimit": None, "cleanPodPolicy": None})
    wait_for(lambda: (pids_dir / f"{NS}_lax-s1-a1").exists(), what="lax started", proc=executor)
    pids = json.loads((pids_dir / f"{NS}_lax-s1-a1").read_text())
    wait_for(lambda: condition(cluster, "lax", "Failed"), what="Failed", proc=executor)
    assert conditions(cluster, "lax")["Failed"]["message"] == \
        "PyTorchJob lax-s1-a1 is failed because 1 Worker replica(s) failed."
    assert alive(pids["Master"])
    cluster.api.delete_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs", "lax-s1-a1")
    wait_for(lambda: not alive(pids["Master"]), what="the deleted job's Master stopped", proc=executor)


def test_active_deadline_fails_the_job_with_upstreams_message(cluster, executor):
    submit(cluster, "slow", "sleep", run_policy={"activeDeadlineSeconds": 1})
    wait_for(lambda: condition(cluster, "slow", "Failed"), what="Failed", proc=executor)
    assert conditions(cluster, "slow")["Failed"]["message"] == \
        "Job slow-s1-a1 has failed because it was active longer than specified deadline"


def test_suspend_stops_and_resume_restarts_and_restart_never_reruns_finished(cluster, executor, k8s_api, tmp_path):
    submit(cluster, "sleeper", "sleep")
    wait_for(lambda: condition(cluster, "sleeper", "Running"), what="Running", proc=executor)
    pids = json.loads((tmp_path / "root" / ".executor" / "pids" / f"{NS}_sleeper-s1-a1").read_text())
    cluster.api.patch_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs", "sleeper-s1-a1",
                                               {"spec": {"runPolicy": {"suspend": True}}})
    wait_for(lambda: condition(cluster, "sleeper", "Suspended"), what="Suspended", proc=executor)
    assert not alive(pids["Master"])
    conds = conditions(cluster, "sleeper")
    assert (conds["Suspended"]["reason"], conds["Suspended"]["message"]) == (
        "PyTorchJobSuspended", "PyTorchJob sleeper-s1-a1 is suspended.")
    assert conds["Running"]["status"] == "False" and conds["Running"]["reason"] == "PyTorchJobSuspended"
    cluster.api.patch_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs", "sleeper-s1-a1",
                                               {"spec": {"runPolicy": {"suspend": False}}})
    wait_for(lambda: condition(cluster, "sleeper", "Running") and not condition(cluster, "sleeper", "Suspended"),
             what="resumed", proc=executor)
    assert conditions(cluster, "sleeper")["Suspended"]["reason"] == "PyTorchJobResumed"
    wait_for(lambda: len(runs(tmp_path / "root", "sleeper")) == 2, what="second run", proc=executor)
    # Restart the executor: the finished job from the first test is not run again.
    submit(cluster, "once", "ok")
    wait_for(lambda: condition(cluster, "once", "Succeeded"), what="once Succeeded", proc=executor)
    executor.kill()
    again = Proc(executor.args, tmp_path / "executor2.log", executor.env).start()
    try:
        wait_for(lambda: len(runs(tmp_path / "root", "sleeper")) == 3, what="sleeper restarted", proc=again)
        assert len(runs(tmp_path / "root", "once")) == 1
    finally:
        again.stop()
    # "python" in the pod's command ran as this interpreter (python → sys.executable), in every run
    assert {r["executable"] for name in ("sleeper", "once") for r in runs(tmp_path / "root", name)} == \
        {sys.executable}
