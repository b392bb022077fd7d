"""`ctxext operator -n NS`: namespaced mode (no namespace or CRD scanning, as with the chart's Roles)."""

from __future__ import annotations

import pytest
from kubernetes import client, config

from tests.integration.operator_harness import Cluster, OperatorProcess, wait_for
from tests.unit.helpers import minimal

pytestmark = pytest.mark.apiserver


def test_namespaced_operator_serves_its_namespace(k8s_api, tmp_path, backend):
    config.load_kube_config(config_file=k8s_api)
    api = client.CustomObjectsApi()
    mine, other = Cluster(api, "scoped-a", backend), Cluster(api, "scoped-b", backend)
    name = f"scoped-{backend}"
    op = OperatorProcess(k8s_api, tmp_path / "operator.log", backend, CTXEXT_NAMESPACES="scoped-a").start()
    try:
        for cluster in (other, mine):  # the other namespace's job first: when ours is served, it was seen
            obj = minimal()
            obj["metadata"]["name"] = name
            cluster.create(obj)
        job = wait_for(lambda: mine.jobs(name).get(f"{name}-s1-a1"), what="job in scoped-a", proc=op)
        wait_for(lambda: mine.status(name).get("phase") == "Running", what="Running", proc=op)
        assert other.jobs(name) == {} and other.status(name) == {}
        assert job["kind"] == {"pytorchjob": "PyTorchJob", "trainjob": "TrainJob"}[backend]
        assert mine.status(name)["backend"] == job["kind"]
        assert "namespaces: scoped-a" in op.tail(200)
    finally:
        op.stop()
