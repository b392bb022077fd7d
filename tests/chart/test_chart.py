"""The Helm chart, rendered by the real Helm v4 engine: lint, Kubernetes schemas, values schema, RBAC,
Pod Security "restricted", and the operator settings it passes."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from ctxext.config import PREFIX, OperatorConfig
from ctxext.controller.builder import LABEL_JOB
from tests.chart.monitoring_schema import SCHEMAS
from tests.chart.rendering import ALL_ON, CHART, NAMESPACE, kinds, pod_specs, render, render_files

#: kubernetes-validate ships schemas for 1.25 … 1.37 offline; 1.36 is the version of the test API server
#: (apiextensions-apiserver v1.36) and of current clusters. 1.25 is the oldest the chart supports (kubeVersion).
K8S_VERSIONS = ["1.36", "1.25"]
#: CRD kinds with no schema in kubernetes-validate: validated against tests/chart/monitoring_schema.py.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
CONFIGS = {"defaults": {}, "all-on": ALL_ON}


@pytest.fixture(scope="module", params=list(CONFIGS))
def rendered(request) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(CONFIGS[request.param])


# --- lint and render ------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", list(CONFIGS))
def test_helm_lint_is_clean(config):
    report = helm.lint(CHART, CONFIGS[config], strict=True, namespace=NAMESPACE, kube_version="v1.36.0")
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 = warning, 3 = error
    assert problems == [], problems


def test_default_render_has_the_operator_and_nothing_optional():
    objects = render()
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == sorted([
        ("ClusterRole", "ctxext"), ("ClusterRoleBinding", "ctxext"), ("Deployment", "ctxext"),
        ("ClusterRole", "ctxext-training-runtime"), ("ClusterRoleBinding", "ctxext-training-runtime"),
        ("Pod", "ctxext-test-metrics"), ("Role", "ctxext-trainer"), ("RoleBinding", "ctxext-trainer"),
        ("Service", "ctxext-metrics"), ("ServiceAccount", "ctxext"), ("ServiceAccount", "ctxext-trainer")])
    # The trainer identity lands in the release namespace when no namespace is named.
    assert {o["metadata"]["namespace"] for o in objects if "namespace" in o["metadata"]} == {NAMESPACE}


def test_all_on_renders_every_optional_object():
    objects = render(ALL_ON)
    [service_monitor] = kinds(objects, "ServiceMonitor")
    [pod_monitor] = kinds(objects, "PodMonitor")
    [dashboard] = kinds(objects, "ConfigMap")
    for monitor in (service_monitor, pod_monitor):
        assert monitor["metadata"]["labels"]["release"] == "prom"
        assert monitor["metadata"]["labels"]["team"] == "ml"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "LLM training"}
    shipped = json.loads((CHART / "dashboards" / "ctxext.json").read_text())
    assert json.loads(dashboard["data"]["ctxext.json"]) == shipped
    assert len(dashboard["data"]["ctxext.json"].encode()) < 1024 * 1024  # a ConfigMap holds at most 1 MiB
    # Namespaced mode: Roles for the operator in each watched namespace, trainer identity in each job namespace.
    operator_roles = {o["metadata"]["namespace"] for o in kinds(objects, "Role") if o["metadata"]["name"] == "ctxext"}
    assert operator_roles == {"team-a", "team-b"}
    trainer_accounts = {o["metadata"]["namespace"] for o in kinds(objects, "ServiceAccount")
                        if o["metadata"]["name"] == "ctxext-trainer"}
    assert trainer_accounts == {"team-a", "team-b", "team-c"}
    [deployment] = kinds(objects, "Deployment")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "ghcr.io/ctxext/operator@sha256:" + "a" * 64


def test_notes_render_for_every_configuration():
    for values in CONFIGS.values():
        notes = render_files(values)["ctxext/templates/NOTES.txt"]
        assert "helm test ctxext" in notes and "kubectl get contextextensionjobs" in notes
    notes = render_files(ALL_ON)["ctxext/templates/NOTES.txt"]
    assert "PodMonitor ctxext-trainer (release=prom) scrapes each trainer rank on its metrics-<local rank> port" \
        in notes
    assert "PrometheusRule ctxext (release=prom)" in notes
    # Jobs outside the trainer namespaces do not run at all (no "cannot report progress"): the fix is spelled out.
    default = render_files({})["ctxext/templates/NOTES.txt"]
    assert "cannot report progress" not in default and "TrainerIdentityMissing" in default
    assert "--set 'trainer.namespaces={ctxext-system,<namespace>}'" in default
    assert "--set 'trainer.namespaces={team-a,team-b,team-c,<namespace>}'" in notes
    assert "helm upgrade` does not upgrade CRDs" in default and "kubectl delete cej --all -A" in default


def test_chart_ships_the_generated_crd():
    with helm.Chart.load(CHART) as chart:
        [crd] = chart.crds
    assert yaml.safe_load(crd["data"])["metadata"]["name"] == "contextextensionjobs.ctxext.dev"


# --- Kubernetes schemas ---------------------------------------------------------------------------------

@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_is_valid_against_the_kubernetes_schemas(rendered, version):
    _, objects = rendered
    checked_as_crd = set()
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            jsonschema.validate(obj, SCHEMAS[obj["kind"]])
            checked_as_crd.add(obj["kind"])
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} (Kubernetes {version}): {exc}")


def test_strict_validation_rejects_an_unknown_field():
    """The strict schemas catch a misspelled field (so the test above means something)."""
    [deployment] = kinds(render(), "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["securityContext"]["runAsNonroot"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.36", strict=True)
    [pod_monitor] = kinds(render(ALL_ON), "PodMonitor")
    broken = copy.deepcopy(pod_monitor)
    broken["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["sourcelabels"] = ["x"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMAS["PodMonitor"])


# --- values and their schema ----------------------------------------------------------------------------

@pytest.mark.parametrize("values", [
    {"serviceMonitor": {"enable": True}},              # misspelled key
    {"imagee": {"repository": "x"}},                    # misspelled top-level key
    {"podMonitor": {"relase": "prom"}},                 # misspelled nested key
    {"operator": {"namespaces": ["Team_A"]}},           # not a DNS label
    {"dashboard": {"enabled": "yes"}},                  # wrong type
    {"image": {"pullPolicy": "Sometimes"}},             # not an enum value
    {"operator": {"backend": "TrainJob"}},              # not an enum value (lower case, as CTXEXT_BACKEND)
    {"operator": {"trainingRuntime": ""}},              # the runtime TrainJobs name cannot be empty
    {"serviceMonitor": {"interval": "30 seconds"}},     # not a duration
], ids=lambda v: json.dumps(v))
def test_values_schema_rejects_bad_values(values):
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(CONFIGS["all-on"])  # the full set is accepted ...
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(values)          # ... a misspelling is not,
        with pytest.raises(helm.HelmError):
            chart.render(values, name="ctxext", namespace=NAMESPACE)  # and install fails on it too


def _schema_keys(schema: dict[str, Any], path: str = "") -> set[str]:
    keys = set()
    for name, sub in schema.get("properties", {}).items():
        keys.add(path + name)
        if sub.get("additionalProperties") is False:
            keys |= _schema_keys(sub, f"{path}{name}.")
    return keys


def _value_keys(values: dict[str, Any], schema: dict[str, Any], path: str = "") -> set[str]:
    keys = set()
    for name, value in values.items():
        keys.add(path + name)
        sub = schema["properties"][name]
        if isinstance(value, dict) and sub.get("additionalProperties") is False:
            keys |= _value_keys(value, sub, f"{path}{name}.")
    return keys


def test_schema_closes_every_object_and_matches_values_yaml():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def closed(node: dict[str, Any], path: str) -> None:
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
        for name, sub in node.get("properties", {}).items():
            closed(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            closed(node["items"], f"{path}[]")

    closed(schema, "values")
    schema_keys, value_keys = _schema_keys(schema), _value_keys(values, schema)
    assert value_keys <= schema_keys
    # Every value the schema knows has a documented default, except optional resource quantities and
    # Helm's `global` (set by a parent chart).
    assert {k for k in schema_keys - value_keys if not k.startswith("resources.")} == {"global"}


def test_every_value_is_documented():
    """Every value in values.yaml has a `# --` comment on it or on an enclosing key (helm-docs style)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, bool]] = []
    undocumented = []
    for i, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z0-9_.-]+):(.*)$", line)
        if not match:
            continue
        indent, key, rest = len(match[1]), match[2], match[3].strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#") and not lines[j].strip().startswith("# --"):
            j -= 1
        has_doc = j >= 0 and lines[j].strip().startswith("# --") and lines[j].startswith(" " * indent + "#")
        covered = has_doc or any(doc for _, doc in stack)
        if rest and not rest.startswith("#") and not covered:
            undocumented.append(key)
        stack.append((indent, covered))
    assert undocumented == []


