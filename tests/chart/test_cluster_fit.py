"""Chart pieces of issue 24, rendered by the real Helm engine: the PodMonitor's targets against the ports the
operator declares, trainer image pull secrets reaching trainer pods, the trainer identity kept on uninstall,
and the optional NetworkPolicies."""

from __future__ import annotations

import re
from typing import Any

import helm_python as helm
import pytest

from ctxext.config import OperatorConfig
from ctxext.manifest import job_from_object
from tests.chart.prometheus import Prometheus
from tests.chart.rendering import ALL_ON, NAMESPACE, kinds, render
from tests.integration.operator_harness import wait_for
from tests.unit.helpers import minimal
from tests.unit.test_pytorchjob_builder import build, container


def _targets(endpoint: dict[str, Any], pod: dict[str, Any], container_name: str = "pytorch") -> list[str]:
    """Prometheus' kubernetes_sd (role pod) + the endpoint's relabelings: the port names that become targets.

    Without ``port`` on the endpoint, prometheus-operator makes one target per declared container port; each
    relabeling ``keep`` is a fully anchored regex over the joined source labels, as in Prometheus."""
    targets = []
    for port in pod["ports"]:
        meta = {"__meta_kubernetes_pod_container_name": container_name, "__meta_kubernetes_pod_container_init": "false",
                "__meta_kubernetes_pod_phase": "Running", "__meta_kubernetes_pod_container_port_name": port["name"]}
        kept = True
        for rule in endpoint["relabelings"]:
            value = ";".join(meta.get(label, "") for label in rule.get("sourceLabels", []))
            if rule.get("action") == "keep" and not re.fullmatch(rule["regex"], value):
                kept = False
        if kept:
            targets.append(port["name"])
    return targets


@pytest.mark.parametrize(("resources", "metrics_port", "expected"), [
    ({"gpusPerNode": 0, "processesPerNode": 1}, 9400, [9400]),           # a CPU job: one target, not eight
    ({"gpusPerNode": 4}, 9400, [9400, 9401, 9402, 9403]),                 # a 4-GPU node
    ({"gpusPerNode": 8}, 9800, list(range(9800, 9808))),                  # another spec.metrics.port
])
def test_pod_monitor_scrapes_exactly_the_declared_rank_ports(resources, metrics_port, expected):
    [monitor] = kinds(render({"podMonitor": {"enabled": True}}), "PodMonitor")
    endpoint, *trainjob_endpoints = monitor["spec"]["podMetricsEndpoints"]
    spec = {"resources": resources, "metrics": {"port": metrics_port}}
    if resources["gpusPerNode"] > 1:
        spec["parallelism"] = {"sequenceParallel": resources["gpusPerNode"]}
    trainer = container(build(job_from_object(minimal(**spec))))
    names = _targets(endpoint, trainer)
    assert len(trainjob_endpoints) == 8 and not [t for e in trainjob_endpoints for t in _targets(e, trainer)]
    ports = {p["name"]: p["containerPort"] for p in trainer["ports"]}
    assert [ports[n] for n in names] == expected
    assert "pytorchjob-port" not in names
    assert _targets(endpoint, trainer, container_name="init-pytorch") == []  # Kubeflow's init container


