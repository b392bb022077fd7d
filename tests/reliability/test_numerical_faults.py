"""Issue 8.6 — injected NaN/Inf gradients and loss spikes, end to end through the operator.

Three jobs run side by side (operator + local executor + the real trainer, 1 process each), each with
a fault injected on its first attempt only (``CTXEXT_INJECT_*=steps@1`` in ``spec.env``):

* NaN loss at step 3, ``onNonFiniteGradients: RetryWithLowerLR`` → the guard stops attempt 1 before
  ``engine.step()`` (reasonCode NonFiniteGradients); attempt 2 resumes from checkpoint step 2 with
  the learning rate × ``learningRateBackoff`` (shown in status.stages[0].learningRate) and succeeds;
* loss × 100 at steps 7 and 8 with ``maxLossSpikes: 1`` → step 7's update is skipped (weights
  untouched), the second spike stops attempt 1 before its update (reasonCode LossSpikes, 7 steps
  done); attempt 2 resumes from checkpoint step 6, lower learning rate, succeeds;
* NaN loss at step 3 with ``onNonFiniteGradients: Fail`` → the job fails at once, no attempt 2.

"Never trained through": no attempt ever logs the faulty step as trained, and the retry resumes
from a checkpoint saved before the fault.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.reliability._harness import Rig, base_model, tiny_manifest

pytestmark = [pytest.mark.apiserver, pytest.mark.slow]
NS = "rel-numeric"
LR, BACKOFF, STEPS = 1.0e-3, 0.25, 10
CASES: dict[str, tuple[dict[str, str], dict[str, Any], str, list[int], int | None]] = {
    # name: (env, failure policy, expected reasonCode, fault steps, checkpoint resumed from)
    "nan-retry": ({"CTXEXT_INJECT_NAN_AT_STEP": "3@1"}, {"onNonFiniteGradients": "RetryWithLowerLR"},
                  "NonFiniteGradients", [3], 2),
    "spike-retry": ({"CTXEXT_INJECT_LOSS_SPIKE_AT_STEPS": "7,8@1"},
                    {"onNonFiniteGradients": "RetryWithLowerLR", "maxLossSpikes": 1}, "LossSpikes", [7, 8], 6),
    "nan-fail": ({"CTXEXT_INJECT_NAN_AT_STEP": "3@1"}, {"onNonFiniteGradients": "Fail"}, "NonFiniteGradients",
                 [3], None),
}


def test_nan_and_loss_spikes_are_caught_and_handled_per_failure_policy(k8s_api, tmp_path):
    base = base_model(tmp_path / "base")
    with Rig(k8s_api, NS, tmp_path) as rig:
        for name, (env, policy, *_) in CASES.items():
            obj = tiny_manifest(name, base, lengths=[192], steps=STEPS, interval=2, env=env,
                                failure_policy={**policy, "learningRateBackoff": BACKOFF})
            obj["spec"]["curriculum"]["stageDefaults"]["learningRate"] = LR
            rig.cluster.create(obj)
        final = {name: rig.wait_finished(name, timeout=400) for name in CASES}

    caught = 0
    for name, (_, _, code, fault_steps, resumed) in CASES.items():
        status, first = final[name], f"{name}-s1-a1"
        stage = status["stages"][0]
        bad = status["results"][first]
        assert bad["status"] == "Failed" and bad["reasonCode"] == code, json.dumps(bad, indent=1)
        assert bad["stepsDone"] == fault_steps[-1] - 1  # the guard stops before the last fault's update
        caught += 1
        attempt1 = [r for r in rig.train_log(name)][: bad["stepsDone"]]
        # a faulty step is never trained: a NaN stops first, a tolerated spike is logged as a skipped update
        assert all(r["step"] < fault_steps[0] or r.get("skipped") == "lossSpike" for r in attempt1)
        if resumed is None:  # Fail: no second attempt
            assert status["phase"] == "Failed", json.dumps(status.get("conditions"), indent=1) + rig.logs()
            assert sorted(rig.cluster.pytorchjobs(name)) == [first]
            failed = next(c for c in status["conditions"] if c["type"] == "Failed")
            assert failed["status"] == "True" and failed["reason"] == code
            assert "onNonFiniteGradients is Fail" in failed["message"]
            continue
        assert status["phase"] == "Succeeded", json.dumps(status.get("conditions"), indent=1) + rig.logs()
        assert sorted(rig.cluster.pytorchjobs(name)) == [first, f"{name}-s1-a2"]
        assert stage["attempts"] == 2 and stage["learningRate"] == pytest.approx(LR * BACKOFF)
        good = stage["result"]
        assert good["jobName"] == f"{name}-s1-a2" and good["learningRate"] == pytest.approx(LR * BACKOFF)
        assert good["resumedFromStep"] == resumed and good["stepsDone"] == STEPS
        assert good["health"]["nonFiniteSteps"] == 0
        # After the resume, the faulty steps were trained again, cleanly, at the lower learning rate.
        retried = [r for r in rig.train_log(name) if r["step"] > resumed][-(STEPS - resumed):]
        assert [r["step"] for r in retried] == list(range(resumed + 1, STEPS + 1))
        assert all(r["lr"] <= LR * BACKOFF * (1 + 1e-9) for r in retried)
        assert all(r["loss"] < 50 for r in retried)
    assert caught == len(CASES) == 3
    print(f"\nnumerical faults: {caught} injected ({', '.join(CASES)}), {caught} caught by the guard; "
          "2 retried with a lower learning rate and succeeded, 1 failed per policy")
