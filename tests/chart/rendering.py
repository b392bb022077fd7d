"""Render the chart with the real Helm v4 engine (helm-python-sdk bundles Helm's Go SDK; no binary)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "ctxext"
RELEASE = "ctxext"
NAMESPACE = "ctxext-system"

#: Every optional feature on: monitors, the dashboard, namespaced mode, digests, pull secrets, extras.
ALL_ON: dict[str, Any] = {
    "image": {"digest": "sha256:" + "a" * 64},
    "imagePullSecrets": [{"name": "registry"}],
    "operator": {"namespaces": ["team-a", "team-b"], "hfCacheClaim": "hf-cache", "backend": "trainjob",
                 "trainingRuntime": "torch-gpu",
                 "extraEnv": [{"name": "CTXEXT_TRAINER_COMMAND", "value": "torchrun --module ctxext_trainer"}],
                 "extraArgs": ["--verbose"]},
    "serviceAccount": {"annotations": {"iam.example.com/role": "ctxext"}},
    "trainer": {"namespaces": ["team-a", "team-b", "team-c"],
                "imagePullSecrets": [{"name": "nvcr"}, {"name": "mirror"}],
                "serviceAccount": {"annotations": {"iam.example.com/role": "trainer"}}},
    "service": {"annotations": {"example.com/scrape": "true"}},
    "podAnnotations": {"example.com/a": "b"},
    "podLabels": {"team": "ml-platform"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 1, "preference": {"matchExpressions": [
            {"key": "node-role", "operator": "In", "values": ["system"]}]}}]}},
    "priorityClassName": "system-cluster-critical",
    "serviceMonitor": {"enabled": True, "release": "prom", "labels": {"team": "ml"}},
    "podMonitor": {"enabled": True, "release": "prom", "labels": {"team": "ml"}, "namespaces": ["team-a"]},
    "prometheusRule": {"enabled": True, "release": "prom", "labels": {"team": "ml"}, "alertLabels": {"team": "ml"}},
    "networkPolicy": {"enabled": True, "extraTrainerEgress": [
        {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"port": 9000, "protocol": "TCP"}]}]},
    "dashboard": {"enabled": True, "namespace": "monitoring", "labels": {"team": "ml"},
                  "annotations": {"grafana_folder": "LLM training"}},
}


def render_files(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path → rendered text, as `helm template` would produce on install."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders (NOTES.txt excluded), test hooks included."""
    objects: list[dict[str, Any]] = []
    for path, text in sorted(render_files(values).items()):
        if path.endswith(".txt"):
            continue
        objects.extend(obj for obj in yaml.safe_load_all(text) if obj)
    return objects


def kinds(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(name, pod spec) of every workload and bare pod."""
    specs = []
    for obj in objects:
        if obj["kind"] == "Pod":
            specs.append((obj["metadata"]["name"], obj["spec"]))
        elif obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            specs.append((obj["metadata"]["name"], obj["spec"]["template"]["spec"]))
    return specs
