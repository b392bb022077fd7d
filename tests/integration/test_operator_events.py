"""Event-driven passes against the real test API server, with the resync pushed out of the way (600 s):
the first PyTorchJob comes from the create event, stage advances from the PyTorchJob's own events,
changes that decide nothing wait for the status refresh, and deleting a job frees what the
operator kept for it. Passes are counted from the operator's ``ctxext_reconcile_duration_seconds_count``.
"""

from __future__ import annotations

import re

import pytest
from kubernetes import client, config

from tests.integration.operator_harness import Cluster, OperatorProcess, wait_for
from tests.unit.helpers import minimal

pytestmark = pytest.mark.apiserver


def manifest(name: str) -> dict:
    obj = minimal(curriculum={"stages": [{"seqLen": 16384}, {"seqLen": 65536}]})
    obj["metadata"]["name"] = name
    return obj


def metric(op: OperatorProcess, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", op.get("/metrics") or "", re.M)
    return float(found.group(1)) if found else 0.0


def passes(op: OperatorProcess) -> int:
    return int(metric(op, "ctxext_reconcile_duration_seconds_count"))


def start(k8s_api: str, tmp_path, namespace: str, refresh: str) -> tuple[Cluster, OperatorProcess]:
    config.load_kube_config(config_file=k8s_api)
    op = OperatorProcess(k8s_api, tmp_path / "operator.log", CTXEXT_NAMESPACES=namespace,
                         CTXEXT_RESYNC_SECONDS="600", CTXEXT_STATUS_REFRESH_SECONDS=refresh).start()
    return Cluster(client.CustomObjectsApi(), namespace), op


def test_two_stages_run_on_five_passes_from_events_alone(k8s_api, tmp_path):
    cluster, op = start(k8s_api, tmp_path, "events-a", refresh="600")
    try:
        cluster.create(manifest("ev"))
        wait_for(lambda: cluster.pytorchjobs("ev").get("ev-s1-a1"), what="s1 from the create event", proc=op)
        wait_for(lambda: (cluster.status("ev").get("stages") or [{}])[0].get("attempts") == 1, what="status")
        cluster.set_conditions("ev-s1-a1", "Created")
        cluster.set_conditions("ev-s1-a1", "Created", "Running")  # decides nothing: no pass of its own
        # the trainer reports its result before its PyTorchJob ends (a pass that finds nothing to do yet)
        cluster.trainer_reports("ev", {"results": {"ev-s1-a1": {"status": "Succeeded", "finalLoss": 1.0}}})
        wait_for(lambda: passes(op) == 2, what="the result's pass", proc=op)
        cluster.set_conditions("ev-s1-a1", "Created", "Running", "Succeeded")
        wait_for(lambda: cluster.pytorchjobs("ev").get("ev-s2-a1"), what="s2 from the s1 event", proc=op)
        wait_for(lambda: cluster.status("ev").get("stage") == "2/2", what="status 2/2", proc=op)
        # the pass is counted when it ends, just after its status patch: wait for it, then demand no extra one
        wait_for(lambda: passes(op) >= 3, what="the pass counted", proc=op)
        assert passes(op) == 3
        cluster.trainer_reports("ev", {"results": {"ev-s2-a1": {"status": "Succeeded", "finalLoss": 0.5}}})
        wait_for(lambda: passes(op) >= 4, what="the result's pass", proc=op)
        cluster.set_conditions("ev-s2-a1", "Created", "Running", "Succeeded")
        wait_for(lambda: cluster.status("ev").get("phase") == "Succeeded", what="Succeeded", proc=op)
        wait_for(lambda: passes(op) >= 5, what="the pass counted", proc=op)
        assert passes(op) == 5
        assert sorted(cluster.pytorchjobs("ev")) == ["ev-s1-a1", "ev-s2-a1"]
        assert metric(op, 'ctxext_jobs{phase="Succeeded"}') == 1
        cluster.api.delete_namespaced_custom_object("ctxext.dev", "v1alpha1", "events-a", "contextextensionjobs", "ev")
        wait_for(lambda: metric(op, 'ctxext_jobs{phase="Succeeded"}') == 0, what="the job forgotten", proc=op)
        assert passes(op) == 5
    finally:
        op.stop()


def test_live_state_and_loss_reach_status_through_the_refresh_not_the_resync(k8s_api, tmp_path):
    cluster, op = start(k8s_api, tmp_path, "events-b", refresh="0.3")
    try:
        cluster.create(manifest("live"))
        wait_for(lambda: cluster.pytorchjobs("live").get("live-s1-a1"), what="s1", proc=op)
        cluster.set_conditions("live-s1-a1", "Created", "Running")
        cluster.trainer_reports("live", {"progress": {"jobName": "live-s1-a1", "step": 3, "loss": 4.25}})
        status = wait_for(lambda: (s := cluster.status("live")).get("loss") == 4.25 and s, what="loss", proc=op)
        wait_for(lambda: "is Running" in cluster.status("live")["stages"][0]["message"], what="Running", proc=op)
        assert status["phase"] == "Running" and sorted(cluster.pytorchjobs("live")) == ["live-s1-a1"]
        cluster.api.delete_namespaced_custom_object("kubeflow.org", "v1", "events-b", "pytorchjobs", "live-s1-a1")
        # No garbage collector here, no resync for 600 s: the job's DELETED event alone makes it a failed
        # attempt (#27: a vanished job is never silently re-created), retried after the backoff.
        stage = wait_for(lambda: "was deleted before it reported a result" in
                         (s := cluster.status("live")["stages"][0]).get("message", "") and s,
                         what="the deleted attempt failed", proc=op)
        assert stage["nextAttemptTime"] and cluster.pytorchjobs("live") == {}
    finally:
        op.stop()
