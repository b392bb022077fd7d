"""The whole loop on CPU: test API server + `ctxext operator` + `ctxext local-executor` + the real trainer
(torchrun, 2 processes, gloo) run a 3-stage tiny curriculum to Succeeded.

A freshly initialised tiny model and a few steps per stage: this checks the machinery (one PyTorchJob
per stage attempt, stage chaining through the checkpoint volume, results and progress in status,
gates), not the recipe.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from kubernetes import client, config

from tests.integration.operator_harness import Cluster, OperatorProcess, Proc, free_port, wait_for
from tests.unit.helpers import example

pytestmark = [pytest.mark.apiserver, pytest.mark.distributed]
NS = "e2e"
NAME = "tiny3"
LENGTHS = [192, 256, 320]


def manifest(base: Path) -> dict:
    obj = example("tiny-cpu.yaml")
    obj["metadata"] = {"name": NAME, "namespace": NS}
    spec = obj["spec"]
    spec["model"]["source"] = f"file://{base}"
    spec["targetContextLength"] = LENGTHS[-1]
    spec["curriculum"]["stages"] = [{"seqLen": n, "steps": 4} for n in LENGTHS]
    spec["curriculum"]["stageDefaults"].update(warmupSteps=1, batchSize=2)
    spec["checkpoint"] = {"intervalSteps": 2}
    spec["evaluation"] = {"tasks": ["passkey", "perplexity"], "lengths": [128], "depths": [0.5],
                          "samplesPerCell": 1, "gates": [{"metric": "perplexity", "atLength": "original",
                                                          "max": 1.0e6}]}
    spec["failurePolicy"] = {"maxRetries": 1, "backoffSeconds": 0}
    spec["metrics"] = {"port": free_port()}
    return obj


def test_operator_and_local_executor_run_three_stages_to_succeeded(k8s_api, tmp_path, backend):
    from ctxext_trainer.tiny.model import new_tiny_model, save_tiny

    base, root = tmp_path / "base", tmp_path / "root"
    save_tiny(new_tiny_model(0), base)
    config.load_kube_config(config_file=k8s_api)
    ns = f"{NS}-{backend}"
    cluster = Cluster(client.CustomObjectsApi(), ns, backend)
    operator = OperatorProcess(k8s_api, tmp_path / "operator.log", backend).start()
    env = {**os.environ, "KUBECONFIG": k8s_api, "OMP_NUM_THREADS": "1"}
    executor = Proc(["local-executor", "--root", str(root), "-n", ns, "--poll", "0.5"],
                    tmp_path / "executor.log", env).start()
    try:
        cluster.create(manifest(base))
        status = wait_for(lambda: (s := cluster.status(NAME)).get("phase") in ("Succeeded", "Failed") and s,
                          what="the curriculum to finish", timeout=900, proc=operator)
        assert status["phase"] == "Succeeded", json.dumps(status.get("conditions"), indent=1) + executor.tail()
    finally:
        executor.stop()
        operator.stop()

    jobs = cluster.jobs(NAME)
    assert sorted(jobs) == [f"{NAME}-s{i}-a1" for i in (1, 2, 3)]
    assert {j["kind"] for j in jobs.values()} == {"PyTorchJob" if backend == "pytorchjob" else "TrainJob"}
    assert status["backend"] == next(iter(jobs.values()))["kind"]
    stages = status["stages"]
    assert [(s["index"], s["seqLen"], s["phase"], s["attempts"]) for s in stages] == [
        (i + 1, n, "Succeeded", 1) for i, n in enumerate(LENGTHS)]
    thetas = [s["ropeTheta"] for s in stages]
    assert thetas == sorted(thetas) and thetas[0] > 10000
    for s in stages:
        result = s["result"]
        assert result["status"] == "Succeeded" and result["stepsDone"] == 4 and result["seqLen"] == s["seqLen"]
        assert isinstance(result["finalLoss"], float) and result["evaluation"]["perplexity"]
        assert [g["passed"] for g in result["gates"]] == [True]  # the operator records gate outcomes
    assert set(status["results"]) == {f"{NAME}-s{i}-a1" for i in (1, 2, 3)}
    assert status["progress"]["stage"] == 3 and status["progress"]["step"] == 4
    assert status["stage"] == "3/3" and isinstance(status["loss"], float)
    model = Path(status["finalModelPath"])
    assert model == (root / "ckpt" / ns / NAME / "stage-3" / "model").resolve()
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["rope_parameters"]["rope_theta"] == pytest.approx(thetas[-1])
    # Each stage started from the previous stage's model.
    stage2 = json.loads((root / "ckpt" / ns / NAME / "stage-2" / "result.json").read_text())
    assert stage2["jobName"] == f"{NAME}-s2-a1"
