"""The operator SIGKILLed at any moment and restarted: never a duplicate attempt, never a skipped stage."""

from __future__ import annotations

import random

import pytest
from kubernetes import client, config

from tests.integration.operator_harness import Cluster, OperatorProcess, wait_for
from tests.unit.helpers import minimal

pytestmark = pytest.mark.apiserver
NS = "restarts"
STAGES = {"stages": [{"seqLen": 16384}, {"seqLen": 32768}, {"seqLen": 65536}]}


def manifest(name: str):
    obj = minimal(curriculum=STAGES)
    obj["metadata"]["name"] = name
    return obj


@pytest.fixture
def cluster(k8s_api, backend):
    config.load_kube_config(config_file=k8s_api)
    return Cluster(client.CustomObjectsApi(), f"{NS}-{backend}", backend)


def finish_running_jobs(cluster: Cluster, names: list[str]) -> None:
    """Play trainer + training-operator: every unfinished training job reports a result and succeeds."""
    for cej in names:
        for job_name, job in cluster.jobs(cej).items():
            if not (job.get("status") or {}).get("conditions"):
                cluster.trainer_reports(cej, {"results": {job_name: {"status": "Succeeded", "finalLoss": 1.0}}})
                cluster.set_conditions(job_name, "Created", "Running", "Succeeded")


def test_killed_mid_stage_and_restarted_creates_no_duplicate(cluster, k8s_api, tmp_path):
    log = tmp_path / "operator.log"
    op = OperatorProcess(k8s_api, log, cluster.backend).start()
    cluster.create(manifest("midstage"))
    wait_for(lambda: cluster.jobs("midstage").get("midstage-s1-a1"), what="s1-a1", proc=op)
    op.kill()
    # While the operator is down, stage 1 finishes.
    finish_running_jobs(cluster, ["midstage"])
    op = OperatorProcess(k8s_api, log, cluster.backend).start()
    wait_for(lambda: cluster.jobs("midstage").get("midstage-s2-a1"), what="s2-a1 after restart", proc=op)
    op.kill()  # right after it created stage 2, perhaps before its status patch
    op = OperatorProcess(k8s_api, log, cluster.backend).start()
    status = wait_for(lambda: (s := cluster.status("midstage")).get("stage") == "2/3" and
                      s["stages"][1].get("attempts") == 1 and s, what="stage 2 recorded", proc=op)
    assert [s["phase"] for s in status["stages"]] == ["Succeeded", "Running", "Pending"]
    assert sorted(cluster.jobs("midstage")) == ["midstage-s1-a1", "midstage-s2-a1"]
    op.stop()


def test_random_kills_during_a_burst_never_duplicate_or_skip(cluster, k8s_api, tmp_path):
    rng = random.Random(5)
    log = tmp_path / "operator.log"
    names = [f"burst-{i}" for i in range(4)]
    for name in names:
        cluster.create(manifest(name))
    for _ in range(5):
        op = OperatorProcess(k8s_api, log, cluster.backend).start()
        wait_for(lambda: rng.random() < 0.3, what="a random moment", timeout=5)
        op.kill()
        finish_running_jobs(cluster, names)
    op = OperatorProcess(k8s_api, log, cluster.backend).start()

    def all_done() -> bool:
        finish_running_jobs(cluster, names)
        return all(cluster.status(n).get("phase") == "Succeeded" for n in names)

    wait_for(all_done, what="every burst job Succeeded", timeout=120, proc=op)
    for name in names:
        assert sorted(cluster.jobs(name)) == [f"{name}-s{i}-a1" for i in (1, 2, 3)]
        assert [s["attempts"] for s in cluster.status(name)["stages"]] == [1, 1, 1]
    op.stop()
