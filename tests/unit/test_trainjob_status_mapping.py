"""The pure mapping from a trainer step to TrainJob ``status.trainerStatus`` and who sets ``$CTXEXT_TRAINJOB``.

The field limits come from the upstream v2.3.0 CRD (tests/k8s/crds/kubeflow-trainer/): progressPercentage
int32 0..100, estimatedRemainingSeconds int32 >= 0, metrics[] {name, value} strings of 1..64 characters,
lastUpdatedTime date-time (required when trainerStatus is present).
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pytest
import yaml

from ctxext.config import OperatorConfig
from ctxext.controller.backends.trainjob import build_trainjob
from ctxext.controller.builder import build_pytorchjob
from ctxext.manifest import job_from_object
from ctxext.planner import plan_curriculum
from ctxext.stage_config import TRAINJOB_ENV_VAR, StageConfig
from ctxext_trainer.trainjob_status import (
    INT32_MAX,
    TrainJobStatusWriter,
    eta_seconds,
    format_metric,
    progress_percentage,
    trainer_status,
)

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "tests" / "k8s" / "crds" / "kubeflow-trainer" / "trainer.kubeflow.org_trainjobs.yaml"
NOW = dt.datetime(2026, 12, 7, 14, 30, 5, 123456, tzinfo=dt.UTC)


def _schema() -> dict:
    crd = yaml.safe_load(CRD.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"][
        "trainerStatus"]


def test_the_crd_limits_are_the_ones_the_mapping_keeps() -> None:
    props = _schema()["properties"]
    assert props["progressPercentage"] == {**props["progressPercentage"], "format": "int32", "minimum": 0,
                                           "maximum": 100}
    assert props["estimatedRemainingSeconds"]["format"] == "int32" and INT32_MAX == 2**31 - 1
    item = props["metrics"]["items"]["properties"]
    assert item["value"]["maxLength"] == 64 and item["name"]["maxLength"] == 64


@pytest.mark.parametrize(("step", "total", "want"), [(0, 400, 0), (1, 400, 0), (4, 400, 1), (200, 400, 50),
                                                     (399, 400, 99), (400, 400, 100), (401, 400, 100), (3, 0, 100)])
def test_progress_is_whole_percent_rounded_down(step: int, total: int, want: int) -> None:
    assert progress_percentage(step, total) == want


def test_eta_is_mean_step_time_times_steps_left() -> None:
    assert eta_seconds(4, 10.0, 6) == 15
    assert eta_seconds(3, 10.0, 1) == 4  # 3.33 s a step, rounded up
    assert eta_seconds(0, 10.0, 6) is None and eta_seconds(2, 0.0, 6) is None
    assert eta_seconds(2, math.inf, 6) is None
    assert eta_seconds(2, 10.0, 0) == 0 == eta_seconds(0, 0.0, 0)
    assert eta_seconds(1, 3600.0 * 24 * 365, 10**6) == INT32_MAX


@pytest.mark.parametrize("value", [2.3104567891234, 1e-300, -1e300, math.exp(700), 0.0, 7, math.nan, -math.inf])
def test_metric_values_are_short_strings(value: float) -> None:
    text = format_metric(value)
    assert text is not None and 1 <= len(text) <= 64
    if math.isfinite(value):
        assert float(text) == pytest.approx(value, rel=1e-5)


def test_trainer_status_of_a_step() -> None:
    got = trainer_status(step=150, total_steps=400, loss=2.0, grad_norm=0.75, eta=300, now=NOW)
    assert got == {"progressPercentage": 37, "estimatedRemainingSeconds": 300,
                   "metrics": [{"name": "loss", "value": "2"}, {"name": "perplexity", "value": "7.38906"},
                               {"name": "grad_norm", "value": "0.75"}],
                   "lastUpdatedTime": "2026-12-07T14:30:05Z"}


def test_unknown_values_are_left_out_or_cleared() -> None:
    got = trainer_status(step=0, total_steps=10, loss=None, grad_norm=None, eta=None, now=NOW)
    assert got["metrics"] == [] and got["estimatedRemainingSeconds"] is None  # null: a merge patch clears it
    nan = trainer_status(step=1, total_steps=10, loss=math.nan, grad_norm=math.inf, eta=1, now=NOW)
    assert nan["metrics"] == [{"name": "loss", "value": "nan"}, {"name": "grad_norm", "value": "inf"}]


def _stage() -> StageConfig:
    return StageConfig(job="j", namespace="team-a", job_name="j-s1-a1", stage=1, total_stages=1, model_path="/m",
                       output_dir="/o", seq_len=256, rope_theta=2e4, original_context_length=128, steps=4,
                       learning_rate=1e-3)


class _Calls:
    def __init__(self) -> None:
        self.bodies: list[tuple] = []

    def patch_namespaced_custom_object_status(self, *args, **kwargs):
        self.bodies.append((args, kwargs))


def test_only_rank0_under_a_trainjob_writes_and_it_is_throttled_but_the_end_is_forced() -> None:
    calls = _Calls()
    env = {TRAINJOB_ENV_VAR: "j-s1-a1"}
    assert not TrainJobStatusWriter(_stage(), is_rank0=False, client=lambda: calls, min_interval=0,
                                    environ=env).progress(step=1, loss=1.0, force=True)
    assert not TrainJobStatusWriter(_stage(), is_rank0=True, client=lambda: calls, min_interval=0,
                                    environ={}).progress(step=1, loss=1.0, force=True)
    assert calls.bodies == []
    writer = TrainJobStatusWriter(_stage(), is_rank0=True, client=lambda: calls, min_interval=3600, environ=env)
    assert writer.progress(step=1, loss=3.0, grad_norm=2.0)
    assert not writer.progress(step=2, loss=2.0, grad_norm=1.0)  # throttled, but its grad norm is kept
    assert writer.progress(step=4, loss=1.0, force=True)
    (args, kwargs), last = calls.bodies[0], calls.bodies[-1][0][-1]["status"]["trainerStatus"]
    assert args[:5] == ("trainer.kubeflow.org", "v1alpha1", "team-a", "trainjobs", "j-s1-a1")
    assert kwargs["field_validation"] == "Strict"
    assert last["progressPercentage"] == 100 and last["estimatedRemainingSeconds"] == 0
    assert last["metrics"][-1] == {"name": "grad_norm", "value": "1"}


def test_only_the_trainjob_builder_names_the_trainjob() -> None:
    obj = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    job = job_from_object(obj)
    plan = plan_curriculum(job.spec)
    tj = build_trainjob(job, plan, 1, attempt=2, config=OperatorConfig())
    assert {"name": TRAINJOB_ENV_VAR, "value": tj["metadata"]["name"]} in tj["spec"]["trainer"]["env"]
    ptj = build_pytorchjob(job, plan, 1, attempt=2, config=OperatorConfig())
    for replica in ptj["spec"]["pytorchReplicaSpecs"].values():
        for container in replica["template"]["spec"]["containers"]:
            assert TRAINJOB_ENV_VAR not in {e["name"] for e in container.get("env", [])}
