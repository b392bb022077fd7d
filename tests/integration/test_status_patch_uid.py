"""The operator's status patch lands only on the ContextExtensionJob it was computed for (real API server).

kopf handles the events of each object (by UID) on their own, so a pass over a job that is deleted and at once
re-applied under the same name (the usual retry of a Failed job) could finish after the new job exists; a plain
merge patch by name would then write the old job's stages onto the new one. KubeApi.patch_status tests
``/metadata/uid`` in the same JSON patch: the server refuses it, and the pass is retried with a fresh read.
"""

from __future__ import annotations

import pytest
from kubernetes import client, config

from ctxext.controller.kube import KubeApi
from tests.integration.operator_harness import Cluster
from tests.unit.helpers import minimal

pytestmark = pytest.mark.apiserver
NS = "status-uid"


def test_a_status_patch_for_a_deleted_job_never_lands_on_its_same_named_successor(k8s_api):
    config.load_kube_config(config_file=k8s_api)
    custom = client.CustomObjectsApi()
    cluster, kube = Cluster(custom, NS), KubeApi(custom)
    obj = minimal()
    obj["metadata"]["name"] = "again"
    first = cluster.create(obj)
    uid = first["metadata"]["uid"]
    cluster.trainer_reports("again", {"progress": {"step": 1}})  # the trainer's first report beats the operator's
    with pytest.raises(client.ApiException):  # computed from the job as created: it would drop that report
        kube.patch_status(NS, "again", {"phase": "Running"}, uid=uid, current=None,
                          resource_version=first["metadata"]["resourceVersion"])
    fresh = cluster.cej("again")
    made = kube.patch_status(NS, "again", {"phase": "Running", "warnings": ["w"]}, uid=uid, current=fresh["status"])
    assert made["status"] == {"phase": "Running", "warnings": ["w"], "progress": {"step": 1}}
    cluster.trainer_reports("again", {"progress": {"step": 3}})  # the trainer's own field, merge-patched
    later = kube.patch_status(NS, "again", {"phase": "Failed", "warnings": None}, uid=uid,
                              current=made["status"])
    assert later["status"] == {"phase": "Failed", "progress": {"step": 3}}  # removed, replaced, the rest kept

    custom.delete_namespaced_custom_object("ctxext.dev", "v1alpha1", NS, "contextextensionjobs", "again")
    second = cluster.create(obj)
    with pytest.raises(client.ApiException) as refused:
        kube.patch_status(NS, "again", {"phase": "Failed", "stage": "1/2"}, uid=uid, current=later["status"])
    assert refused.value.status in (409, 422)
    assert "status" not in cluster.cej("again") and cluster.cej("again")["metadata"]["uid"] == second["metadata"]["uid"]
    first_write = kube.patch_status(NS, "again", {"phase": "Pending"}, uid=second["metadata"]["uid"], current=None,
                                    resource_version=second["metadata"]["resourceVersion"])
    assert first_write["status"] == {"phase": "Pending"}
