"""`ctxext run` and the operator make the same decisions (#27 item 11): the same scripted trainer outcomes
(non-finite gradients, a missed gate, no result at all) through `ctxext run`'s LocalRun and through the
operator's reconciler give the same attempts, learning rates, step counts and final verdict.

The trainer here is a small script that writes each attempt's scripted result.json (the real trainer runs in
tests/e2e); everything else — the runner, the reconciler and ctxext.decide — is the real code.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from ctxext.local_run import runner
from ctxext.local_run.runner import LocalRun, RunOptions
from ctxext.manifest import job_from_object
from ctxext.planner import plan_curriculum
from tests.unit.helpers import example, with_path
from tests.unit.test_controller_reconcile import World

FAKE_TRAINER = """
import json, sys
from pathlib import Path
cfg = json.loads(Path(sys.argv[sys.argv.index("--stage-config") + 1]).read_text())
scenario = json.loads(Path(sys.argv[1]).read_text())
out = Path(cfg["outputDir"])
with (out.parent / "calls.jsonl").open("a") as f:
    f.write(json.dumps([cfg["stage"], cfg["attempt"], cfg["learningRate"], cfg["steps"]]) + "\\n")
result = scenario[f"{cfg['stage']}-{cfg['attempt']}"]
if result is None:
    sys.exit(1)
