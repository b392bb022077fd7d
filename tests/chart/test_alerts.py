"""The chart's PrometheusRule, run by the real ``promtool`` (Debian's prometheus package) on series whose
names and labels are taken from the project's real exporters (the trainer's rank-0 registry and the
operator's), plus the target labels Prometheus adds (job, namespace, pod)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry

from tests.chart.rendering import NAMESPACE, kinds, render

VALUES = {"serviceMonitor": {"enabled": True},
          "prometheusRule": {"enabled": True, "alertLabels": {"team": "ml"}, "trainingStalledFor": "30m",
                             "notStartingFor": "30m", "reconcileLatencySeconds": 5}}
OPERATOR = {"job": "ctxext-metrics", "namespace": NAMESPACE, "instance": "10.0.0.5:8080", "pod": "ctxext-7d9f"}
TRAINER = {"job": "ctxext-system/ctxext-trainer", "namespace": "team-a", "instance": "10.0.1.7:9400",
           "pod": "tiny-s2-a1-master-0", "container": "pytorch"}


def _rules() -> dict[str, Any]:
    [rule] = kinds(render(VALUES), "PrometheusRule")
    return dict(rule["spec"])


def _trainer_registry() -> CollectorRegistry:
    from ctxext.stage_config import StageConfig
    from ctxext_trainer.metrics import TrainerMetrics

    config = StageConfig(job="tiny", namespace="team-a", job_name="tiny-s2-a1", stage=2, total_stages=3,
                         model_path="/m", output_dir="/o", seq_len=512, rope_theta=691374.2,
                         original_context_length=128, steps=40, learning_rate=1e-3)
    metrics = TrainerMetrics(config, rank=0)
    metrics.record_step(step=3, loss=2.0, grad_norm=1.5, layer_max=1.0, layer_min=0.1, clip_ratio=1.0,
                        tokens_per_second=100.0, step_seconds=0.5, learning_rate=1e-3, update_ratio=None, tokens=512)
    return metrics.registry


def _exported() -> dict[str, set[str]]:
    """Series name → label names, as the trainer's rank 0 and the operator expose them (and ``up``)."""
    import ctxext.controller.metrics  # noqa: F401 - registers the operator's series

    out: dict[str, set[str]] = {"up": set()}  # Prometheus' own, per target
    for registry in (_trainer_registry(), REGISTRY):
        for family in registry.collect():
            for sample in family.samples:
                out.setdefault(sample.name, set()).update(sample.labels)
    return out


def _series(name: str, target: dict[str, str], **labels: str) -> str:
    """A promtool input series of an exported series, with the labels its exporter sets and the target's."""
    exported = _exported()
    assert name in exported, f"{name} is not exported by ctxext"
    assert set(labels) <= exported[name] | set(target), (name, set(labels) - exported[name])
    merged = {**target, **labels}
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(merged.items())) + "}"


JOB = {"cej": "tiny", "cej_namespace": "team-a", "stage": "2"}


