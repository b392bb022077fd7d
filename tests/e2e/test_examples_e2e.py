"""The shipped examples end to end, as users apply them.

* ``examples/tiny-cpu.yaml`` with only its step counts shortened (CI time), gates and everything else as
  shipped, through ``ctxext run`` *and* through ``ctxext operator`` + ``ctxext local-executor`` on the test
  API server: both reach Succeeded with the example's own gates (the perplexity ``maxIncrease`` gate
  judged against the base model's evaluation, which the operator runs as the job ``<cej>-s0-a1``), and
  the two paths agree on the baseline, every stage result and every gate outcome (parity: exact for
  accuracies and steps, relative 1e-4 for losses and perplexities; both are deterministic on one CPU).
* ``examples/llama3-8b-1m.yaml`` with only the model, lengths, steps and resources scaled down to the tiny
  model on CPU, gates and every other field as shipped, through the operator: the base model is evaluated
  first, stage 1 trains, and the shipped gates are judged. The tiny model retrieves only passkeys (0.00 on
  needle and RULER's tasks), so its RULER effective length stays below the stage length and the
  ``effectiveLength`` gate fails the job, as it should.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from tests.integration.operator_harness import CTXEXT, Cluster, OperatorProcess, Proc, wait_for
from tests.unit.helpers import ROOT, example

# Each test runs whole curricula (the tiny one twice, once per path): ~7 min on two idle cores, ~25 min on two
# busy ones, so they get more than the suite's 900 s; their own waits stop at 2400 s.
pytestmark = [pytest.mark.apiserver, pytest.mark.distributed, pytest.mark.timeout(3000)]
#: The example's 150 + 350 steps take ~6.5 min on two idle cores; 60 + 150 is the shortest we measured to
#: pass every shipped gate (stage 1: passkey@512 1.00, @128 1.00, ppl@128 +8.3% of the base's 6.52 vs
#: the 10% allowed; stage 2: passkey@1024 1.00, ppl@128 +0.6%).
TINY_STEPS = [60, 150]
TOL = 1e-4


def close(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) <= TOL * max(1.0, abs(float(a)))
    return bool(a == b)


def start_operator(k8s_api: str, tmp_path: Path, ns: str) -> tuple[Cluster, OperatorProcess, Proc]:
    config.load_kube_config(config_file=k8s_api)
    cluster = Cluster(client.CustomObjectsApi(), ns)
    operator = OperatorProcess(k8s_api, tmp_path / "operator.log").start()
    env = {**os.environ, "KUBECONFIG": k8s_api, "OMP_NUM_THREADS": "1"}
    executor = Proc(["local-executor", "--root", str(tmp_path / "root"), "-n", ns, "--poll", "0.5"],
                    tmp_path / "executor.log", env).start()
    return cluster, operator, executor


def finish(cluster: Cluster, name: str, operator: OperatorProcess) -> dict[str, Any]:
    return dict(wait_for(lambda: (s := cluster.status(name)).get("phase") in ("Succeeded", "Failed") and s,
                         what=f"{name} to finish", timeout=2400, proc=operator))


def comparable(result: dict[str, Any]) -> dict[str, Any]:
    ev = result["evaluation"]
    return {"stepsDone": result["stepsDone"], "finalLoss": result["finalLoss"],
            "evaluation": {k: ev[k] for k in ("passkeyAccuracy", "perplexity", "effectiveLength")},
            "gates": [(g["metric"], g["atLength"], g["passed"], g["value"]) for g in result["gates"]]}


def test_tiny_cpu_example_succeeds_with_its_own_gates_and_the_same_numbers_on_both_paths(k8s_api, tmp_path):
    shipped = example("tiny-cpu.yaml")
    obj = json.loads(json.dumps(shipped))
    for stage, steps in zip(obj["spec"]["curriculum"]["stages"], TINY_STEPS, strict=True):
        stage["steps"] = steps
    manifest = tmp_path / "tiny-cpu.yaml"
    manifest.write_text(yaml.safe_dump(obj, sort_keys=False))
    assert obj["spec"]["evaluation"] == shipped["spec"]["evaluation"]  # gates as shipped

    workdir = tmp_path / "local"
    run = subprocess.run([CTXEXT, "run", str(manifest), "--workdir", str(workdir), "--metrics-port", "0"],
                         env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "160"}, capture_output=True,
                         text=True, timeout=2400)
    assert run.returncode == 0, run.stdout + run.stderr
    local = [json.loads((workdir / f"stage-{i}" / "result.json").read_text()) for i in (1, 2)]
    local_base = json.loads((workdir / "baseline" / "evaluation.json").read_text())
    report = json.loads((workdir / "report.json").read_text())
    assert report["status"] == "Succeeded" and all(c["passed"] for c in report["checks"]), report["checks"]
    # the final model is the last stage's, at its theta (these checks moved here from test_local_run.py)
    assert [s["index"] for s in report["stages"]] == [1, 2] and (workdir / "loss_by_position.png").stat().st_size
    model_config = json.loads((workdir / "model" / "config.json").read_text())
    assert model_config["rope_parameters"]["rope_theta"] == pytest.approx(report["stages"][-1]["ropeTheta"])
    again = subprocess.run([CTXEXT, "run", str(manifest), "--workdir", str(workdir), "--metrics-port", "0"],
                           env={**os.environ, "COLUMNS": "160"}, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done (earlier run)") == 2, again.stdout + again.stderr

    cluster, operator, executor = start_operator(k8s_api, tmp_path, "examples-tiny")
    try:
        cluster.create(obj)
        status = finish(cluster, "tiny-cpu", operator)
        assert status["phase"] == "Succeeded", json.dumps(status.get("conditions"), indent=1) + executor.tail()
    finally:
        executor.stop()
        operator.stop()
    assert sorted(cluster.pytorchjobs("tiny-cpu")) == ["tiny-cpu-s0-a1", "tiny-cpu-s1-a1", "tiny-cpu-s2-a1"]
    base = status["baseline"]
    assert base["phase"] == "Succeeded" and base["attempts"] == 1
    remote = [s["result"] for s in status["stages"]]
    assert [len(r["gates"]) for r in remote] == [3, 3] and all(g["passed"] for r in remote for g in r["gates"])
    assert "over the base model's" in remote[0]["gates"][2]["message"] or "under the base model's" in \
        remote[0]["gates"][2]["message"]
    # parity: the same baseline, stage results and gate outcomes
    keys = ("passkeyAccuracy", "perplexity", "effectiveLength")
    assert close({k: base["result"]["evaluation"][k] for k in keys}, {k: local_base[k] for k in keys})
    for i in (0, 1):
        assert close(comparable(remote[i]), comparable(local[i])), (comparable(remote[i]), comparable(local[i]))


def llama3_scaled(root: Path) -> dict[str, Any]:
    """examples/llama3-8b-1m.yaml with model, lengths, steps and resources scaled to the tiny model on CPU."""
    obj = example("llama3-8b-1m.yaml")
    spec = obj["spec"]
    tiny = json.loads((ROOT / "operator/ctxext/data/tiny/config.json").read_text())
    spec["model"].update(ropeTheta=10000, headDim=32, originalContextLength=128, architecture={
        "numLayers": 4, "hiddenSize": 128, "intermediateSize": 512, "numAttentionHeads": 4, "numKeyValueHeads": 4,
        "vocabSize": tiny["vocab_size"], "tieWordEmbeddings": True})
    lengths = [512, 2048, 4096, 8192]  # 128 x 4, 16, 32, 64 (the example: 8192 x 8, 32, 64, 128)
    spec["targetContextLength"] = lengths[-1]
    sp = [None, 4, 8, 8]  # sequence parallelism scaled with the ranks: 2 processes per node instead of 8 GPUs
    for stage, n, degree in zip(spec["curriculum"]["stages"], lengths, sp, strict=True):
        stage.update(seqLen=n, steps=2)
        if degree:
            stage["sequenceParallel"] = degree
    spec["parallelism"]["sequenceParallel"] = 2
    spec["resources"] = {"gpusPerNode": 0, "processesPerNode": 2, "image": spec["resources"]["image"], "cpu": "2",
                         "memory": "8Gi"}
    # The example's volumes, filled as the cluster's would be: the model on claim "models", the corpus on "datasets"
    shutil.copytree(ROOT / "operator/ctxext/data/tiny", root / "models/models/llama-3-8b-instruct")
    corpus = root / "data/datasets/slimpajama-long"
    corpus.mkdir(parents=True)
    from ctxext_trainer.data.sources import load_documents

    docs = load_documents("builtin://tiny-corpus")
    (corpus / "part-0.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return obj


@contextmanager
def kueue_admits(cluster: Cluster) -> Iterator[list[str]]:
    """Act as Kueue with free quota: resume every suspended PyTorchJob that names a queue (the example sets
    ``scheduling.queueName``), as Kueue does on admission; yields the names it admitted."""
    admitted: list[str] = []
    stop = threading.Event()

    def admit() -> None:
        while not stop.wait(0.5):
            for name, job in cluster.pytorchjobs("llama3-8b-1m").items():
                queued = "kueue.x-k8s.io/queue-name" in (job["metadata"].get("labels") or {})
                if queued and (job["spec"].get("runPolicy") or {}).get("suspend"):
                    cluster.api.patch_namespaced_custom_object("kubeflow.org", "v1", cluster.ns,
                                                               "pytorchjobs", name,
                                                               {"spec": {"runPolicy": {"suspend": False}}})
                    admitted.append(name)

    thread = threading.Thread(target=admit, daemon=True)
    thread.start()
    try:
        yield admitted
    finally:
        stop.set()
        thread.join()


def test_llama3_example_scaled_to_the_tiny_model_runs_its_shipped_gates_end_to_end(k8s_api, tmp_path):
    obj = llama3_scaled(tmp_path / "root")
    shipped = example("llama3-8b-1m.yaml")["spec"]
    for field in ("evaluation", "data", "checkpoint", "failurePolicy", "scheduling", "env"):
        assert obj["spec"][field] == shipped[field]
    cluster, operator, executor = start_operator(k8s_api, tmp_path, "examples-llama")
    try:
        with kueue_admits(cluster):
            cluster.create(obj)
            status = finish(cluster, "llama3-8b-1m", operator)
    finally:
        executor.stop()
        operator.stop()
    assert sorted(cluster.pytorchjobs("llama3-8b-1m")) == ["llama3-8b-1m-s0-a1", "llama3-8b-1m-s1-a1"]
    base = status["baseline"]
    assert base["phase"] == "Succeeded", json.dumps(base, indent=1) + executor.tail()
    assert set(base["result"]["evaluation"]["perplexity"]) == {"128", "512"}
    stage1 = status["stages"][0]
    result = stage1["result"]
    assert result["stepsDone"] == 2 and result["seqLen"] == 512, json.dumps(stage1, indent=1)
    gates = {g["metric"]: g for g in result["gates"]}
    assert set(gates) == {"passkeyAccuracy", "effectiveLength", "perplexity"}
    assert "the base model's" in gates["perplexity"]["message"]  # maxIncrease judged against the baseline
    assert gates["effectiveLength"]["passed"] is False and gates["effectiveLength"]["value"] < 512
    failed = cluster.condition("llama3-8b-1m", "Failed")
    assert status["phase"] == "Failed" and failed["reason"] == "GateFailed"
    assert failed["message"].startswith("stage 1/4 failed: evaluation gate not met: ") and \
        "effectiveLength = " in failed["message"]
    assert [s["attempts"] for s in status["stages"]] == [1, 0, 0, 0]