(out / "model").mkdir(exist_ok=True)
(out / "result.json").write_text(json.dumps(result))
"""
BASE = {"status": "Succeeded", "evaluation": {"passkeyAccuracy": {"128": 1.0, "512": 0.72, "1024": 0.0},
                                               "perplexity": {"128": 6.5, "512": 6.6, "1024": 8.7}}}


def good(steps: int, ppl: float = 6.6) -> dict[str, Any]:
    return {"status": "Succeeded", "stepsDone": steps, "totalSteps": steps, "finalLoss": 0.5,
            "evaluation": {"passkeyAccuracy": {"128": 1.0, "512": 1.0, "1024": 1.0},
                           "perplexity": {"128": ppl, "512": 6.0, "1024": 6.0}}}


FAULT = {"status": "Failed", "reason": "non-finite gradients at step 7", "reasonCode": "NonFiniteGradients"}
MISSED = {**good(150), "evaluation": {**good(150)["evaluation"], "passkeyAccuracy": {"128": 1.0, "512": 0.5,
                                                                                       "1024": 0.0}}}
#: stage-attempt → what the trainer reports (None: it dies without a result)
SUCCEEDS = {"0-1": BASE, "1-1": FAULT, "1-2": MISSED, "1-3": good(300), "2-1": None, "2-2": good(350)}
BASE_RETRIED = {"0-1": None, "0-2": BASE, "1-1": good(150), "2-1": good(350)}
BASE_BROKEN = {"0-1": None, "0-2": None, "0-3": {"status": "Failed", "reason": "OSError: no config.json"}}
FAILS = {"0-1": BASE, "1-1": good(150, ppl=7.5), "1-2": good(300, ppl=7.4), "1-3": good(450, ppl=7.3)}


def manifest(model: Path) -> dict[str, Any]:
    obj = with_path(example("tiny-cpu.yaml"), "spec.model.source", f"file://{model}")
    obj["metadata"]["name"] = "t"
    obj["spec"]["failurePolicy"] = {"maxRetries": 2, "backoffSeconds": 0, "onGateFailure": "Retry"}
    return obj


def local_run(tmp_path: Path, scenario: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[int, list, str]:
    model = tmp_path / "base"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    fake, scripted = tmp_path / "fake_trainer.py", tmp_path / "scenario.json"
    fake.write_text(FAKE_TRAINER)
    scripted.write_text(json.dumps(scenario))
    monkeypatch.setattr(runner, "trainer_command",
                        lambda path, nproc: [sys.executable, str(fake), str(scripted), "--stage-config", str(path)])
    job = job_from_object(manifest(model))
    console = Console(file=open(tmp_path / "console.txt", "w"), width=200)  # noqa: SIM115
    code = LocalRun(job, plan_curriculum(job.spec), RunOptions(workdir=tmp_path / "run"), console).run()
    console.file.close()
    calls = [tuple(json.loads(line)) for line in (tmp_path / "run" / "calls.jsonl").read_text().splitlines()]
    return code, sorted(calls), (tmp_path / "console.txt").read_text()


def operator_run(scenario: dict[str, Any]) -> tuple[World, list]:
    w = World(manifest(Path("/models/base")))
    calls = []
    for _ in range(20):
        d = w.step()
        for c in d.creates:
            planned = w.plan.stages[c.stage - 1] if c.stage else None
            calls.append((c.stage, c.attempt, c.learning_rate if c.stage else 1e-3,
                          c.steps or (planned.steps if planned else 0)))
        if w.status.get("phase") in ("Succeeded", "Failed"):
            break
        # an attempt that failed without a result waits out its pods' termination grace period
        w.now += timedelta(hours=1)
        for name, job in list(w.jobs.items()):
            if job.state == "Pending":
                result = scenario[f"{job.stage}-{job.attempt}"]
                w.finish(name, "Succeeded" if result and result["status"] == "Succeeded" else "Failed", result)
    return w, sorted(calls)


def test_retries_lower_lr_gate_retries_and_no_result_decide_the_same_on_both_paths(tmp_path, monkeypatch):
    code, local_calls, console = local_run(tmp_path, SUCCEEDS, monkeypatch)
    assert code == 0, console
    w, operator_calls = operator_run(SUCCEEDS)
    assert w.status["phase"] == "Succeeded"
    # baseline once; stage 1: lr halved after non-finite gradients, 150 more steps after the missed gate;
    # stage 2: the attempt without a result is retried as it is
    assert local_calls == operator_calls == [(0, 1, 1e-3, 0), (1, 1, 1e-3, 150), (1, 2, 5e-4, 150),
                                             (1, 3, 5e-4, 300), (2, 1, 1e-3, 350), (2, 2, 1e-3, 350)]
    assert "training on to step 300" in console and "the trainer reported no stage result" in console


def test_a_gate_that_keeps_failing_fails_both_paths_with_the_same_message(tmp_path, monkeypatch):
    code, local_calls, console = local_run(tmp_path, FAILS, monkeypatch)
    w, operator_calls = operator_run(FAILS)
    assert code == 1 and w.status["phase"] == "Failed"
    assert local_calls == operator_calls == [(0, 1, 1e-3, 0), (1, 1, 1e-3, 150), (1, 2, 1e-3, 300),
                                             (1, 3, 1e-3, 450)]
    message = w.cond("Failed")["message"]
    assert message.startswith("stage 1/2 failed after 3 attempts: evaluation gate not met: perplexity at 128 = 7.3")
    assert message in " ".join(console.split())  # the same words (rich wraps long lines)


def test_the_base_model_evaluation_is_retried_and_fails_the_same_way_on_both_paths(tmp_path, monkeypatch):
    # `ctxext run` used to give up on the first failed baseline evaluation; the operator retries it.
    code, local_calls, console = local_run(tmp_path / "retried", BASE_RETRIED, monkeypatch)
    assert code == 0, console
    w, operator_calls = operator_run(BASE_RETRIED)
    assert w.status["phase"] == "Succeeded"
    assert local_calls == operator_calls == [(0, 1, 1e-3, 0), (0, 2, 1e-3, 0), (1, 1, 1e-3, 150), (2, 1, 1e-3, 350)]
    code, local_calls, console = local_run(tmp_path / "broken", BASE_BROKEN, monkeypatch)
    w, operator_calls = operator_run(BASE_BROKEN)
    assert code == 1 and w.status["phase"] == "Failed" and w.cond("Failed")["reason"] == "BaselineFailed"
    assert local_calls == operator_calls == [(0, 1, 1e-3, 0), (0, 2, 1e-3, 0), (0, 3, 1e-3, 0)]
    message = w.cond("Failed")["message"]
    assert message == ("the base model could not be evaluated, so no stage was trained: baseline evaluation "
                       "failed after 3 attempts: OSError: no config.json")
    assert message in " ".join(console.split())
