"""`ctxext local-executor` (a subprocess) plays the training-operator for PyTorchJobs on the test API server.

The jobs are rendered by the real builder; only the command is swapped for a small Python script,
so these tests check the executor (env, volume mapping, conditions, suspend, restart) without torch.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from kubernetes import client, config

from ctxext.controller.builder import build_pytorchjob
from ctxext.manifest import job_from_object
from ctxext.planner import plan_curriculum
from tests.integration.operator_harness import Cluster, Proc, wait_for
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
        "executable": sys.executable})
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
    env = {**os.environ, "KUBECONFIG": k8s_api, "OMP_NUM_THREADS": "1"}
    proc = Proc(["local-executor", "--root", str(tmp_path / "root"), "-n", NS, "--poll", "0.3",
                 "--stop-grace", "5"], tmp_path / "executor.log", env).start()
    yield proc
    proc.stop()


def submit(cluster: Cluster, name: str, mode: str, nodes: int = 1) -> dict:
    obj = minimal(resources={"gpusPerNode": 0, "processesPerNode": 1},
                  curriculum={"stages": [{"seqLen": 65536, "nodes": nodes}]})
    obj["metadata"].update(name=name, namespace=NS)
    job = job_from_object(obj)
    body = build_pytorchjob(job, plan_curriculum(job.spec), 1)
    for replica in body["spec"]["pytorchReplicaSpecs"].values():
        replica["template"]["spec"]["containers"][0]["command"] = ["python", "-c", SCRIPT, mode]
    return dict(cluster.api.create_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs", body,
                                                            field_validation="Strict"))


def condition(cluster: Cluster, name: str, kind: str) -> bool:
    conds = (cluster.pytorchjob(f"{name}-s1-a1").get("status") or {}).get("conditions") or []
    return any(c["type"] == kind and c["status"] == "True" for c in conds)


def runs(root: Path, name: str) -> list[dict]:
    path = root / "ckpt" / NS / name / "stage-1" / "runs.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_runs_replicas_with_kubeflow_env_and_mapped_volumes(cluster, executor, tmp_path):
    submit(cluster, "two-nodes", "ok", nodes=2)
    wait_for(lambda: condition(cluster, "two-nodes", "Succeeded"), what="Succeeded", proc=executor)
    assert condition(cluster, "two-nodes", "Created")
    seen = runs(tmp_path / "root", "two-nodes")
    assert sorted(r["RANK"] for r in seen) == ["0", "1"] and {r["PET_NNODES"] for r in seen} == {"2"}
    assert {r["MASTER_ADDR"] for r in seen} == {"127.0.0.1"} and len({r["MASTER_PORT"] for r in seen}) == 1
    assert seen[0]["outputDir"] == str((tmp_path / "root" / "ckpt" / NS / "two-nodes" / "stage-1").resolve())


def test_failure_is_reported_with_exit_code_and_last_line(cluster, executor):
    submit(cluster, "broken", "crash")
    wait_for(lambda: condition(cluster, "broken", "Failed"), what="Failed", proc=executor)
    failed = next(c for c in cluster.pytorchjob("broken-s1-a1")["status"]["conditions"] if c["type"] == "Failed")
    assert failed["message"] == "replica Master exited with code 3: finishing with crash"


def test_suspend_stops_and_resume_restarts_and_restart_never_reruns_finished(cluster, executor, k8s_api, tmp_path):
    submit(cluster, "sleeper", "sleep")
    wait_for(lambda: condition(cluster, "sleeper", "Running"), what="Running", proc=executor)
    pids = json.loads((tmp_path / "root" / ".executor" / "pids" / f"{NS}_sleeper-s1-a1").read_text())
    cluster.api.patch_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs", "sleeper-s1-a1",
                                               {"spec": {"runPolicy": {"suspend": True}}})
    wait_for(lambda: condition(cluster, "sleeper", "Suspended"), what="Suspended", proc=executor)
    assert not Path(f"/proc/{pids['Master']}").exists() or \
        Path(f"/proc/{pids['Master']}/stat").read_text().split()[2] == "Z"
    cluster.api.patch_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs", "sleeper-s1-a1",
                                               {"spec": {"runPolicy": {"suspend": False}}})
    wait_for(lambda: condition(cluster, "sleeper", "Running") and not condition(cluster, "sleeper", "Suspended"),
             what="resumed", proc=executor)
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
