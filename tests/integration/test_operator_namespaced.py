"""`ctxext operator -n NS`: namespaced mode (no namespace or CRD scanning, as with the chart's Roles)."""

from __future__ import annotations

import pytest
from kubernetes import client, config

from tests.integration.operator_harness import Cluster, OperatorProcess, wait_for
from tests.unit.helpers import minimal

pytestmark = pytest.mark.apiserver


def test_namespaced_operator_serves_its_namespace(k8s_api, tmp_path):
    config.load_kube_config(config_file=k8s_api)
    api = client.CustomObjectsApi()
    mine, other = Cluster(api, "scoped-a"), Cluster(api, "scoped-b")
    op = OperatorProcess(k8s_api, tmp_path / "operator.log", CTXEXT_NAMESPACES="scoped-a").start()
    try:
        for cluster in (other, mine):  # the other namespace's job first: when ours is served, it was seen
            obj = minimal()
            obj["metadata"]["name"] = "scoped"
            cluster.create(obj)
        wait_for(lambda: mine.pytorchjobs("scoped").get("scoped-s1-a1"), what="job in scoped-a", proc=op)
        wait_for(lambda: mine.status("scoped").get("phase") == "Running", what="Running", proc=op)
        assert other.pytorchjobs("scoped") == {} and other.status("scoped") == {}
        assert "namespaces: scoped-a" in op.tail(200)
    finally:
        op.stop()