def test_trainer_image_pull_secrets_reach_the_trainer_pods():
    [deployment] = kinds(render(ALL_ON), "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    config = OperatorConfig.from_env({k: v for k, v in env.items() if k.startswith("CTXEXT_") and v is not None})
    assert config.trainer_image_pull_secrets == ["nvcr", "mirror"]
    pod = build(job_from_object(minimal(pod={"imagePullSecrets": ["team"]})), config=config)
    assert pod["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["imagePullSecrets"] == [
        {"name": "nvcr"}, {"name": "mirror"}, {"name": "team"}]
    [default] = kinds(render(), "Deployment")
    assert "CTXEXT_TRAINER_IMAGE_PULL_SECRETS" not in str(default)


def test_trainer_identity_survives_uninstall_unless_told_otherwise():
    def identity(values: dict[str, Any]) -> list[dict[str, Any]]:
        return [o for o in render(values) if o["kind"] in ("ServiceAccount", "Role", "RoleBinding")
                and o["metadata"]["name"] == "ctxext-trainer"]

    kept = identity(ALL_ON)
    assert len(kept) == 9  # 3 namespaces × (ServiceAccount, Role, RoleBinding)
    for obj in kept:
        assert obj["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep", obj["kind"]
    assert kept[0]["metadata"]["annotations"]["iam.example.com/role"] == "trainer"  # user annotations stay
    for obj in identity({"trainer": {"keepOnUninstall": False}}):
        assert "helm.sh/resource-policy" not in (obj["metadata"].get("annotations") or {})


def _rules_by_port(rules: list[dict[str, Any]]) -> set[tuple[str, Any]]:
    return {(p.get("protocol", "TCP"), p["port"]) for r in rules for p in r.get("ports", [])}


def test_network_policies_are_optional_and_allow_only_what_ctxext_needs():
    assert not kinds(render(), "NetworkPolicy")
    policies = {(p["metadata"]["namespace"], p["metadata"]["name"]): p["spec"] for p in kinds(render(ALL_ON),
                                                                                               "NetworkPolicy")}
    assert set(policies) == {(NAMESPACE, "ctxext"), ("team-a", "ctxext-trainer"), ("team-b", "ctxext-trainer"),
                             ("team-c", "ctxext-trainer")}
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    operator = policies[(NAMESPACE, "ctxext")]
    assert operator["policyTypes"] == ["Ingress", "Egress"]
    assert operator["ingress"] == [{"from": [monitoring], "ports": [{"port": "metrics", "protocol": "TCP"}]},
                                   {"ports": [{"port": "healthz", "protocol": "TCP"}]}]
    assert _rules_by_port(operator["egress"]) == {("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 6443)}
    assert all("to" not in r for r in operator["egress"])
    trainer = policies[("team-a", "ctxext-trainer")]
    same_jobs = {"podSelector": {"matchExpressions": [{"key": "ctxext.dev/job", "operator": "Exists"}]}}
    assert trainer["podSelector"] == same_jobs["podSelector"]
    assert {"from": [same_jobs]} in trainer["ingress"]  # rendezvous and NCCL between the job's pods
    assert {"from": [monitoring], "ports": [{"port": 1024, "endPort": 65535, "protocol": "TCP"}]} in trainer["ingress"]
    assert {"to": [same_jobs]} in trainer["egress"]
    assert {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"port": 9000, "protocol": "TCP"}]} in \
        trainer["egress"]
    anywhere = {p["metadata"]["name"]: p["spec"] for p in kinds(
        render({"networkPolicy": {"enabled": True, "monitoringNamespace": ""}}), "NetworkPolicy")}
    assert anywhere["ctxext"]["ingress"][0]["from"] == [{"namespaceSelector": {}}]



def test_api_server_egress_can_be_pinned_to_its_addresses():
    """Without apiServerCIDRs, egress on the API server's ports goes to any address (HTTPS anywhere); with them,
    to those addresses only, for the operator and the trainers alike."""
    values = {"networkPolicy": {"enabled": True, "apiServerCIDRs": ["172.18.0.2/32", "fd00::1/128"]}}
    for policy in kinds(render(values), "NetworkPolicy"):
        [api] = [r for r in policy["spec"]["egress"] if {"port": 443, "protocol": "TCP"} in r.get("ports", [])]
        assert api["to"] == [{"ipBlock": {"cidr": "172.18.0.2/32"}}, {"ipBlock": {"cidr": "fd00::1/128"}}]
        assert api["ports"] == [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]
    with pytest.raises(helm.HelmError):
        render({"networkPolicy": {"enabled": True, "apiServerCIDRs": ["kubernetes.default"]}})


def _snake(key: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m[0].lower(), key)


def test_pod_monitor_relabelings_keep_the_rank_ports_in_a_real_prometheus(tmp_path):
    """The PodMonitor's relabelings, run by a real Prometheus on the targets kubernetes_sd (role pod) would give
    it: one per declared container port, with the pod's meta labels. Only the metrics-<rank> ports of running
    trainer containers stay; the rendezvous port, Kubeflow's init container and pending pods are dropped."""
    [monitor] = kinds(render({"podMonitor": {"enabled": True}}), "PodMonitor")
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]  # PyTorchJob pods; TrainJob pods: the test below
    relabel = [{_snake(k): v for k, v in rule.items()} for rule in endpoint["relabelings"]]
    cases = {"cpu": ({"gpusPerNode": 0, "processesPerNode": 1}, 9400), "gpu4": ({"gpusPerNode": 4}, 9800)}
    expected, scrape_configs = {}, []
    for name, (resources, port) in cases.items():
        spec: dict[str, Any] = {"resources": resources, "metrics": {"port": port}}
        if resources["gpusPerNode"] > 1:
            spec["parallelism"] = {"sequenceParallel": resources["gpusPerNode"]}
        ports = container(build(job_from_object(minimal(**spec))))["ports"]
        expected[name] = sorted(p["containerPort"] for p in ports if p["name"].startswith("metrics-"))
        groups = []
        for container_name, init, phase in (("pytorch", "false", "Running"), ("init-pytorch", "true", "Running"),
                                            ("pytorch", "false", "Pending")):
            host = {"Running": "127.0.0.1", "Pending": "127.0.0.2"}[phase] if init == "false" else "127.0.0.3"
            groups += [{"targets": [f"{host}:{p['containerPort']}"], "labels": {
                "__meta_kubernetes_pod_container_name": container_name, "__meta_kubernetes_pod_container_init": init,
                "__meta_kubernetes_pod_phase": phase, "__meta_kubernetes_pod_container_port_name": p["name"]}}
                for p in ports]
        scrape_configs.append({"job_name": name, "scrape_interval": "1h", "static_configs": groups,
                               "relabel_configs": relabel})
    prom = Prometheus(tmp_path / "prometheus", {})
    prom.config["scrape_configs"] = scrape_configs
    with prom:
        def active() -> dict[str, list[str]] | None:
            out: dict[str, list[str]] = {}
            for target in prom.api("targets", state="active")["activeTargets"]:
                out.setdefault(target["scrapePool"], []).append(target["discoveredLabels"]["__address__"])
            return out if set(out) == set(cases) else None  # every pool has been through service discovery

        found = wait_for(active, what="Prometheus' active targets")
    for name in cases:
        assert sorted(found[name]) == [f"127.0.0.1:{p}" for p in expected[name]], (name, found[name])
    assert expected == {"cpu": [9400], "gpu4": [9800, 9801, 9802, 9803]}


def test_trainjob_pods_are_scraped_once_per_local_rank_in_a_real_prometheus(tmp_path):
    """#22: a TrainJob cannot declare container ports, so its pods carry ctxext.dev/metrics-port-<rank>
    annotations and the PodMonitor has one endpoint per local rank. A real Prometheus runs those endpoints'
    relabelings on the targets kubernetes_sd (role pod) gives: the trainer container "node" without ports (one
    port-free target), the same container in a runtime that declares a port (a second target that ends up at the
    same address), Kubeflow's init container, and a PyTorchJob's pod. Each rank of the 4-GPU TrainJob pod is one
    target; nothing else is."""
    from ctxext.controller.backends.trainjob import build_trainjob
    from ctxext.planner import plan_curriculum

    [monitor] = kinds(render({"podMonitor": {"enabled": True}}), "PodMonitor")
    endpoints = monitor["spec"]["podMetricsEndpoints"][1:]
    job = job_from_object(minimal(resources={"gpusPerNode": 4}, parallelism={"sequenceParallel": 4},
                                  metrics={"port": 9500}))
    tj = build_trainjob(job, plan_curriculum(job.spec), 1)
    pod_meta = tj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"]["spec"]["template"]["metadata"]
    annotations = {"__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", k): v
                   for k, v in pod_meta["annotations"].items()}
    ptj = container(build(job))
    groups = [
        {"targets": ["127.0.0.1"], "labels": {**annotations, "__meta_kubernetes_pod_ip": "127.0.0.1",
                                              "__meta_kubernetes_pod_container_name": "node",
                                              "__meta_kubernetes_pod_container_init": "false",
                                              "__meta_kubernetes_pod_phase": "Running"}},
        {"targets": ["127.0.0.1:29500"], "labels": {**annotations, "__meta_kubernetes_pod_ip": "127.0.0.1",
                                                    "__meta_kubernetes_pod_container_name": "node",
                                                    "__meta_kubernetes_pod_container_port_name": "master",
                                                    "__meta_kubernetes_pod_container_init": "false",
                                                    "__meta_kubernetes_pod_phase": "Running"}},
        {"targets": ["127.0.0.3"], "labels": {**annotations, "__meta_kubernetes_pod_ip": "127.0.0.3",
                                              "__meta_kubernetes_pod_container_name": "init",
                                              "__meta_kubernetes_pod_container_init": "true",
                                              "__meta_kubernetes_pod_phase": "Running"}},
        *({"targets": [f"127.0.0.2:{p['containerPort']}"], "labels": {
            "__meta_kubernetes_pod_ip": "127.0.0.2", "__meta_kubernetes_pod_container_name": "pytorch",
            "__meta_kubernetes_pod_container_init": "false", "__meta_kubernetes_pod_phase": "Running",
            "__meta_kubernetes_pod_container_port_name": p["name"]}} for p in ptj["ports"]),
    ]
    prom = Prometheus(tmp_path / "prometheus", {})
    prom.config["scrape_configs"] = [
        {"job_name": f"rank-{r}", "scrape_interval": "1h", "static_configs": groups,
         "relabel_configs": [{_snake(k): v for k, v in rule.items()} for rule in e["relabelings"]]}
        for r, e in enumerate(endpoints)]
    with prom:
        def seen() -> tuple[dict[str, list[str]], set[str]] | None:
            data = prom.api("targets", state="any")
            active: dict[str, list[str]] = {}
            for target in data["activeTargets"]:
                active.setdefault(target["scrapePool"], []).append(target["labels"]["instance"])
            dropped = {t["discoveredLabels"]["job"] for t in data["droppedTargets"]}
            done = len(dropped) == len(endpoints) and len(active) == 4  # every pool through discovery
            return (active, dropped) if done else None

        active, _ = wait_for(seen, what="Prometheus' targets")
    assert active == {f"rank-{r}": [f"127.0.0.1:{9500 + r}"] for r in range(4)}
