"""Shared fixtures. ``k8s_api``: a throw-away real Kubernetes API server for the test session.

Starts apiextensions-apiserver + etcd on loopback with the project's own ``tests/k8s/start-apiserver.sh``
(the first start on a machine builds it, ~3 min; ``scripts/setup.sh`` does that once), exports
KUBECONFIG, installs the upstream Kubeflow CRDs from ``tests/k8s/crds/`` (PyTorchJob v1.9.4, Trainer
v2.3.0 with its ``torch-distributed`` ClusterTrainingRuntime) and our generated CRD from crds/, and
stops the server at the end. Tests that use it are marked ``apiserver``.
"""
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
K8S = HERE / "k8s"
START = K8S / "start-apiserver.sh"
UPSTREAM = K8S / "crds"
# Installed in this order, each waited for until it serves requests: the real upstream CRDs (see
# tests/k8s/crds/SOURCE.md), then our own. Non-CRD objects (the ClusterTrainingRuntime) are created
# as custom resources once their CRD serves.
CRDS = [
    UPSTREAM / "kubeflow.org_pytorchjobs.yaml",
    *sorted((UPSTREAM / "kubeflow-trainer").glob("trainer.kubeflow.org_*.yaml")),
    UPSTREAM / "kubeflow-trainer" / "torch_distributed_runtime.yaml",
    *sorted((ROOT / "crds").glob("*.yaml")),
]
# Namespaces that the core/v1 namespaces stub lists, besides "default" (edit). Only operators
# in namespaced mode (kopf --namespace X) need them; custom resources may use any namespace.
OPERATOR_NAMESPACES = ["team-a", "team-b"]


def install_crds(api: client.ApiClient, paths: list[Path] = CRDS) -> None:
    """Install ``paths`` (CRDs, and custom resources such as a runtime once their CRD serves), each waited for."""
    ext = client.ApiextensionsV1Api(api)
    custom = client.CustomObjectsApi(api)
    for path in paths:
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            if crd["kind"] != "CustomResourceDefinition":  # e.g. the torch-distributed ClusterTrainingRuntime
                group, version = crd["apiVersion"].split("/")
                plural = crd["kind"].lower() + "s"
                custom.create_cluster_custom_object(group, version, plural, crd, _preload_content=False)
                continue
            # POST, not client-side apply: the PyTorchJob CRD is too big for the
            # last-applied-configuration annotation. _preload_content=False skips the
            # client's model classes for the (large) response.
            ext.create_custom_resource_definition(crd, _preload_content=False)
            name, spec = crd["metadata"]["name"], crd["spec"]
            version = next(v["name"] for v in spec["versions"] if v.get("storage"))
            deadline = time.monotonic() + 60
            while True:  # Established, then listable (the first requests may get 429/404)
                try:
                    status = json.loads(ext.read_custom_resource_definition(name, _preload_content=False).data)
                    conds = (status.get("status") or {}).get("conditions") or []
                    if any(c["type"] == "Established" and c["status"] == "True" for c in conds):
                        custom.list_cluster_custom_object(spec["group"], version, spec["names"]["plural"], limit=1)
                        break
                except client.ApiException as e:
                    if e.status not in (404, 429, 503):
                        raise
                if time.monotonic() > deadline:
                    raise TimeoutError(f"CRD {name} did not become ready")
                time.sleep(0.1)


@pytest.fixture(scope="session")
def k8s_api(tmp_path_factory):
    """Starts the API server for the session, exports KUBECONFIG, installs CRDS; yields the kubeconfig path."""
    run_dir = tmp_path_factory.mktemp("k8s-api")
    kubeconfig = run_dir / "kubeconfig"
    env = {**os.environ, "ENVTEST_NAMESPACES": " ".join(OPERATOR_NAMESPACES)}
    try:
        # The first start on a machine builds the server (a few minutes); later ones take ~2 s.
        subprocess.run([str(START), "start", str(run_dir)], env=env, check=True,
                       stdout=subprocess.DEVNULL, timeout=1800)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("KUBECONFIG", str(kubeconfig))
            # The kubernetes package reads $KUBECONFIG once, at import time.
            mp.setattr(config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
            with config.new_client_from_config(config_file=str(kubeconfig)) as api:
                install_crds(api)
            yield str(kubeconfig)
    finally:
        subprocess.run([str(START), "stop", str(run_dir)], check=False)


@pytest.fixture(params=["pytorchjob", "trainjob"])
def backend(request) -> str:
    """The Kubeflow API an operator test runs on (#22 item 5: the e2e, chaos, restart and namespaced tests run
    on both): PyTorchJob (training-operator v1) or TrainJob (Trainer v2). The session's API server serves both."""
    return str(request.param)

