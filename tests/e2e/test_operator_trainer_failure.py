"""A failure the real trainer names reaches the ContextExtensionJob's status through the operator (#27 item 5).

Test API server + `ctxext operator` + `ctxext local-executor` + the real trainer, on a tiny model whose RoPE
type (``dynamic``) cannot be theta-scaled, on a volume (``pvc://``) the operator cannot read, so only the
trainer finds out, as on a cluster. The trainer fails with ``reasonCode: UnsupportedModel``; the operator
must read it from ``status.results`` and fail the job at once ("retrying cannot help"), never spending
``maxRetries`` on it. Without the trainer's status report the operator sees only the training-operator's
"reached the specified backoff limit" and retries.
"""

from __future__ import annotations

import json
import os

import pytest
from kubernetes import client, config

from tests.integration.operator_harness import Cluster, OperatorProcess, Proc, free_port, wait_for
from tests.unit.helpers import example

pytestmark = [pytest.mark.apiserver]
NS = "trainer-failure"
NAME = "dynamic-rope"


def manifest() -> dict:
    obj = example("tiny-cpu.yaml")
    obj["metadata"] = {"name": NAME, "namespace": NS}
    spec = obj["spec"]
    spec["model"]["source"] = "pvc://models/dynamic"  # the operator cannot read it, as on a cluster
    spec["targetContextLength"] = 256
    spec["curriculum"]["stages"] = [{"seqLen": 256, "steps": 2}]
    spec["resources"]["processesPerNode"] = 1
    spec["evaluation"] = {"tasks": ["perplexity"], "lengths": [128], "samplesPerCell": 1}
    spec["failurePolicy"] = {"maxRetries": 2, "backoffSeconds": 0}
    spec["metrics"] = {"port": free_port()}
    return obj


def test_unsupported_model_reaches_status_and_is_not_retried(k8s_api, tmp_path, backend):
    from ctxext_trainer.tiny.model import new_tiny_model, save_tiny

    root = tmp_path / "root"
    base = root / "models" / "models" / "dynamic"  # where the local executor mounts pvc://models/dynamic
    save_tiny(new_tiny_model(0), base)
    cfg = json.loads((base / "config.json").read_text())
    cfg.pop("rope_scaling", None)
    cfg["rope_parameters"] = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    (base / "config.json").write_text(json.dumps(cfg))
    config.load_kube_config(config_file=k8s_api)
    ns = f"{NS}-{backend}"
    cluster = Cluster(client.CustomObjectsApi(), ns, backend)
    operator = OperatorProcess(k8s_api, tmp_path / "operator.log", backend).start()
    env = {**os.environ, "KUBECONFIG": k8s_api, "OMP_NUM_THREADS": "1"}
    executor = Proc(["local-executor", "--root", str(root), "-n", ns, "--poll", "0.5"],
                    tmp_path / "executor.log", env).start()
    try:
        cluster.create(manifest())
        status = wait_for(lambda: (s := cluster.status(NAME)).get("phase") in ("Succeeded", "Failed") and s,
                          what="the job to finish", timeout=300, proc=operator)
    finally:
        executor.stop()
        operator.stop()
    failed = cluster.condition(NAME, "Failed")
    assert status["phase"] == "Failed", json.dumps(status, indent=1) + executor.tail()
    assert failed["reason"] == "UnsupportedModel", failed
    assert failed["message"].startswith("stage 1/1 attempt 1 failed: the base model's RoPE type 'dynamic' cannot be")
    assert failed["message"].endswith("; retrying cannot help")
    assert sorted(cluster.jobs(NAME)) == [f"{NAME}-s1-a1"]  # no retry was created
    result = status["results"][f"{NAME}-s1-a1"]
    assert (result["status"], result["reasonCode"], result["stage"], result["attempt"]) == (
        "Failed", "UnsupportedModel", 1, 1)
    if backend == "trainjob":  # torch-distributed's Job backoffLimit (6) restarted the node: each restart left at once
        node_logs = "".join(p.read_text(errors="replace") for p in (root / ".executor" / "logs").rglob("*.log"))
        assert node_logs.count("the base model's RoPE type 'dynamic' cannot be") == 1  # the stage ran once
        assert node_logs.count("attempt dynamic-rope-s1-a1 already ended: Failed (UnsupportedModel)") >= 1
