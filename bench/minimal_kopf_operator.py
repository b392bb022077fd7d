"""The baseline for bench/operator_scale.py: the smallest kopf operator that does the same first step.

For every ContextExtensionJob it creates one child PyTorchJob, owned through ``kopf.adopt``, and
does nothing else (no planning, no status, no watch on PyTorchJobs, no stages). This is what a
user would write first; the benchmark's ratios are ctxext's cost over this.

Run: ``kopf run --standalone -A bench/minimal_kopf_operator.py`` (the benchmark does it for you).
Like ctxext it uses the synchronous ``kubernetes`` client from kopf's thread pool.
"""

from __future__ import annotations

from typing import Any

import kopf
from kubernetes import client, config


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.enabled = False  # the test API server has no events resource
    config.load_kube_config()
    memo.api = client.CustomObjectsApi()


@kopf.on.create("ctxext.dev", "v1alpha1", "contextextensionjobs")
def create_child(name: str, namespace: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    child: dict[str, Any] = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": f"{name}-s1-a1"},
        "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": {
            "spec": {"containers": [{"name": "pytorch", "image": "ghcr.io/ctxext/trainer:0.1.0"}]}}}}},
    }
    kopf.adopt(child, owner=body)
    try:
        memo.api.create_namespaced_custom_object("kubeflow.org", "v1", namespace or "default", "pytorchjobs", child)
    except client.ApiException as exc:
        if exc.status != 409:  # already there (a retried handler): done
            raise