def _tests() -> list[dict[str, Any]]:
    """promtool unit tests: each alert fires on the failure it is about and stays quiet when things are fine."""
    op = OPERATOR
    quiet: list[dict[str, Any]] = []
    return [
        {"interval": "1m", "input_series": [
            {"series": _series("up", op), "values": "1 1 1 0x20"},
            {"series": _series("ctxext_reconcile_errors_total", op), "values": "0 0 1 2 4 6 8 8 8"},
            {"series": _series("ctxext_stage_transitions_total", op, **{"from": "Running", "to": "Failed"}),
             "values": "0 0 0 1 1 1 1 1 1 1 1 1 1 1 1 1"},
            {"series": _series("ctxext_stage_attempts", op, state="Pending"), "values": "1x60"},
            {"series": _series("ctxext_stage_attempts", op, state="Running"), "values": "2x60"},
         ], "alert_rule_test": [
            {"eval_time": "2m", "alertname": "CtxextOperatorDown", "exp_alerts": quiet},
            {"eval_time": "9m", "alertname": "CtxextOperatorDown",
             "exp_alerts": [{"exp_labels": {"severity": "critical", "team": "ml"}}]},
            {"eval_time": "1m", "alertname": "CtxextReconcileErrors", "exp_alerts": quiet},
            {"eval_time": "8m", "alertname": "CtxextReconcileErrors",
             "exp_alerts": [{"exp_labels": {**op, "severity": "warning", "team": "ml"}}]},
            {"eval_time": "2m", "alertname": "CtxextStageFailed", "exp_alerts": quiet},
            # The first failure: the counter was exported as 0 before it (ctxext.controller.metrics).
            {"eval_time": "4m", "alertname": "CtxextStageFailed", "exp_alerts": [{"exp_labels": {
                **op, "from": "Running", "to": "Failed", "severity": "warning", "team": "ml"}}]},
            {"eval_time": "15m", "alertname": "CtxextStageFailed", "exp_alerts": quiet},  # a counter, not a state
            {"eval_time": "20m", "alertname": "CtxextJobNotStarting", "exp_alerts": quiet},
            {"eval_time": "35m", "alertname": "CtxextJobNotStarting",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "team": "ml"}}]},
        ]},
        {"interval": "1m", "input_series": [
            {"series": _series("ctxext_reconcile_duration_seconds_bucket", op, le=le), "values": values}
            for le, values in (("1.0", "0+100x40"), ("5.0", "0+100x20 2000+101x20"), ("10.0", "0+200x40"),
                               ("+Inf", "0+200x40"))
         ], "alert_rule_test": [
            {"eval_time": "15m", "alertname": "CtxextReconcileSlow", "exp_alerts": quiet},  # p99 < 5 s
            {"eval_time": "40m", "alertname": "CtxextReconcileSlow",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "team": "ml"}}]},
        ]},
        {"interval": "1m", "input_series": [
            # Steps 1..10, then stuck at 10 of 40 (a hung collective).
            {"series": _series("ctxext_train_step", TRAINER, **JOB), "values": "1+1x9 10x60"},
            {"series": _series("ctxext_train_total_steps", TRAINER, **JOB), "values": "40x70"},
            # Another job that finished its 40 steps and is evaluating: not stalled.
            {"series": _series("ctxext_train_step", TRAINER, **{**JOB, "cej": "done"}), "values": "1+1x39 40x30"},
            {"series": _series("ctxext_train_total_steps", TRAINER, **{**JOB, "cej": "done"}), "values": "40x70"},
            # A job hung in its first step: step stays at the 0 exported before it (TrainerMetrics).
            {"series": _series("ctxext_train_step", TRAINER, **{**JOB, "cej": "hung"}), "values": "0x70"},
            {"series": _series("ctxext_train_total_steps", TRAINER, **{**JOB, "cej": "hung"}), "values": "40x70"},
            # A stage started at 20m whose steps take 12 minutes: slow, not stalled.
            {"series": _series("ctxext_train_step", TRAINER, **{**JOB, "cej": "slow"}),
             "values": "_x20 0x12 1x12 2x12 3x12"},
            {"series": _series("ctxext_train_total_steps", TRAINER, **{**JOB, "cej": "slow"}), "values": "_x20 40x50"},
            {"series": _series("ctxext_grad_nonfinite_total", TRAINER, **JOB), "values": "0x20 5 5x30"},
            {"series": _series("ctxext_loss_spikes_total", TRAINER, **JOB), "values": "0x10 1 1 2 2 2 3 3x40"},
         ], "alert_rule_test": [
            {"eval_time": "30m", "alertname": "CtxextTrainingStalled", "exp_alerts": quiet},
            {"eval_time": "60m", "alertname": "CtxextTrainingStalled", "exp_alerts": [  # not "slow"
                {"exp_labels": {**TRAINER, **JOB, "cej": "hung", "severity": "warning", "team": "ml"},
                 "exp_annotations": {"summary": "ctxext job team-a/hung stalled in stage 2"}},
                {"exp_labels": {**TRAINER, **JOB, "severity": "warning", "team": "ml"},
                 "exp_annotations": {"summary": "ctxext job team-a/tiny stalled in stage 2"}}]},
            {"eval_time": "50m", "alertname": "CtxextTrainingStalled", "exp_alerts": [
                {"exp_labels": {**TRAINER, **JOB, "cej": "hung", "severity": "warning", "team": "ml"},
                 "exp_annotations": {"summary": "ctxext job team-a/hung stalled in stage 2"}},
                {"exp_labels": {**TRAINER, **JOB, "severity": "warning", "team": "ml"},
                 "exp_annotations": {"summary": "ctxext job team-a/tiny stalled in stage 2"}}]},
            {"eval_time": "15m", "alertname": "CtxextNonFiniteGradients", "exp_alerts": quiet},
            {"eval_time": "25m", "alertname": "CtxextNonFiniteGradients", "exp_alerts": [
                {"exp_labels": {**TRAINER, **JOB, "severity": "warning", "team": "ml"},
                 "exp_annotations": {"summary": "ctxext job team-a/tiny has non-finite gradients"}}]},
            {"eval_time": "13m", "alertname": "CtxextRepeatedLossSpikes", "exp_alerts": quiet},  # 2 spikes
            {"eval_time": "20m", "alertname": "CtxextRepeatedLossSpikes", "exp_alerts": [
                {"exp_labels": {**TRAINER, **JOB, "severity": "warning", "team": "ml"},
                 "exp_annotations": {"summary": "ctxext job team-a/tiny keeps spiking"}}]},
        ]},
    ]


