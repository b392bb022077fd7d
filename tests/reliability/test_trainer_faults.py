"""Issue 8.2 / 8.3 — trainer crashes, preemption and damaged checkpoints, end to end.

* One trainer rank of a 2-process stage is SIGKILLed mid-stage: the PyTorchJob fails, the operator
  starts attempt 2, which resumes from the latest checkpoint and loses at most the checkpoint
  interval; every step of the stage is trained, none skipped.
* Preemption: ``spec.suspend`` makes the executor SIGTERM the trainer, which saves a checkpoint at the
  step it reached before it exits. While the job is suspended the newest checkpoint is truncated
  (a write cut short) — on resume the trainer detects it, falls back to the previous intact one, and
  the warning shows in ``status.warnings`` (and in the stage result).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.integration.operator_harness import wait_for
from tests.reliability._harness import Rig, base_model, tiny_manifest, trainer_ranks

pytestmark = [pytest.mark.apiserver, pytest.mark.distributed, pytest.mark.slow]
NS = "rel-trainer"
INTERVAL = 3


def _steps(rig: Rig, name: str) -> list[int]:
    return [r["step"] for r in rig.train_log(name)]


def test_killed_rank_is_retried_from_the_latest_checkpoint(k8s_api, tmp_path):
    name, steps, held = "rankkill", 30, 5
    hold = tmp_path / "hold"
    hold.touch()  # both ranks wait after step 5 (CTXEXT_HOLD_FROM_STEP): the kill lands at a known step
    with Rig(k8s_api, NS, tmp_path, executor_env={"CTXEXT_HOLD_FILE": str(hold),
                                                  "CTXEXT_HOLD_FROM_STEP": str(held)}) as rig:
        rig.cluster.create(tiny_manifest(name, base_model(tmp_path / "base"), lengths=[192], steps=steps,
                                         interval=INTERVAL, procs=2, max_retries=2))
        job = f"{name}-s1-a1"
        wait_for(lambda: len(_steps(rig, name)) >= held, what="five steps of attempt 1", timeout=300,
                 proc=rig.executor)
        ranks = wait_for(lambda: len(r := trainer_ranks(rig.root, NS, job)) == 2 and r, what="both ranks",
                         proc=rig.executor)
        os.kill(ranks[1], signal.SIGKILL)
        hold.unlink()  # rank 0 goes on, finds rank 1 gone; attempt 2 must not hold
        status = rig.wait_finished(name, timeout=400)
        assert status["phase"] == "Succeeded", json.dumps(status.get("conditions"), indent=1) + rig.logs()

    jobs = sorted(rig.cluster.pytorchjobs(name))
    failed = next(c for c in rig.cluster.pytorchjob(job)["status"]["conditions"] if c["type"] == "Failed")
    result = status["stages"][0]["result"]
    logged = _steps(rig, name)  # attempt 1 logged 1..reached, attempt 2 resumed+1..steps: read it off exactly
    reached = len(logged) - (steps - result["resumedFromStep"])
    assert logged == list(range(1, reached + 1)) + list(range(result["resumedFromStep"] + 1, steps + 1))
    assert reached == held  # the hold made sure no step ran after the kill
    lost = reached - result["resumedFromStep"]
    print(f"\ntrainer crash: rank 1 SIGKILLed after step {reached}; attempt 2 resumed from step "
          f"{result['resumedFromStep']} (lost {lost} ≤ interval {INTERVAL}); {job}: {failed['message']}")
    assert jobs == [f"{name}-s1-a1", f"{name}-s1-a2"]
    assert status["stages"][0]["attempts"] == 2 and result["jobName"] == f"{name}-s1-a2"
    assert 0 < result["resumedFromStep"] <= reached and lost <= INTERVAL
    assert result["resumedFromStep"] % INTERVAL == 0 and result["stepsDone"] == steps
    assert sorted(set(_steps(rig, name))) == list(range(1, steps + 1))  # nothing skipped


def test_sigterm_checkpoints_and_a_truncated_checkpoint_is_skipped_with_a_warning(k8s_api, tmp_path):
    name, steps, held = "preempted", 40, 2 * INTERVAL + 1
    hold = tmp_path / "hold"
    hold.touch()  # the trainer waits after step 7 until SIGTERM: it cannot finish before the suspension lands
    with Rig(k8s_api, NS, tmp_path, executor_env={"CTXEXT_HOLD_FILE": str(hold),
                                                  "CTXEXT_HOLD_FROM_STEP": str(held)}) as rig:
        rig.cluster.create(tiny_manifest(name, base_model(tmp_path / "base"), lengths=[192], steps=steps,
                                         interval=INTERVAL))
        job = f"{name}-s1-a1"
        wait_for(lambda: len(_steps(rig, name)) >= held, what="a few steps", timeout=300, proc=rig.executor)
        rig.cluster.patch_spec(name, {"suspend": True})  # → runPolicy.suspend → SIGTERM to the trainer
        wait_for(lambda: rig.cluster.status(name).get("phase") == "Suspended" and
                 (rig.cluster.status(name).get("results") or {}).get(job, {}).get("reasonCode") == "Preempted",
                 what="the preempted result", timeout=180, proc=rig.executor)
        preempted = rig.cluster.status(name)["results"][job]
        saved = preempted["stepsDone"]
        ckpts = rig.stage_dir(name) / "checkpoints"
        # SIGTERM saved the step it had reached, whether or not that is on the interval.
        assert preempted["checkpoint"].endswith(f"/step-{saved}")
        assert (ckpts / f"step-{saved}" / "MANIFEST.json").is_file()
        assert max(_steps(rig, name)) == saved
        older = sorted(int(p.name.split("-")[1]) for p in ckpts.glob("step-*") if int(p.name.split("-")[1]) < saved)
        assert older, "an older checkpoint to fall back to"
        shard = max((ckpts / f"step-{saved}").rglob("*.pt"), key=lambda p: p.stat().st_size)
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])  # a write cut short
        assert saved == held
        hold.unlink()
        rig.cluster.patch_spec(name, {"suspend": False})
        status = rig.wait_finished(name, timeout=300)

    assert status["phase"] == "Succeeded", json.dumps(status.get("conditions"), indent=1) + rig.logs()
    result = status["stages"][0]["result"]
    warnings = status.get("warnings") or []
    damaged = [w for w in warnings if f"step-{saved} is unusable" in w]
    print(f"\npreemption: SIGTERM at step {saved} saved checkpoint step-{saved}; truncated {Path(shard).name} "
          f"(1 checkpoint corrupted); resumed from step {result['resumedFromStep']} (1 recovered); "
          f"status warning: {damaged}")
    assert result["resumedFromStep"] == older[-1] and result["stepsDone"] == steps
    assert any(f"step-{saved} is unusable" in w for w in result["warnings"])
    assert damaged and damaged[0].startswith(f"{job}: checkpoint step-{saved} is unusable (")
    assert sorted(rig.cluster.pytorchjobs(name)) == [job]  # a preemption is not a new attempt
    assert "is unusable" in rig.executor_log(job)
