"""Issue 8.7 — nobody let in: non-root pods, least-privilege RBAC (a reviewed table), no secret value
anywhere, trainers confined to their namespace.

The RBAC table below is the review: every (mode, kind, namespace, role, apiGroup, resource, resourceNames,
verbs) the chart grants, each with why. A change to the chart's RBAC fails this test until the table (and its review)
is updated on purpose.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from ctxext.controller.builder import build_pytorchjob
from ctxext.manifest import job_from_object
from ctxext.planner import plan_curriculum
from tests.chart.rendering import ALL_ON, ROOT, kinds, pod_specs, render
from tests.integration.operator_harness import wait_for
from tests.reliability._harness import Rig, base_model, tiny_manifest
from tests.unit.helpers import example

NAMESPACED = {"operator": {"namespaces": ["team-a", "team-b"]},
              "trainer": {"namespaces": ["team-a", "team-b", "team-c"]}}
MODES = {"defaults": {}, "namespaced": NAMESPACED}
CRUD = ("create", "get", "list", "patch", "watch")
OPERATOR_NS = [
    # why: kopf watches and annotates (progress storage) jobs; it never creates, updates or deletes them
    ("ctxext.dev", "contextextensionjobs", ("get", "list", "patch", "watch")),
    # why: status is the operator's output
    ("ctxext.dev", "contextextensionjobs/status", ("get", "patch")),
    # why: one PyTorchJob per stage attempt; patch = runPolicy.suspend; never delete (GC does that)
    ("kubeflow.org", "pytorchjobs", CRUD),
    # why: the same for the TrainJob backend (Trainer v2); patch = spec.suspend. Both kinds whatever
    # operator.backend says: the operator watches both, and a job's spec.backend may pick either
    ("trainer.kubeflow.org", "trainjobs", CRUD),
    # why: transitions are posted as Events (best effort)
    ("", "events", ("create",)),
    # why: before a job's first stage, does the trainer ServiceAccount exist in its namespace? (identity.py)
    ("", "serviceaccounts", ("get",)),
]
TRAINER = [
    ("ctxext.dev", "contextextensionjobs/status", ("get", "patch")),  # why: rank 0 reports progress and result
    # why: under a TrainJob rank 0 writes its status.trainerStatus (ctxext_trainer.trainjob_status): patch only,
    # it never reads TrainJobs
    ("trainer.kubeflow.org", "trainjobs/status", ("patch",)),
]
# why: before a job's first TrainJob, does the ClusterTrainingRuntime it names exist (kube.KubeApi.served)?
# Cluster-scoped, hence a ClusterRole in both modes (also namespaced), narrowed to the configured runtime by
# name; get only (resourceNames cannot narrow list/watch)
RUNTIME_READ = ("ClusterRole", None, "ctxext-training-runtime", "trainer.kubeflow.org", "clustertrainingruntimes",
                ("torch-distributed",), ("get",))
REVIEWED_RBAC = sorted(
    [("defaults", "ClusterRole", None, "ctxext", g, r, None, v) for g, r, v in OPERATOR_NS]
    # why: kopf reads CRDs to find the resources it serves (read-only, cluster-wide mode only)
    + [("defaults", "ClusterRole", None, "ctxext", "apiextensions.k8s.io", "customresourcedefinitions", None,
        ("get", "list", "watch"))]
    + [("defaults", "Role", "ctxext-system", "ctxext-trainer", g, r, None, v) for g, r, v in TRAINER]
    + [("namespaced", "Role", ns, "ctxext", g, r, None, v) for ns in ("team-a", "team-b") for g, r, v in OPERATOR_NS]
    + [("namespaced", "Role", ns, "ctxext-trainer", g, r, None, v)
       for ns in ("team-a", "team-b", "team-c") for g, r, v in TRAINER]
    + [(mode, *RUNTIME_READ) for mode in MODES],
    key=str)


def _granted(mode: str, objects: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    rows = []
    for obj in objects:
        if obj["kind"] in ("ClusterRole", "Role"):
            for rule in obj["rules"]:
                assert set(rule) <= {"apiGroups", "resources", "resourceNames", "verbs"}, rule
                names = tuple(rule["resourceNames"]) if "resourceNames" in rule else None
                rows += [(mode, obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"], group,
                          resource, names, tuple(sorted(rule["verbs"])))
                         for group in rule["apiGroups"] for resource in rule["resources"]]
    return sorted(rows, key=str)


def test_rbac_grants_exactly_the_reviewed_table():
    granted = [row for mode, values in MODES.items() for row in _granted(mode, render(values))]
    print(f"\nRBAC: {len(granted)} (role, resource, verbs) grants in {len(MODES)} modes, "
          f"{sum(len(r[-1]) for r in granted)} verbs; all in the reviewed table")
    assert sorted(granted, key=str) == REVIEWED_RBAC


@pytest.mark.parametrize("mode", list(MODES))
def test_bindings_give_each_identity_only_its_own_role_and_namespace(mode):
    objects = render(MODES[mode])
    operator_sa = {"kind": "ServiceAccount", "name": "ctxext", "namespace": "ctxext-system"}
    for binding in kinds(objects, "ClusterRoleBinding") + kinds(objects, "RoleBinding"):
        ref, subjects = binding["roleRef"], binding["subjects"]
        ns = binding["metadata"].get("namespace")
        assert ref["name"] == binding["metadata"]["name"]
        if ref["name"] == "ctxext-trainer":
            # A trainer pod's identity may patch job status only in its own namespace: a Role (never a
            # ClusterRole) bound in namespace N to the ServiceAccount of namespace N.
            assert binding["kind"] == "RoleBinding" and ref["kind"] == "Role"
            assert subjects == [{"kind": "ServiceAccount", "name": "ctxext-trainer", "namespace": ns}]
        elif ref["name"] == "ctxext-training-runtime":  # a cluster-scoped object: cluster-wide in both modes
            assert (binding["kind"], ref["kind"], subjects) == ("ClusterRoleBinding", "ClusterRole", [operator_sa])
        else:
            assert subjects == [operator_sa]
            assert (binding["kind"], ref["kind"]) in ({"defaults": ("ClusterRoleBinding", "ClusterRole"),
                                                       "namespaced": ("RoleBinding", "Role")}[mode],)
    assert not [o for o in kinds(objects, "ClusterRole") if o["metadata"]["name"] == "ctxext-trainer"]


@pytest.mark.parametrize("values", [{}, ALL_ON, NAMESPACED], ids=["defaults", "all-on", "namespaced"])
def test_operator_pod_runs_as_non_root(values):
    specs = dict(pod_specs(render(values)))
    spec = specs["ctxext"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"].get("runAsUser", 1) != 0
    for container in spec["containers"]:
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True and sc.get("runAsUser", 1) != 0 and sc["allowPrivilegeEscalation"] is False
    # The image itself has a non-root default user too (USER uid:gid, uid ≠ 0).
    users = [line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")


@pytest.mark.parametrize("manifest", ["tiny-cpu.yaml", "llama3-8b-1m.yaml"])
def test_trainer_pods_run_as_non_root(manifest):
    obj = example(manifest)
    obj["spec"]["model"]["credentialsSecretRef"] = {"name": "model-creds"}
    job = job_from_object(obj)
    plan = plan_curriculum(job.spec)
    for stage in range(1, len(plan.stages) + 1):
        body = build_pytorchjob(job, plan, stage)
        for replica in body["spec"]["pytorchReplicaSpecs"].values():
            pod = replica["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["runAsUser"] != 0 and pod["securityContext"]["runAsGroup"] != 0
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            for container in pod["containers"]:
                sc = container["securityContext"]
                assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
                assert sc["capabilities"] == {"drop": ["ALL"]} and not sc.get("privileged")
                # Credentials only by reference: envFrom a Secret, never a value in the object.
                assert container["envFrom"] == [{"secretRef": {"name": "model-creds"}}]
                assert all("valueFrom" not in e for e in container["env"])


# --- a planted secret ------------------------------------------------------------------------------------

SECRET_NAME = "planted-model-creds"
PLANTED = {"AWS_ACCESS_KEY_ID": "AKIAPLANTED7Q3XVZ2", "AWS_SECRET_ACCESS_KEY": "pLaNtEd/s3cr3t+VaLuE/9f8e7d6c5b4a",
           "HF_TOKEN": "hf_PlantedTokenValue0123456789abcdefXYZ"}


def _all_text(paths: list[Path]) -> dict[str, bytes]:
    out = {}
    for base in paths:
        for path in [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file()):
            out[str(path)] = path.read_bytes()
    return out


@pytest.mark.apiserver
@pytest.mark.slow
def test_a_planted_secret_value_appears_nowhere(k8s_api, tmp_path):
    """The job names a credentials Secret; the trainer processes get its values in their environment (as
    ``envFrom`` does in a pod). Afterwards no value may be found in the CEJ (spec, status), the
    PyTorchJobs, the operator's log (which also carries every event message) and metrics, the
    executor's and trainer's logs, the trainer's metrics, or any file the stage wrote."""
    name, hold = "secretive", tmp_path / "hold"
    hold.touch()
    obj = tiny_manifest(name, base_model(tmp_path / "base"), lengths=[192], steps=3, interval=2)
    obj["spec"]["model"]["credentialsSecretRef"] = {"name": SECRET_NAME}
    port = obj["spec"]["metrics"]["port"]
    with Rig(k8s_api, "rel-secret", tmp_path, executor_env={**PLANTED, "CTXEXT_HOLD_FILE": str(hold)}) as rig:
        rig.cluster.create(obj)
        trainer_metrics = wait_for(lambda: _scrape(port, "ctxext_train_step{"), what="trainer metrics",
                                   timeout=300, proc=rig.executor)
        hold.unlink()
        status = rig.wait_finished(name)
        assert rig.operator is not None
        operator_metrics = rig.operator.get("/metrics") or ""
    assert status["phase"] == "Succeeded", rig.logs()
    cej = rig.cluster.cej(name)
    jobs = rig.cluster.pytorchjobs(name)
    [container] = jobs[f"{name}-s1-a1"]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": SECRET_NAME}}]  # referenced by name only
    places = {"CEJ object": json.dumps(cej).encode(), "PyTorchJobs": json.dumps(jobs).encode(),
              "operator /metrics": operator_metrics.encode(), "trainer /metrics": trainer_metrics.encode(),
              "CEJ as YAML": yaml.safe_dump(cej).encode()}
    places.update(_all_text([tmp_path / "operator.log", tmp_path / "executor.log", rig.root]))
    leaks = [(where, key) for where, data in places.items() for key, value in PLANTED.items()
             if value.encode() in data]
    print(f"\nsecrets: {len(PLANTED)} planted values searched in {len(places)} places "
          f"(status, events via the operator log, logs, metrics, files): {len(leaks)} found")
    assert not leaks
    assert sum(1 for data in places.values() if SECRET_NAME.encode() in data) >= 1


def _scrape(port: int, needle: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
            text = r.read().decode()
    except OSError:
        return None
    return text if any(line.startswith(needle) and not line.endswith(" 0.0") for line in text.splitlines()) else None