def _only_summaries(spec: dict[str, Any]) -> dict[str, Any]:
    """promtool compares annotations exactly: keep the summary (it carries the job's labels), drop the
    long description (its template syntax is checked by `promtool check rules` on the full rules)."""
    groups = []
    for group in spec["groups"]:
        rules = [{**r, "annotations": {"summary": r["annotations"]["summary"]}} for r in group["rules"]]
        groups.append({**group, "rules": rules})
    return {"groups": groups}


@pytest.fixture(scope="module")
def promtool() -> str:
    binary = shutil.which("promtool")
    assert binary, "promtool not found: apt-get install prometheus (scripts/setup.sh does)"
    return binary


def test_rules_are_valid(promtool: str, tmp_path: Path):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_rules()))
    done = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 8 rules found" in done.stdout


def test_alerts_fire_on_failures_and_stay_quiet_otherwise(promtool: str, tmp_path: Path):
    spec = _rules()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_only_summaries(spec)))
    tests = _tests()
    summaries = {r["alert"]: r["annotations"]["summary"] for g in spec["groups"] for r in g["rules"]}
    for case in tests:  # alerts with a fixed summary: expect it as it is
        for check in case["alert_rule_test"]:
            for alert in check["exp_alerts"]:
                if "{{" not in summaries[check["alertname"]]:
                    alert.setdefault("exp_annotations", {"summary": summaries[check["alertname"]]})
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
                                                         "tests": tests}))
    done = subprocess.run([promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    alerts = {r["alert"] for g in spec["groups"] for r in g["rules"]}
    tested = {t["alertname"] for case in tests for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert tested == alerts == {"CtxextOperatorDown", "CtxextReconcileErrors", "CtxextReconcileSlow",
                                "CtxextStageFailed", "CtxextJobNotStarting", "CtxextTrainingStalled",
                                "CtxextNonFiniteGradients", "CtxextRepeatedLossSpikes"}


def test_every_series_an_alert_queries_is_exported():
    exported = _exported()
    for group in _rules()["groups"]:
        for rule in group["rules"]:
            for name in set(re.findall(r"\b(ctxext_[a-z_]+)", rule["expr"])):
                assert name in exported, f"{rule['alert']}: {name} is not exported by ctxext"
            for label in re.findall(r"\$labels\.([a-z_]+)", yaml.safe_dump(rule["annotations"])):
                assert any(label in labels for labels in exported.values()), (rule["alert"], label)


def test_rule_is_optional_and_carries_its_release_label():
    assert not kinds(render(), "PrometheusRule")
    [rule] = kinds(render({"serviceMonitor": {"enabled": True},
                           "prometheusRule": {"enabled": True, "release": "prom", "labels": {"a": "b"}}}),
                   "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prom" and rule["metadata"]["labels"]["a"] == "b"


def test_rule_refuses_to_render_without_the_service_monitor():
    """Its operator alerts select what the ServiceMonitor scrapes: without it OperatorDown would always fire."""
    with pytest.raises(helm.HelmError, match=re.escape("prometheusRule.enabled needs serviceMonitor.enabled=true")):
        render({"prometheusRule": {"enabled": True}})


def test_exported_series_follow_prometheus_naming_conventions(promtool: str):
    """`promtool check metrics` lints the real expositions (units, _total on counters, help texts, snake_case)
    of a trainer's rank 0 after a step and an evaluation, and of the operator."""
    from prometheus_client import generate_latest

    import ctxext.controller.metrics  # noqa: F401 - registers the operator's series
    from ctxext_trainer.eval.metrics import publish

    trainer = _trainer_registry()
    publish({"passkey": {512: {0.5: 0.8}}}, {512: 3.35}, labels={"cej": "tiny", "cej_namespace": "team-a",
                                                                   "stage": "2"}, registry=trainer)
    for name, registry in (("trainer", trainer), ("operator", REGISTRY)):
        text = generate_latest(registry)
        assert b"ctxext_" in text
        done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
        assert done.returncode == 0 and not done.stdout.strip(), (name, done.stdout + done.stderr)
