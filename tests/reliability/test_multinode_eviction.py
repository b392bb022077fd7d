"""A real trainer on two nodes (Master + Worker, torchrun's ``PET_*`` rendezvous), preempted by the eviction
of its pods, through the operator (#26 item 5).

The local executor starts each replica as its own ``python -m ctxext_trainer.launch`` (torchrun) with the
``PET_NNODES``/``PET_NODE_RANK``/``PET_MASTER_*`` variables Kubeflow injects, so the two trainer ranks meet
only through torchrun's rendezvous, as on two nodes. Mid-stage both pods are evicted as a node drain or a
scheduler preemption evicts them: the kubelet sends SIGTERM to each container's first process (torchrun),
not to the trainer. The trainer must still checkpoint the step it reached, report ``Preempted``, and the
operator must resume it from that checkpoint in a new attempt on both nodes, losing no step.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.integration.operator_harness import wait_for
from tests.reliability._harness import Rig, base_model, descendants, process_env, tiny_manifest, trainer_ranks

pytestmark = [pytest.mark.apiserver, pytest.mark.distributed, pytest.mark.slow]
NS = "rel-multinode"


def test_two_nodes_rendezvous_and_an_eviction_of_their_pods_resumes_from_the_checkpoint(k8s_api, tmp_path):
    name, steps, held = "evicted", 16, 5
    hold = tmp_path / "hold"
    hold.touch()  # both ranks wait after step 5 (CTXEXT_HOLD_FROM_STEP): the eviction lands at a known step
    obj = tiny_manifest(name, base_model(tmp_path / "base"), lengths=[192], steps=steps, interval=4, max_retries=1)
    obj["spec"]["curriculum"]["stages"][0]["nodes"] = 2  # Master + 1 Worker, one trainer process each
    with Rig(k8s_api, NS, tmp_path, executor_env={"CTXEXT_HOLD_FILE": str(hold),
                                                  "CTXEXT_HOLD_FROM_STEP": str(held)}) as rig:
        rig.cluster.create(obj)
        job = f"{name}-s1-a1"
        wait_for(lambda: len(rig.train_log(name)) >= held, what="five steps on two nodes", timeout=300,
                 proc=rig.executor)
        ranks = wait_for(lambda: len(r := trainer_ranks(rig.root, NS, job)) == 2 and r, what="both ranks",
                         proc=rig.executor)
        pods = json.loads((rig.root / ".executor" / "pids" / f"{NS}_{job}").read_text())
        assert sorted(pods) == ["Master", "Worker-0"]
        # each rank runs under its own replica's torchrun: rank 0 on the Master, rank 1 on the Worker
        assert {r: next(p for p, leader in pods.items() if pid in descendants(int(leader)))
                for r, pid in ranks.items()} == {0: "Master", 1: "Worker-0"}
        envs = {r: process_env(pid) for r, pid in ranks.items()}
        assert {e["WORLD_SIZE"] for e in envs.values()} == {"2"} and {e["LOCAL_RANK"] for e in envs.values()} == {"0"}
        assert [envs[r]["GROUP_RANK"] for r in (0, 1)] == ["0", "1"]  # torchrun's node rank, from PET_NODE_RANK
        for leader in pods.values():
            os.kill(int(leader), signal.SIGTERM)  # the kubelet evicting each pod: SIGTERM to its first process
        preempted = wait_for(lambda: (rig.cluster.status(name).get("results") or {}).get(job, {}).get(
            "reasonCode") == "Preempted" and rig.cluster.status(name)["results"][job], what="the preempted result",
            timeout=180, proc=rig.executor)
        hold.unlink()
        status = rig.wait_finished(name, timeout=400)
        assert status["phase"] == "Succeeded", json.dumps(status.get("conditions"), indent=1) + rig.logs()

    assert preempted["stepsDone"] == held and preempted["checkpoint"].endswith(f"/step-{held}")
    result = status["stages"][0]["result"]
    assert result["jobName"] != job and result["resumedFromStep"] == held and result["stepsDone"] == steps
    logged = [r["step"] for r in rig.train_log(name)]
    assert logged == list(range(1, steps + 1)), logged  # the eviction lost no step and repeated none
    assert rig.executor_log(result["jobName"], "worker-0")  # the resumed attempt ran on both nodes again
