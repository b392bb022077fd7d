"""The one decision logic (ctxext.decide) and the operator's use of it: the base model's evaluation job,
gate retries that train further, no result = a failed attempt, gates refused before launch."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ctxext.api.spec import FailurePolicySpec
from ctxext.decide import gate_problems, judge, next_attempt
from ctxext.errors import SpecError
from ctxext.manifest import job_from_object
from ctxext.planner import plan_curriculum
from tests.unit.helpers import example, with_path
from tests.unit.test_controller_reconcile import UID, World, manifest

PPL_GATE = {"metric": "perplexity", "atLength": "original", "maxIncrease": 0.1}
BASE = {"status": "Succeeded", "stage": 0, "stepsDone": 0,
        "evaluation": {"perplexity": {"8192": 5.0, "16384": 6.0}, "passkeyAccuracy": {"8192": 1.0, "16384": 0.7},
                       "effectiveLength": 8192}}


def ok(ppl: float, steps: int = 1000) -> dict:
    return {"status": "Succeeded", "totalSteps": steps, "stepsDone": steps,
            "evaluation": {"perplexity": {"8192": ppl, "16384": ppl}, "passkeyAccuracy": {"8192": 1.0, "16384": 1.0}}}


def test_a_max_increase_gate_gets_the_base_model_evaluated_first_by_its_own_job():
    w = World(manifest(evaluation={"gates": [PPL_GATE]}))
    d = w.step()
    assert [(c.stage, c.attempt) for c in d.creates] == [(0, 1)]  # no stage trains before the baseline
    assert w.status["baseline"]["jobName"] == "t-s0-a1" and w.status["stages"][0]["attempts"] == 0
    assert "baseline evaluation attempt 1" in w.cond("Progressing")["message"]
    w.finish("t-s0-a1", "Succeeded", BASE)
    d = w.step()
    assert [(c.stage, c.attempt) for c in d.creates] == [(1, 1)]
    assert w.status["baseline"]["phase"] == "Succeeded"
    assert w.status["baseline"]["result"]["evaluation"]["perplexity"]["8192"] == 5.0  # recorded in status
    w.finish("t-s1-a1", "Succeeded", ok(5.2))  # +4% over the base model's 5.0: passes
    assert [(c.stage, c.attempt) for c in w.step().creates] == [(2, 1)]
    assert w.status["stages"][0]["phase"] == "Succeeded"


def test_the_recorded_baseline_is_never_evaluated_again_on_retries_or_after_a_restart():
    w = World(manifest(evaluation={"gates": [PPL_GATE]}, failurePolicy={"backoffSeconds": 0}))
    w.step()
    w.finish("t-s0-a1", "Succeeded", BASE)
    w.step()
    w.finish("t-s1-a1", "Failed", {"status": "Failed", "reason": "OOM", "reasonCode": "Error"})
    assert [(c.stage, c.attempt) for c in w.step().creates] == [(1, 2)]
    del w.jobs["t-s0-a1"]  # garbage-collected, and the operator restarts: status alone remembers
    w.status["results"].pop("t-s0-a1")
    d = w.step()
    assert d.creates == [] and w.status["baseline"]["phase"] == "Succeeded"
    w.finish("t-s1-a2", "Succeeded", ok(5.6))  # +12%: the gate is judged against the recorded baseline
    w.step()
    assert w.status["phase"] == "Failed" and "+12.0% over the base model's 5" in w.cond("Failed")["message"]


def test_an_unevaluable_base_model_fails_the_job_before_any_training():
    w = World(manifest(evaluation={"gates": [PPL_GATE]}, failurePolicy={"maxRetries": 0}))
    w.step()
    w.finish("t-s0-a1", "Failed", {"status": "Failed", "reason": "OSError: no config.json", "reasonCode": "Error"})
    d = w.step()
    assert d.creates == [] and w.status["phase"] == "Failed"
    assert w.cond("Failed")["reason"] == "BaselineFailed"
    assert w.cond("Failed")["message"].startswith("the base model could not be evaluated, so no stage was trained")
    assert all(s["attempts"] == 0 for s in w.status["stages"])


def test_a_gate_retry_trains_the_stage_further_instead_of_re_evaluating_the_same_weights():
    # #27 item 7: the retry used to resume at step == steps, skip training and re-evaluate the same weights.
    gates = [{"metric": "passkeyAccuracy", "atLength": "stage", "min": 0.9}]
    w = World(manifest(evaluation={"gates": gates}, failurePolicy={"onGateFailure": "Retry", "backoffSeconds": 5},
                       curriculum={"stages": [{"seqLen": 16384, "steps": 100}, {"seqLen": 65536}]}))
    w.step()
    w.finish("t-s1-a1", "Succeeded", {**ok(5.0, 100), "evaluation": {"passkeyAccuracy": {"16384": 0.5}}})
    w.step()
    assert "training on to step 200 in 5 s" in w.status["stages"][0]["message"]
    w.now += timedelta(seconds=6)
    created = w.step().creates
    assert [(c.stage, c.attempt, c.steps, c.learning_rate) for c in created] == [(1, 2, 200, 2e-5)]
    assert w.status["stages"][0]["steps"] == 200


def test_a_gate_retry_adopted_after_an_operator_crash_keeps_its_step_count():
    # The operator died after creating gate retry t-s1-a2 (200 steps) and before writing status: the adopted
    # job's own step count must be kept, or the next gate retry would train to 200 again, i.e. not at all.
    from ctxext.controller.builder import build_pytorchjob
    from ctxext.controller.observe import observe

    gates = [{"metric": "passkeyAccuracy", "atLength": "stage", "min": 0.9}]
    obj = manifest(evaluation={"gates": gates}, failurePolicy={"onGateFailure": "Retry", "backoffSeconds": 0},
                   curriculum={"stages": [{"seqLen": 16384, "steps": 100}, {"seqLen": 65536}]})
    w = World(obj)
    w.step()
    missed = {**ok(5.0, 100), "evaluation": {"passkeyAccuracy": {"16384": 0.5}}}
    w.finish("t-s1-a1", "Succeeded", missed)
    before = {**w.status, "stages": [dict(s) for s in w.status["stages"]]}
    [created] = w.step().creates
    body = build_pytorchjob(w.job, w.plan, 1, attempt=2, learning_rate=created.learning_rate, steps=created.steps)
    owner = [{"apiVersion": "ctxext.dev/v1alpha1", "kind": "ContextExtensionJob", "name": "t", "uid": UID,
              "controller": True}]  # as kopf.adopt sets it: only the job's own PyTorchJobs are adopted
    w.jobs["t-s1-a2"] = observe({**body, "metadata": {**body["metadata"], "name": "t-s1-a2",
                                                      "ownerReferences": owner}})
    w.status = before  # the status write of that pass was lost
    assert w.step().creates == [] and w.status["stages"][0]["steps"] == 200
    w.finish("t-s1-a2", "Succeeded", {**missed, "totalSteps": 200, "stepsDone": 200})
    assert [(c.attempt, c.steps) for c in w.step().creates] == [(3, 300)]


def test_judge_and_next_attempt_agree_on_every_failure_kind():
    gates = FailurePolicySpec(on_gate_failure="Retry", max_retries=1, backoff_seconds=10)
    assert judge({"status": "Failed", "reason": "boom"}, gates=[], stage_seq_len=1, original_length=1,
                 baseline=None).reason == "boom"
    assert judge({"status": "Succeeded"}, gates=[], stage_seq_len=1, original_length=1, baseline=None).passed
    n = next_attempt("LossSpikes", attempt=1, policy=gates, learning_rate=1e-3, steps=10, planned_steps=10)
    assert (n.retry, n.learning_rate, n.steps, n.delay_seconds) == (True, 5e-4, 10, 10.0)
    assert next_attempt("UnsupportedModel", attempt=1, policy=gates, learning_rate=1e-3, steps=10,
                        planned_steps=10).why_not == "permanent"
    assert next_attempt("GateFailed", attempt=1, policy=FailurePolicySpec(), learning_rate=1e-3, steps=10,
                        planned_steps=10).why_not == "onGateFailure"


def _plan_error(obj: dict) -> str:
    job = job_from_object(obj)
    with pytest.raises(SpecError) as err:
        plan_curriculum(job.spec)
    return str(err.value)


@pytest.mark.parametrize(("change", "words"), [
    ({"enabled": False, "gates": [{"metric": "passkeyAccuracy", "min": 0.9}]},
     "spec.evaluation.enabled: 1 gate(s) are set but evaluation is disabled"),
    ({"tasks": ["perplexity"], "gates": [{"metric": "passkeyAccuracy", "min": 0.9}]},
     "spec.evaluation.gates[0]: passkeyAccuracy is gated but evaluation.tasks ['perplexity'] does not run passkey"),
    ({"tasks": ["perplexity"], "gates": [{"metric": "effectiveLength"}]},
     "spec.evaluation.gates[0]: effectiveLength needs a retrieval task"),
    ({"gates": [{"metric": "passkeyAccuracy", "atLength": 32768, "min": 0.9}]},
     "spec.evaluation.gates[0].atLength: passkeyAccuracy is gated at 32768 tokens, but stage 1 is evaluated only "
     "at [8192, 16384]: add 32768 to evaluation.lengths"),
    ({"gates": [{"metric": "perplexity", "atLength": "stage", "maxIncrease": 0.1}]},
     "spec.evaluation.gates[0].maxIncrease: perplexity maxIncrease at 65536 tokens (stage 2) needs the base "
     "model's perplexity at 65536, but the base model is evaluated only at stage 1's lengths [8192, 16384]"),
])
def test_gates_that_could_never_be_judged_are_refused_before_launch(change, words):
    assert words in _plan_error(manifest(evaluation=change))


def test_the_shipped_examples_gates_can_all_be_judged():
    for name in ("tiny-cpu.yaml", "llama3-8b-1m.yaml"):
        job = job_from_object(example(name))
        assert gate_problems(job.spec, plan_curriculum(job.spec)) == []
    # the tiny example with 1024 dropped from its lengths could never judge stage 2's passkey gate
    assert "stage 2 is evaluated only at [128, 512]: add 1024 to evaluation.lengths" in _plan_error(
        with_path(example("tiny-cpu.yaml"), "spec.evaluation.lengths", [128, 512]))


def test_an_unjudgeable_gate_is_refused_by_validate_and_by_the_operator_before_anything_runs(tmp_path):
    # #27 item 11: with evaluation disabled the operator skipped the gates and Succeeded; `ctxext run` failed.
    import yaml
    from typer.testing import CliRunner

    from ctxext.cli.main import app

    obj = manifest(evaluation={"enabled": False, "gates": [{"metric": "passkeyAccuracy", "min": 0.9}]})
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(obj))
    out = CliRunner().invoke(app, ["validate", str(path)])
    assert out.exit_code != 0 and "gate(s) are set but evaluation is disabled" in out.output
    assert "Traceback" not in out.output
    w = World(obj)
    d = w.step()
    assert d.creates == [] and w.status["phase"] == "Failed"
    assert w.cond("InvalidSpec")["message"].startswith("spec.evaluation.enabled: 1 gate(s) are set but evaluation")
