"""Trainer rank 0 writes ``status.trainerStatus`` of its TrainJob on the real API server (Trainer v2.3.0 CRD).

* A real trainer run (``python -m ctxext_trainer``, 1 process, 6 steps) under ``$CTXEXT_TRAINJOB`` leaves a
  trainerStatus that the server accepted with strict field validation and that reads back with progress
  100, ETA 0 and loss / perplexity / grad_norm.
* A real trainer run whose TrainJob does not exist (the server answers 404) trains to the end and logs
  the refusal once.
* An older Trainer (a TrainJob CRD without ``trainerStatus``; here the real v2.3.0 CRD with that field
  removed, served under a test group so the session's real CRD stays) refuses the strict patch; the
  writer, driven by the trainer's own report calls for every step, logs that once and stops writing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from ctxext.config import OperatorConfig
from ctxext.controller.backends.trainjob import build_trainjob
from ctxext.manifest import job_from_object
from ctxext.planner import plan_curriculum
from ctxext.stage_config import TRAINJOB_ENV_VAR, StageConfig
from ctxext_trainer.reporting import StatusReporter
from ctxext_trainer.trainjob_status import GROUP, PLURAL, VERSION
from tests.trainer.conftest import run_trainer, stage_config, trainer_env

pytestmark = pytest.mark.apiserver
ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "tests" / "k8s" / "crds" / "kubeflow-trainer" / "trainer.kubeflow.org_trainjobs.yaml"
NS = "default"
OLD_GROUP = "trainer-v21.ctxext.test"


@pytest.fixture(scope="module")
def api(k8s_api: str) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(config.new_client_from_config(config_file=k8s_api))


def _trainjob(api: client.CustomObjectsApi, group: str = GROUP) -> dict:
    """The TrainJob the operator would create for stage 1 of the tiny example (tiny-cpu-s1-a1)."""
    obj = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    obj["metadata"]["namespace"] = NS
    job = job_from_object(obj)
    body = build_trainjob(job, plan_curriculum(job.spec), 1, config=OperatorConfig())
    body["apiVersion"] = f"{group}/{VERSION}"
    return api.create_namespaced_custom_object(group, VERSION, NS, PLURAL, body, field_validation="Strict")


def _refusals(output: str) -> list[str]:
    return [line for line in output.splitlines() if "refused status.trainerStatus" in line]


def test_a_trainer_run_leaves_a_trainer_status_that_validates(api, tiny_model: Path, corpus: Path,
                                                              tmp_path: Path, k8s_api: str) -> None:
    made = _trainjob(api)
    name = made["metadata"]["name"]
    env = next(e for e in made["spec"]["trainer"]["env"] if e["name"] == TRAINJOB_ENV_VAR)
    assert env["value"] == name  # the builder tells the trainer its TrainJob
    out = tmp_path / "out"
    proc = run_trainer(stage_config(tiny_model, corpus, out, steps=6),
                       env=trainer_env(**{TRAINJOB_ENV_VAR: env["value"], "KUBECONFIG": k8s_api}))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not _refusals(proc.stdout + proc.stderr)

    status = api.get_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, name)["status"]
    got = status["trainerStatus"]
    assert got["progressPercentage"] == 100 and got["estimatedRemainingSeconds"] == 0
    metrics = {m["name"]: m["value"] for m in got["metrics"]}
    assert list(metrics) == ["loss", "perplexity", "grad_norm"]
    result = json.loads((out / "result.json").read_text())
    assert float(metrics["loss"]) == pytest.approx(result["finalLoss"], rel=1e-5)
    assert float(metrics["perplexity"]) == pytest.approx(2.718281828 ** result["finalLoss"], rel=1e-5)
    assert float(metrics["grad_norm"]) > 0
    assert got["lastUpdatedTime"].endswith("Z")
    # what the server stored is a valid trainerStatus: the same object goes back through strict validation
    api.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, name,
                                              {"status": {"trainerStatus": got}}, field_validation="Strict")


def test_a_missing_trainjob_refuses_and_training_goes_on(api, tiny_model: Path, corpus: Path, tmp_path: Path,
                                                          k8s_api: str) -> None:
    out = tmp_path / "out"
    proc = run_trainer(stage_config(tiny_model, corpus, out, steps=6),
                       env=trainer_env(**{TRAINJOB_ENV_VAR: "no-such-trainjob", "KUBECONFIG": k8s_api}))
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs
    assert json.loads((out / "result.json").read_text())["stepsDone"] == 6
    (line,) = _refusals(logs)
    assert "HTTP 404" in line and "no-such-trainjob" in line


@pytest.fixture(scope="module")
def older_trainer(api, k8s_api: str) -> Iterator[str]:
    """The v2.3.0 TrainJob CRD without status.trainerStatus (as Trainer before v2.2), under OLD_GROUP."""
    crd = yaml.safe_load(CRD.read_text())
    crd["metadata"]["name"] = f"{PLURAL}.{OLD_GROUP}"
    crd["spec"]["group"] = OLD_GROUP
    for version in crd["spec"]["versions"]:
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        del status["properties"]["trainerStatus"]
    with config.new_client_from_config(config_file=k8s_api) as raw:
        ext = client.ApiextensionsV1Api(raw)
        ext.create_custom_resource_definition(crd, _preload_content=False)
        deadline = time.monotonic() + 60
        while True:
            try:
                api.list_namespaced_custom_object(OLD_GROUP, VERSION, NS, PLURAL, limit=1)
                break
            except client.ApiException as exc:
                assert exc.status in (404, 429, 503) and time.monotonic() < deadline
                time.sleep(0.1)
        yield OLD_GROUP
        ext.delete_custom_resource_definition(crd["metadata"]["name"])


def test_an_older_trainer_refuses_the_strict_patch_once(api, older_trainer: str, k8s_api: str,
                                                        monkeypatch, caplog) -> None:
    name = _trainjob(api, group=older_trainer)["metadata"]["name"]
    monkeypatch.setenv(TRAINJOB_ENV_VAR, name)
    monkeypatch.setenv("KUBECONFIG", k8s_api)
    stage = StageConfig(job="old", namespace=NS, job_name="old-s1-a1", stage=1, total_stages=1, model_path="/m",
                        output_dir="/o", seq_len=256, rope_theta=2e4, original_context_length=128, steps=5,
                        learning_rate=1e-3, device="cpu")
    reporter = StatusReporter(stage, is_rank0=True, min_interval=0)  # no throttle: every step tries
    reporter.trainjob.resource = (older_trainer, VERSION, PLURAL)
    with caplog.at_level(logging.WARNING, logger="ctxext_trainer.trainjob_status"):
        for step in range(1, 6):  # what train_loop.run_steps and stage.run_stage call
            reporter.progress(step=step, loss=2.0 / step, tokens_per_second=100.0, grad_norm=0.5)
        reporter.progress(step=5, loss=0.4, tokens_per_second=None, force=True)
    (record,) = caplog.records
    assert "refused status.trainerStatus" in record.getMessage()
    assert reporter.trainjob.refused is not None and len(record.getMessage()) < 500
    assert reporter.trainjob.refused.startswith("HTTP 422")
    assert 'unknown field "status.trainerStatus"' in reporter.trainjob.refused
    got = api.get_namespaced_custom_object_status(older_trainer, VERSION, NS, PLURAL, name)
    assert "trainerStatus" not in (got.get("status") or {})  # refused, not pruned and stored
