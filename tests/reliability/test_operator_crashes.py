"""Issue 8.1 — the operator SIGKILLed at random moments of a 3-stage curriculum and restarted.

Operator + local executor + the real trainer (1 process) run a 3-stage tiny curriculum. The
operator is killed with SIGKILL at seeded random moments (each after a random 0.2–3 s of life, so
kills land during start-up, mid-stage, between a training job's create and its status patch, ...) and
started again, over and over until the curriculum is over (≥ 10 kills, at most 60). The job must
end Succeeded with exactly one training job per stage attempt and every stage run exactly once, on both
backends (PyTorchJob and TrainJob, #22 item 5).
"""

from __future__ import annotations

import json
import random
import time

import pytest

from tests.reliability._harness import TERMINAL, Rig, base_model, tiny_manifest

pytestmark = [pytest.mark.apiserver, pytest.mark.slow]
NS = "rel-crash"
NAME = "crashy"
LENGTHS = [192, 256, 320]
SEED = 8
KILLS = 10
MAX_KILLS = 60


def test_operator_killed_at_random_moments_finishes_without_duplicates_or_skips(k8s_api, tmp_path, backend):
    rng = random.Random(SEED)
    rig = Rig(k8s_api, f"{NS}-{backend}", tmp_path, backend=backend)
    rig.start_executor()
    kills, phases_seen = 0, set()
    try:
        rig.start_operator()
        rig.cluster.create(tiny_manifest(NAME, base_model(tmp_path / "base"), lengths=LENGTHS, steps=4))
        # Kill until the curriculum is over (at least KILLS times), so that kills land in every stage.
        while kills < MAX_KILLS:
            time.sleep(rng.uniform(0.2, 3.0))
            assert rig.operator is not None and rig.operator.alive(), rig.logs()
            rig.operator.kill()
            kills += 1
            status = rig.cluster.status(NAME)
            phases_seen.add((status.get("stage"), status.get("phase")))
            if kills >= KILLS and status.get("phase") in TERMINAL:
                break
            rig.start_operator()
        if not (rig.operator and rig.operator.alive()):
            rig.start_operator()
        status = rig.wait_finished(NAME, timeout=420)
    finally:
        if rig.executor:
            rig.executor.stop()
        if rig.operator:
            rig.operator.stop()

    jobs = sorted(rig.cluster.jobs(NAME))
    print(f"\noperator crashes ({backend}): {kills} SIGKILLs injected, {kills} restarts survived; "
          f"stage/phase at the kills: {sorted(phases_seen, key=str)}; training jobs: {jobs}")
    assert kills >= 10
    assert status["phase"] == "Succeeded", json.dumps(status.get("conditions"), indent=1) + rig.logs()
    assert jobs == [f"{NAME}-s{i}-a1" for i in (1, 2, 3)]
    assert [(s["index"], s["phase"], s["attempts"]) for s in status["stages"]] == [
        (i, "Succeeded", 1) for i in (1, 2, 3)]
    for i in (1, 2, 3):  # each stage trained exactly once: steps 1..4, never replayed, never skipped
        assert [r["step"] for r in rig.train_log(NAME, i)] == [1, 2, 3, 4]
        assert status["stages"][i - 1]["result"]["stepsDone"] == 4
    assert set(status["results"]) == {f"{NAME}-s{i}-a1" for i in (1, 2, 3)}
