"""The pure reconciler: status + observed PyTorchJobs + now → actions, without a cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ctxext.controller.model import OPERATOR_FIELDS, Inputs
from ctxext.controller.observe import ObservedJob
from ctxext.controller.reconcile import reconcile
from ctxext.errors import SpecError
from ctxext.manifest import job_from_object
from ctxext.planner import plan_curriculum
from tests.unit.helpers import minimal

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
FAULT = {"status": "Failed", "reason": "non-finite gradients at step 113", "reasonCode": "NonFiniteGradients",
         "checkpoint": "/ckpt/ns/t/stage-1/checkpoints/step-100"}


def manifest(**spec):
    spec.setdefault("curriculum", {"stages": [{"seqLen": 16384}, {"seqLen": 65536}],
                                   "stageDefaults": {"learningRate": 1e-4}})
    return minimal(**spec)


class World:
    """The cluster as the reconciler sees it: CEJ status and PyTorchJobs; applies decisions."""

    def __init__(self, obj):
        self.job = job_from_object(obj)
        try:
            self.plan, self.error = plan_curriculum(self.job.spec), None
        except SpecError as exc:
            self.plan, self.error = None, exc
        self.status: dict = {}
        self.jobs: dict[str, ObservedJob] = {}
        self.now = T0

    def step(self, **kw):
        d = reconcile(Inputs(name="t", namespace="ns", generation=1, spec=self.job.spec, plan=self.plan,
                             spec_error=self.error, status=self.status, jobs=list(self.jobs.values()),
                             now=self.now, result_grace_seconds=kw.get("grace", 0)))
        for c in d.creates:
            name = f"t-s{c.stage}-a{c.attempt}"
            self.jobs.setdefault(name, ObservedJob(name=name, stage=c.stage, attempt=c.attempt, state="Pending",
                                                   learning_rate=c.learning_rate,
                                                   suspended=self.job.spec.suspend))
        for s in d.suspends:
            old = self.jobs[s.name]
            self.jobs[s.name] = ObservedJob(**{**old.__dict__, "suspended": s.suspend})
        self.status.update({k: v for k, v in d.status.items() if k in OPERATOR_FIELDS})
        return d

    def finish(self, name, state, result=None):
        old = self.jobs[name]
        self.jobs[name] = ObservedJob(**{**old.__dict__, "state": state, "finished_at": self.now})
        if result is not None:
            self.status.setdefault("results", {})[name] = result

    def cond(self, kind):
        return next(c for c in self.status["conditions"] if c["type"] == kind)


def test_create_plans_stages_and_starts_stage_one_once():
    w = World(manifest())
    d = w.step()
    assert [(c.stage, c.attempt) for c in d.creates] == [(1, 1)]
    assert w.status["phase"] == "Running" and w.status["stage"] == "1/2" and w.status["seqLen"] == 16384
    assert [s["phase"] for s in w.status["stages"]] == ["Running", "Pending"]
    assert w.cond("Progressing")["status"] == "True"
    again = w.step()
    assert again.creates == [] and again.status_patch(w.status) == {}


def test_restart_after_create_before_status_adopts_the_job():
    w = World(manifest())
    w.step()
    w.status = {}  # the operator died before it wrote status
    d = w.step()
    assert d.creates == []
    assert w.status["stages"][0]["attempts"] == 1 and w.status["stages"][0]["jobName"] == "t-s1-a1"


def test_success_advances_and_finishes_with_final_model():
    w = World(manifest())
    w.step()
    w.finish("t-s1-a1", "Succeeded", {"status": "Succeeded", "finalLoss": 2.5, "perplexity": 12.2})
    d = w.step()
    assert [(c.stage, c.attempt) for c in d.creates] == [(2, 1)]
    assert w.status["stages"][0]["phase"] == "Succeeded" and w.status["stages"][0]["result"]["finalLoss"] == 2.5
    assert w.status["stage"] == "2/2" and w.status["loss"] == 2.5
    assert ("Running", "Succeeded") in d.transitions and d.stage_durations == [0.0]
    w.finish("t-s2-a1", "Succeeded", {"status": "Succeeded", "modelPath": "/ckpt/ns/t/stage-2/model"})
    d = w.step()
    assert d.creates == [] and w.status["phase"] == "Succeeded"
    assert w.status["finalModelPath"] == "/ckpt/ns/t/stage-2/model"
    assert w.cond("Ready")["status"] == "True" and w.cond("Progressing")["status"] == "False"


def test_failure_retries_with_backoff_lower_lr_then_fails_with_reason():
    w = World(manifest(failurePolicy={"maxRetries": 2, "backoffSeconds": 60}))
    w.step()
    w.finish("t-s1-a1", "Failed", FAULT)
    d = w.step()
    stage = w.status["stages"][0]
    assert d.creates == [] and stage["nextAttemptTime"] == "2026-01-01T12:01:00Z"
    assert stage["message"] == ("stage 1/2 attempt 1 failed: non-finite gradients at step 113; retrying from "
                                "checkpoint step 100 with learning rate 5e-05 in 60 s")
    assert w.cond("Degraded")["status"] == "True" and w.status["phase"] == "Running"
    w.now += timedelta(seconds=59)
    assert w.step().creates == []
    w.now += timedelta(seconds=2)
    d = w.step()
    assert [(c.attempt, c.learning_rate) for c in d.creates] == [(2, 5e-05)]
    assert w.cond("Degraded")["status"] == "True"  # stays degraded while the retry runs
    w.finish("t-s1-a2", "Failed", {**FAULT, "reasonCode": "Error", "reason": "OOM"})
    w.step()
    assert w.status["stages"][0]["nextAttemptTime"] == "2026-01-01T12:03:01Z"  # 60·2^(3−2)
    w.now += timedelta(seconds=121)
    assert [(c.attempt, c.learning_rate) for c in w.step().creates] == [(3, 5e-05)]
    w.finish("t-s1-a3", "Failed", {"status": "Failed", "reason": "OOM again"})
    d = w.step()
    assert w.status["phase"] == "Failed" and d.creates == []
    assert w.cond("Failed")["message"] == "stage 1/2 failed after 3 attempts: OOM again"
    assert any(e.reason == "Failed" and e.type == "Warning" for e in d.events)
    assert w.step().creates == []  # terminal


def test_fail_policy_fails_at_once_on_non_finite_gradients():
    w = World(manifest(failurePolicy={"onNonFiniteGradients": "Fail"}))
    w.step()
    w.finish("t-s1-a1", "Failed", FAULT)
    w.step()
    assert w.status["phase"] == "Failed" and w.cond("Failed")["reason"] == "NonFiniteGradients"


def test_an_unsupported_model_fails_at_once_without_retries():
    w = World(manifest(failurePolicy={"maxRetries": 3, "backoffSeconds": 0}))
    w.step()
    w.finish("t-s1-a1", "Failed", {"status": "Failed", "reasonCode": "UnsupportedModel",
                                   "reason": "the base model's RoPE type 'dynamic' cannot be theta-scaled: ..."})
    d = w.step()
    assert d.creates == [] and w.status["phase"] == "Failed"
    assert w.cond("Failed")["reason"] == "UnsupportedModel"
    assert w.cond("Failed")["message"].startswith("stage 1/2 attempt 1 failed: the base model's RoPE type 'dynamic'")
    assert w.cond("Failed")["message"].endswith("retrying cannot help")


def test_failure_without_result_uses_the_pytorchjob_message_and_zero_backoff_retries_now():
    w = World(manifest(failurePolicy={"backoffSeconds": 0}))
    w.step()
    old = w.jobs["t-s1-a1"]
    w.jobs["t-s1-a1"] = ObservedJob(**{**old.__dict__, "state": "Failed", "message": "pod evicted"})
    d = w.step()
    assert [(c.attempt, c.learning_rate) for c in d.creates] == [(2, 1e-4)]
    assert "pod evicted" in d.events[0].message


def test_invalid_spec_is_a_condition_naming_the_field_not_a_crash():
    obj = manifest(resources={"gpusPerNode": 8, "gpuMemoryGiB": 1})
    obj["spec"]["model"]["architecture"] = {"numLayers": 32, "hiddenSize": 4096, "intermediateSize": 14336,
                                            "numAttentionHeads": 32, "vocabSize": 128256}
    w = World(obj)
    d = w.step()
    assert d.creates == [] and w.status["phase"] == "Failed"
    cond = w.cond("InvalidSpec")
    assert cond["status"] == "True" and cond["message"].startswith("spec.resources.gpuMemoryGiB: stage 1")
    assert [e.reason for e in d.events] == ["InvalidSpec"]
    assert w.step().events == []  # no hot loop of events


def test_suspend_and_resume_the_running_job():
    w = World(manifest())
    w.step()
    w.job.spec.suspend = True
    d = w.step()
    assert [(s.name, s.suspend) for s in d.suspends] == [("t-s1-a1", True)]
    assert w.status["phase"] == "Suspended" and w.cond("Progressing")["reason"] == "Suspended"
    assert w.step().suspends == []
    w.job.spec.suspend = False
    d = w.step()
    assert [(s.name, s.suspend) for s in d.suspends] == [("t-s1-a1", False)] and w.status["phase"] == "Running"


def test_succeeded_without_result_waits_for_the_grace_period_then_is_a_failed_attempt():
    # #27 item 11: no result and no gates used to mark the stage Succeeded (ctxext run failed it).
    w = World(manifest(failurePolicy={"maxRetries": 1, "backoffSeconds": 10}))
    w.step()
    w.finish("t-s1-a1", "Succeeded")
    assert w.step(grace=30).creates == [] and "waiting for its stage result" in w.status["stages"][0]["message"]
    w.now += timedelta(seconds=31)
    d = w.step(grace=30)
    assert d.creates == [] and w.status["stages"][0]["phase"] == "Running"
    assert "the trainer reported no stage result; retrying" in w.status["stages"][0]["message"]
    w.now += timedelta(seconds=11)
    assert [(c.stage, c.attempt) for c in w.step(grace=30).creates] == [(1, 2)]
    w.finish("t-s1-a2", "Succeeded")
    w.now += timedelta(seconds=31)
    w.step(grace=30)
    assert w.status["phase"] == "Failed"
    assert w.cond("Failed")["message"] == "stage 1/2 failed after 2 attempts: the trainer reported no stage result"


def test_progress_is_mirrored_and_never_written():
    w = World(manifest())
    w.step()
    w.status["progress"] = {"jobName": "t-s1-a1", "step": 5, "loss": 3.25, "perplexity": 25.8}
    d = w.step()
    assert d.status["loss"] == 3.25 and d.status["perplexity"] == 25.8
    assert "progress" not in d.status and "results" not in d.status


GATES = [{"metric": "passkeyAccuracy", "atLength": "stage", "min": 0.9}]


def test_failed_gate_fails_the_job_with_the_gate_message():
    w = World(manifest(evaluation={"gates": GATES}))
    w.step()
    w.finish("t-s1-a1", "Succeeded", {"status": "Succeeded", "evaluation": {"passkeyAccuracy": {"16384": 0.5}}})
    d = w.step()
    assert d.creates == [] and w.status["phase"] == "Failed"
    message = w.cond("Failed")["message"]
    assert message.startswith("stage 1/2 failed: evaluation gate not met: passkeyAccuracy") and "0.9" in message
    assert w.cond("Failed")["reason"] == "GateFailed"


def test_failed_gate_with_retry_policy_starts_another_attempt_and_passing_gates_advance():
    w = World(manifest(evaluation={"gates": GATES}, failurePolicy={"onGateFailure": "Retry", "backoffSeconds": 0}))
    w.step()
    w.finish("t-s1-a1", "Succeeded", {"status": "Succeeded", "evaluation": {"passkeyAccuracy": {"16384": 0.5}}})
    assert [(c.stage, c.attempt) for c in w.step().creates] == [(1, 2)]
    w.finish("t-s1-a2", "Succeeded", {"status": "Succeeded", "evaluation": {"passkeyAccuracy": {"16384": 0.95}}})
    assert [(c.stage, c.attempt) for c in w.step().creates] == [(2, 1)]
    assert w.status["stages"][0]["phase"] == "Succeeded"


def test_a_succeeded_pytorchjob_whose_result_failed_is_a_failed_attempt():
    w = World(manifest(failurePolicy={"backoffSeconds": 10}))
    w.step()
    w.finish("t-s1-a1", "Succeeded", FAULT)
    w.step()
    assert w.status["stages"][0]["nextAttemptTime"] == "2026-01-01T12:00:10Z"
    w.job.spec.suspend = True  # suspended during the backoff: still degraded, nothing starts
    w.now += timedelta(seconds=11)
    assert w.step().creates == [] and w.cond("Degraded")["status"] == "True"
    w.job.spec.suspend = False
    assert [(c.attempt, c.learning_rate) for c in w.step().creates] == [(2, 5e-05)]


def test_effective_length_gate_and_status_mirror_the_latest_evaluated_stage():
    w = World(manifest(evaluation={"gates": [{"metric": "effectiveLength"}]}))
    w.step()
    assert w.status.get("effectiveLength") is None
    w.finish("t-s1-a1", "Succeeded", {"status": "Succeeded", "evaluation": {"effectiveLength": 16384}})
    assert [(c.stage, c.attempt) for c in w.step().creates] == [(2, 1)]
    assert w.status["effectiveLength"] == 16384
    w.finish("t-s2-a1", "Succeeded", {"status": "Succeeded", "evaluation": {"effectiveLength": 16384}})
    w.step()
    assert w.status["phase"] == "Failed" and w.status["effectiveLength"] == 16384
    assert "effectiveLength = 16384 <" in w.cond("Failed")["message"]