# --- RBAC -----------------------------------------------------------------------------------------------

def _rules(objects):
    for obj in objects:
        if obj["kind"] in ("ClusterRole", "Role"):
            for rule in obj["rules"]:
                yield obj, rule


def test_rbac_has_no_wildcards_and_no_dangerous_verbs(rendered):
    _, objects = rendered
    for obj, rule in _rules(objects):
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert not any("*" in item for item in rule.get(field, [])), (obj["metadata"]["name"], rule)
        assert not set(rule["verbs"]) & {"delete", "deletecollection", "update", "escalate", "bind",
                                         "impersonate"}, rule
        assert not set(rule["resources"]) & {"secrets", "pods/exec", "roles", "clusterroles"}, rule


def test_operator_rights_are_exactly_what_it_uses(rendered):
    """The verbs ctxext.controller (kube.py, handlers.py) and kopf use, nothing more."""
    name, objects = rendered
    operator_roles = [o for o in objects if o["kind"] in ("ClusterRole", "Role") and o["metadata"]["name"] == "ctxext"]
    namespaced = {
        ("ctxext.dev", "contextextensionjobs"): {"get", "list", "watch", "patch"},
        ("ctxext.dev", "contextextensionjobs/status"): {"get", "patch"},
        ("kubeflow.org", "pytorchjobs"): {"create", "get", "list", "watch", "patch"},
        ("trainer.kubeflow.org", "trainjobs"): {"create", "get", "list", "watch", "patch"},  # the same, on Trainer v2
        ("", "events"): {"create"},
        ("", "serviceaccounts"): {"get"},  # the trainer identity check (ctxext.controller.identity)
    }
    if name == "defaults":  # all namespaces: one ClusterRole, plus kopf's read-only CRD observer
        assert [o["kind"] for o in operator_roles] == ["ClusterRole"]
        expected = {**namespaced, ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"}}
    else:  # namespaced mode: a Role per watched namespace and no cluster-wide rights but the runtime read
        assert {(o["kind"], o["metadata"]["namespace"]) for o in operator_roles} == {("Role", "team-a"),
                                                                                      ("Role", "team-b")}
        assert {o["metadata"]["name"] for o in kinds(objects, "ClusterRole") + kinds(objects, "ClusterRoleBinding")} \
            == {"ctxext-training-runtime"}
        expected = namespaced
    for role in operator_roles:
        rules = {(g, r): set(rule["verbs"]) for rule in role["rules"]
                 for g in rule["apiGroups"] for r in rule["resources"]}
        assert rules == expected, role["kind"]
        assert not any("resourceNames" in rule for rule in role["rules"])
    # In both modes: get of the one ClusterTrainingRuntime the operator is configured with (kube.KubeApi.served),
    # by name, through a ClusterRole (the object is cluster-scoped) bound to the operator's ServiceAccount only.
    runtime = "torch-gpu" if name == "all-on" else "torch-distributed"
    [reader] = [o for o in kinds(objects, "ClusterRole") if o["metadata"]["name"] == "ctxext-training-runtime"]
    assert reader["rules"] == [{"apiGroups": ["trainer.kubeflow.org"], "resources": ["clustertrainingruntimes"],
                                "resourceNames": [runtime], "verbs": ["get"]}]
    [binding] = [o for o in kinds(objects, "ClusterRoleBinding") if o["metadata"]["name"] == "ctxext-training-runtime"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "ctxext-training-runtime"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ctxext", "namespace": NAMESPACE}]


def test_trainer_role_only_patches_job_status(rendered):
    _, objects = rendered
    trainer_roles = [o for o in kinds(objects, "Role") if o["metadata"]["name"] == "ctxext-trainer"]
    assert trainer_roles
    for role in trainer_roles:
        assert role["rules"] == [{"apiGroups": ["ctxext.dev"], "resources": ["contextextensionjobs/status"],
                                  "verbs": ["get", "patch"]},
                                 # rank 0 under a TrainJob writes its status.trainerStatus (trainjob_status.py)
                                 {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs/status"],
                                  "verbs": ["patch"]}]
    bindings = [o for o in kinds(objects, "RoleBinding") if o["metadata"]["name"] == "ctxext-trainer"]
    assert {(b["metadata"]["namespace"], b["subjects"][0]["name"]) for b in bindings} == \
        {(r["metadata"]["namespace"], "ctxext-trainer") for r in trainer_roles}


def test_every_rbac_rule_is_commented():
    for template in ("rbac.yaml", "trainer-rbac.yaml", "_helpers.tpl"):
        lines = (CHART / "templates" / template).read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("- apiGroups:"):
                assert lines[i - 1].strip().startswith("#"), f"{template}:{i + 1}: rule without a comment"


# --- Pod Security "restricted" --------------------------------------------------------------------------

ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                   "projected", "secret"}


def test_pods_satisfy_the_restricted_profile(rendered):
    _, objects = rendered
    specs = pod_specs(objects)
    assert {name for name, _ in specs} == {"ctxext", "ctxext-test-metrics"}
    for name, spec in specs:
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, name
        assert pod_sc.get("runAsUser", 1) != 0, name
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            assert spec.get(field, False) is False, (name, field)
        assert spec.get("hostUsers", True) is True, name
        for volume in spec.get("volumes", []):
            assert set(volume) - {"name"} <= ALLOWED_VOLUMES, (name, volume)
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["runAsNonRoot"] is True, name
            assert sc.get("runAsUser", 1) != 0, name
            assert sc.get("privileged", False) is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert set(sc["capabilities"].get("add", [])) <= {"NET_BIND_SERVICE"}, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert all("hostPort" not in port for port in container.get("ports", [])), name


# --- the operator Deployment ----------------------------------------------------------------------------

def test_operator_deployment(rendered):
    config_name, objects = rendered
    [deployment] = kinds(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "operator"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CTXEXT_HEALTH_PORT"] == str(ports["healthz"])
    assert env["CTXEXT_METRICS_PORT"] == str(ports["metrics"])
    assert env["CTXEXT_TRAINER_SERVICE_ACCOUNT"] == "ctxext-trainer"
    # Every variable the chart sets is a setting the operator reads, and the values parse.
    fields = {PREFIX + name.upper() for name in OperatorConfig.model_fields}
    assert set(env) <= fields, set(env) - fields
    config = OperatorConfig.from_env({k: v for k, v in env.items() if v is not None})
    assert config.metrics_port == ports["metrics"] and config.health_port == ports["healthz"]
    if config_name == "all-on":
        assert config.namespaces == ["team-a", "team-b"] and config.hf_cache_claim == "hf-cache"
        assert config.backend == "trainjob" and config.training_runtime == "torch-gpu"
    else:
        assert config.backend == "auto" and config.training_runtime == "torch-distributed"
    [service] = kinds(objects, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_chart_defaults_are_the_operator_defaults():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    defaults = OperatorConfig()
    assert values["metrics"]["port"] == defaults.metrics_port
    assert values["health"]["port"] == defaults.health_port
    assert values["health"]["staleSeconds"] == defaults.health_stale_seconds
    assert values["operator"]["resyncSeconds"] == defaults.resync_seconds
    assert values["operator"]["statusRefreshSeconds"] == defaults.status_refresh_seconds
    assert values["operator"]["resultGraceSeconds"] == defaults.result_grace_seconds
    assert values["operator"]["watchTimeoutSeconds"] == defaults.watch_timeout_seconds
    assert values["operator"]["backend"] == defaults.backend
    assert values["operator"]["trainingRuntime"] == defaults.training_runtime


# --- scraping -------------------------------------------------------------------------------------------

def test_service_monitor_selects_the_metrics_service():
    objects = render(ALL_ON)
    [monitor] = kinds(objects, "ServiceMonitor")
    [service] = kinds(objects, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [service["spec"]["ports"][0]["name"]]


def test_pod_monitor_scrapes_every_rank_of_trainer_pods():
    [monitor] = kinds(render(ALL_ON), "PodMonitor")
    # The operator labels trainer pods with LABEL_JOB; the trainer container is Kubeflow's "pytorch".
    assert monitor["spec"]["selector"] == {"matchExpressions": [{"key": LABEL_JOB, "operator": "Exists"}]}
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}
    endpoint, *trainjob_endpoints = monitor["spec"]["podMetricsEndpoints"]
    assert "port" not in endpoint and "portNumber" not in endpoint  # selected by name, below
    assert len(trainjob_endpoints) == 8  # one per local rank of a TrainJob pod (tests/chart/test_cluster_fit.py)
    assert {"sourceLabels": ["__meta_kubernetes_pod_container_name"], "regex": "pytorch",
            "action": "keep"} in endpoint["relabelings"]
    [default_monitor] = kinds(render({"podMonitor": {"enabled": True}}), "PodMonitor")
    assert default_monitor["spec"]["namespaceSelector"] == {"any": True}
