"""Every query of the Grafana dashboard returns data from a real Prometheus scraping the real exporters.

- Prometheus: Debian's ``prometheus`` on loopback, a generated config (1 s scrapes), a temporary TSDB.
- Operator: ``ctxext operator`` against the test API server reconciles a one-stage ContextExtensionJob
  (jobs by phase, reconcile latency, stage transitions, PyTorchJobs created, stage duration).
- Trainer: ``ctxext local-executor`` (the development stand-in for the Kubeflow training-operator) runs
  the PyTorchJob the operator creates with torchrun on CPU, from a tiny random Llama: the real trainer
  rank serves its /metrics (port ``spec.metrics.port``), trains, evaluates, and reports progress and its
  result into the job's status. So that the last (evaluation) values are scraped deterministically,
  tests/chart/hold_metrics/ keeps the rank's endpoint open after its stage until Prometheus has scraped
  it once more.

Each dashboard expression is then evaluated as Grafana would (variables substituted, a range query over
the test's time window) and must return at least one series with a finite value; each template variable
must list the job's values.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from tests.chart import dashboard as dash
from tests.chart.prometheus import Prometheus
from tests.integration.operator_harness import Cluster, OperatorProcess, Proc, free_port, wait_for

pytestmark = [pytest.mark.apiserver, pytest.mark.distributed, pytest.mark.slow]
NS = "team-b"
JOB = "prom-tiny"
HOLD_HOOK = Path(__file__).resolve().parent / "hold_metrics"


def manifest(model_dir: Path, metrics_port: int) -> dict[str, Any]:
    """One short CPU stage (128 → 256 tokens), evaluated at 128 tokens, no gates."""
    return {
        "apiVersion": "ctxext.dev/v1alpha1", "kind": "ContextExtensionJob", "metadata": {"name": JOB},
        "spec": {
            "model": {"source": f"file://{model_dir}", "ropeTheta": 10000, "headDim": 32,
                      "originalContextLength": 128},
            "targetContextLength": 256,
            "curriculum": {"thetaRule": "scaling-law",
                           "stageDefaults": {"steps": 3, "learningRate": 1.0e-3, "batchSize": 1},
                           "stages": [{"seqLen": 256}]},
            "resources": {"gpusPerNode": 0, "processesPerNode": 1, "image": "ghcr.io/ctxext/trainer:0.1.0"},
            "parallelism": {"sequenceParallel": 1, "zeroStage": 0, "activationCheckpointing": False},
            "data": {"source": "builtin://tiny-corpus", "syntheticRetrievalRatio": 0.5},
            "evaluation": {"tasks": ["passkey", "perplexity"], "lengths": [128], "depths": [0.0, 1.0],
                           "samplesPerCell": 1, "gates": []},
            "checkpoint": {"intervalSteps": 3},
            "metrics": {"port": metrics_port},
        },
    }


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random tiny Llama (the shape of ctxext's demo model): training it well is not the point here."""
    from ctxext_trainer.tiny.model import new_tiny_model, save_tiny

    return save_tiny(new_tiny_model(0), tmp_path_factory.mktemp("tiny-model"))


def release_held_ranks(prom: Prometheus, hold_dir: Path, released: set[str]) -> None:
    """Release a stage's held ranks once Prometheus has scraped the trainer after they were held."""
    for held in hold_dir.glob("held-*"):
        stage = held.name.split("-")[1]
        if stage in released:
            continue
        since = float(held.read_text())
        # timestamp() of a plain selector is the scrape's own time (of `up == 1` it would be "now").
        scraped = prom.query('timestamp(up{job="ctxext-trainer"}) and up{job="ctxext-trainer"} == 1')
        if scraped and float(scraped[0]["value"][1]) > since:
            (hold_dir / f"release-{stage}").touch()
            released.add(stage)


def finite_values(series: list[dict[str, Any]]) -> int:
    return sum(1 for s in series for _, v in s["values"] if math.isfinite(float(v)))


def test_every_dashboard_query_returns_data(k8s_api, tmp_path, tiny_model):
    config.load_kube_config(config_file=k8s_api)
    cluster = Cluster(client.CustomObjectsApi(), NS)
    trainer_port, hold_dir = free_port(), tmp_path / "hold"
    hold_dir.mkdir()
    operator = OperatorProcess(k8s_api, tmp_path / "operator.log")
    env = {**os.environ, "KUBECONFIG": k8s_api, "OMP_NUM_THREADS": "1", "CTXEXT_TEST_HOLD_DIR": str(hold_dir),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HOLD_HOOK), os.environ.get("PYTHONPATH")]))}
    executor = Proc(["local-executor", "--root", str(tmp_path / "root"), "-n", NS, "--poll", "0.5"],
                    tmp_path / "executor.log", env)
    scrape = {"ctxext-operator": [f"127.0.0.1:{operator.metrics_port}"],
              "ctxext-trainer": [f"127.0.0.1:{trainer_port}"]}
    with Prometheus(tmp_path / "prometheus", scrape) as prom:
        start = time.time()
        try:
            operator.start()
            executor.start()
            cluster.create(manifest(tiny_model, trainer_port))
            released: set[str] = set()

            def finished() -> str | None:
                release_held_ranks(prom, hold_dir, released)
                phase = cluster.status(JOB).get("phase")
                return phase if phase in ("Succeeded", "Failed") else None

            phase = wait_for(finished, what=f"{JOB} to finish", timeout=600, proc=operator)
            assert phase == "Succeeded", executor.tail()
            assert released == {"1"}, f"held stages released: {released}\n{executor.tail()}"
            wait_for(lambda: prom.query('ctxext_stage_duration_seconds_count{job="ctxext-operator"} > 0'),
                     what="the operator's stage duration scraped")
            end = time.time() + 1
        finally:
            executor.stop()
            operator.stop()

        board = dash.load()
        empty = []
        for title, expr in dash.expressions(board):
            query = dash.substitute(expr, job=JOB)
            series = prom.query_range(query, start, end)
            if not finite_values(series):
                empty.append(f"{title}: {query}")
        assert empty == [], "dashboard queries without data:\n" + "\n".join(empty)

        variables = {name: prom.label_values(label, dash.substitute(selector, job=JOB), start, end)
                     for name, (selector, label) in
                     ((n, dash.parse_label_values(q)) for n, q in dash.variable_queries(board).items())}
        assert JOB in variables["job"]
        assert NS in variables["namespace"]
        assert variables["stage"] == ["1"]
        assert "passkey" in variables["task"]
