"""Start-up CRD check against the real API server (#24 item 9): after ``helm upgrade`` (which never
touches ``crds/``) the cluster may still serve an old schema that silently prunes new spec fields.
The operator must refuse to start then, saying what to do, and start normally on its own CRD."""

from __future__ import annotations

import copy
import json
import subprocess
import time
from typing import Any

import pytest
from kubernetes import client, config

from ctxext.controller.crdcheck import CRD_NAME, check_served_crd
from tests.integration.operator_harness import OperatorProcess, Proc

pytestmark = pytest.mark.apiserver


def _ext(k8s_api: str) -> client.ApiextensionsV1Api:
    config.load_kube_config(config_file=k8s_api)
    return client.ApiextensionsV1Api()


def _reader(ext: client.ApiextensionsV1Api, suffix: str = "") -> Any:
    return lambda name: json.loads(ext.read_custom_resource_definition(name + suffix, _preload_content=False).data)


def test_served_crd_from_crds_dir_passes_the_check(k8s_api):
    """The API server normalises what it stores; the check must still find crds/ equal to the operator's."""
    assert check_served_crd(_reader(_ext(k8s_api))) is None


def test_missing_crd_is_one_plain_error(k8s_api):
    error = check_served_crd(_reader(_ext(k8s_api), suffix="-missing"))  # a real 404 from the server
    assert error is not None and "is not installed" in error and "kubectl apply" in error


def _set_spec_schema(ext: client.ApiextensionsV1Api, edit: Any) -> dict[str, Any]:
    """Replace the served CRD with an edited copy; returns the original (for restoring)."""
    original = json.loads(ext.read_custom_resource_definition(CRD_NAME, _preload_content=False).data)
    changed = copy.deepcopy(original)
    for version in changed["spec"]["versions"]:
        edit(version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"])
    ext.replace_custom_resource_definition(CRD_NAME, changed, _preload_content=False)
    return original


def _restore(ext: client.ApiextensionsV1Api, original: dict[str, Any]) -> None:
    current = json.loads(ext.read_custom_resource_definition(CRD_NAME, _preload_content=False).data)
    current["spec"] = original["spec"]
    ext.replace_custom_resource_definition(CRD_NAME, current, _preload_content=False)
    deadline = time.monotonic() + 30
    while check_served_crd(_reader(ext)) is not None:
        assert time.monotonic() < deadline, "the CRD was not restored"
        time.sleep(0.2)


def test_operator_refuses_to_start_on_an_old_crd(k8s_api, tmp_path):
    ext = _ext(k8s_api)
    # An old release's CRD: no spec.pod (the trainer pod overlay this release added).
    original = _set_spec_schema(ext, lambda props: props.pop("pod"))
    try:
        op = OperatorProcess(k8s_api, tmp_path / "operator.log")
        Proc.start(op)  # not OperatorProcess.start: that waits for /healthz
        assert op.proc is not None
        rc = op.proc.wait(timeout=120)
        log = op.log_path.read_text(errors="replace")
        assert rc == 2, log
        assert "error: the served CustomResourceDefinition" in log, log
        assert "lacks spec.pod)" in log and "spec.pod.labels" not in log, log  # the top-most missing field
        assert "kubectl apply --server-side" in log, log
        assert "Traceback" not in log, log
        # Switched off on purpose (CTXEXT_CRD_CHECK=0), the same operator starts.
        off = OperatorProcess(k8s_api, tmp_path / "operator-off.log", CTXEXT_CRD_CHECK="0").start()
        off.stop()
        # Watching a list of namespaces (no cluster-wide rights), it makes no CRD request and says so.
        scoped = OperatorProcess(k8s_api, tmp_path / "operator-scoped.log", CTXEXT_NAMESPACES="crd-a").start()
        scoped.stop()
        assert "CRD check skipped" in scoped.tail(200)
    except subprocess.TimeoutExpired:
        pytest.fail("the operator kept running on an old CRD")
    finally:
        _restore(ext, original)
