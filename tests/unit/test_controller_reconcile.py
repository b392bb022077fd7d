"""The pure reconciler: status + observed PyTorchJobs + now → actions, without a cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ctxext.controller.model import OPERATOR_FIELDS, Inputs
from ctxext.controller.observe import ObservedJob, format_time
from ctxext.controller.reconcile import reconcile
from ctxext.errors import SpecError
from ctxext.manifest import job_from_object
from ctxext.planner import plan_curriculum
from tests.unit.helpers import minimal

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
UID = "8d3c9f0e-uid-of-t"
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
        d = reconcile(Inputs(name="t", namespace="ns", generation=kw.get("generation", 1), spec=self.job.spec,
                             plan=self.plan, spec_error=self.error, status=self.status,
                             jobs=list(self.jobs.values()), now=self.now, uid=UID,
                             result_grace_seconds=kw.get("grace", 0)))
        for c in d.creates:  # as the builder makes it: suspended when asked to, or when a Kueue queue admits it
            name = f"t-s{c.stage}-a{c.attempt}"
            self.jobs.setdefault(name, ObservedJob(
                name=name, stage=c.stage, attempt=c.attempt, state="Pending", learning_rate=c.learning_rate,
                suspended=self.job.spec.suspend or bool(self.job.spec.scheduling.queue_name), owner_uid=UID,
                waiting_since=self.now))
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


#: What training-operator v1.9 writes when a pod of a job with backoffLimit 0 fails (common/job.go).
BACKOFF = "Job t-s1-a1 has failed because it has reached the specified backoff limit"


def test_failure_without_result_uses_the_pytorchjob_message_and_waits_for_the_pods_to_stop():
    """The training-operator deletes a failed job's pods; they may write checkpoints for up to their grace
    period (SIGTERM → save), so the next attempt, which resumes from the same directory, starts after it."""
    w = World(manifest(failurePolicy={"backoffSeconds": 0}))
    w.step()
    grace = w.plan.stages[0].termination_grace_period_seconds
    old = w.jobs["t-s1-a1"]
    w.jobs["t-s1-a1"] = ObservedJob(**{**old.__dict__, "state": "Failed", "message": BACKOFF, "finished_at": w.now})
    d = w.step()
    assert d.creates == [] and BACKOFF in d.events[0].message
    assert d.events[0].message.startswith("stage 1/2 attempt 1 failed: the trainer ended without reporting a result "
                                          "(killed, e.g. out of memory or evicted,")
    assert w.status["stages"][0]["nextAttemptTime"] == format_time(T0 + timedelta(seconds=grace))
    assert d.wake_at == T0 + timedelta(seconds=grace)
    w.now += timedelta(seconds=grace - 1)
    assert w.step().creates == []
    w.now += timedelta(seconds=1)
    assert [(c.attempt, c.learning_rate) for c in w.step().creates] == [(2, 1e-4)]


def test_zero_backoff_retries_at_once_when_the_single_node_trainer_reported_its_failure():
    w = World(manifest(failurePolicy={"backoffSeconds": 0}))
    w.step()
    w.finish("t-s1-a1", "Failed", {**FAULT, "reasonCode": "Error", "reason": "RuntimeError: CUDA error"})
    assert [(c.attempt, c.learning_rate) for c in w.step().creates] == [(2, 1e-4)]


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


# -- #27: what real clusters do ----------------------------------------------------------------------


def set_job(w, name, **changes):
    w.jobs[name] = ObservedJob(**{**w.jobs[name].__dict__, **changes})


def test_with_a_kueue_queue_the_operator_only_suspends_and_a_queued_stage_shows_as_queued():
    w = World(manifest(scheduling={"queueName": "team-a"}))
    d = w.step()
    assert [(c.stage, c.attempt) for c in d.creates] == [(1, 1)] and w.jobs["t-s1-a1"].suspended  # Kueue's to admit
    assert w.status["phase"] == "Queued" and w.status["stages"][0]["phase"] == "Queued"
    assert w.cond("Progressing")["reason"] == "Queued" and "Kueue LocalQueue team-a" in w.cond("Progressing")["message"]
    assert w.step().suspends == []
    set_job(w, "t-s1-a1", suspended=False, state="Running")  # Kueue admits it
    d = w.step()
    assert d.suspends == [] and w.status["phase"] == "Running" and w.cond("Progressing")["status"] == "True"
    set_job(w, "t-s1-a1", suspended=True, state="Suspended")  # Kueue preempts (evicts) it
    d = w.step()
    assert d.suspends == [] and w.status["phase"] == "Queued"  # not resumed by the operator
    set_job(w, "t-s1-a1", suspended=False, state="Running")  # readmitted
    w.job.spec.suspend = True  # the user suspends: that the operator may do
    assert [(s.name, s.suspend) for s in w.step().suspends] == [("t-s1-a1", True)]
    assert w.status["phase"] == "Suspended"
    w.job.spec.suspend = False  # resuming is Kueue's
    assert w.step().suspends == [] and w.status["phase"] == "Queued"


def test_a_vanished_job_without_result_is_a_failed_attempt_and_max_retries_0_fails():
    w = World(manifest(failurePolicy={"maxRetries": 0}))
    w.step()
    del w.jobs["t-s1-a1"]  # kubectl delete, or ttlSecondsAfterFinished: 0 before the Failed condition was seen
    creates = [c for _ in range(4) for c in w.step().creates]
    assert creates == [] and w.status["phase"] == "Failed"
    assert w.cond("Failed")["message"] == ("stage 1/2 failed (no retries allowed): PyTorchJob t-s1-a1 was deleted "
                                           "before it reported a result")


def test_a_vanished_job_counts_against_retries_and_waits_out_the_backoff():
    w = World(manifest(failurePolicy={"maxRetries": 1, "backoffSeconds": 600}))
    w.step()
    del w.jobs["t-s1-a1"]
    assert w.step().creates == [] and w.status["stages"][0]["nextAttemptTime"] == "2026-01-01T12:10:00Z"
    w.now += timedelta(seconds=600)
    assert [(c.stage, c.attempt) for c in w.step().creates] == [(1, 2)]
    del w.jobs["t-s1-a2"]
    w.step()
    assert w.status["phase"] == "Failed" and "after 2 attempts" in w.cond("Failed")["message"]


def test_a_vanished_job_whose_result_was_written_is_judged_by_its_result():
    w = World(manifest())
    w.step()
    w.finish("t-s1-a1", "Succeeded", {"status": "Succeeded", "finalLoss": 2.0})
    del w.jobs["t-s1-a1"]  # ttlSecondsAfterFinished: 0
    assert [(c.stage, c.attempt) for c in w.step().creates] == [(2, 1)]


def test_jobs_of_another_owner_are_never_adopted_and_block_their_name_until_deleted():
    """A CEJ deleted and re-applied under the same name: the predecessor's jobs await garbage collection."""
    w = World(manifest())
    w.jobs["t-s1-a3"] = ObservedJob(name="t-s1-a3", stage=1, attempt=3, state="Failed", owner_uid="old-uid")
    w.jobs["t-s1-a1"] = ObservedJob(name="t-s1-a1", stage=1, attempt=1, state="Succeeded", owner_uid="old-uid")
    w.jobs["t-s2-a1"] = ObservedJob(name="t-s2-a1", stage=2, attempt=1, state="Running", owner_uid=None)  # render
    for _ in range(3):
        d = w.step()
        assert d.creates == [] and w.status["phase"] == "Running"
    stage = w.status["stages"][0]
    assert (stage["phase"], stage["attempts"]) == ("Pending", 0) and "belongs to another" in stage["message"]
    assert w.cond("Degraded")["reason"] == "NameTaken"
    del w.jobs["t-s1-a1"]  # garbage-collected
    assert [(c.stage, c.attempt) for c in w.step().creates] == [(1, 1)]
    assert w.status["stages"][0]["jobName"] == "t-s1-a1" and w.cond("Degraded")["status"] == "False"


def test_preemption_resumes_without_spending_the_retry_budget():
    preempted = {"status": "Failed", "reasonCode": "Preempted", "reason": "preempted after step 30; checkpoint "
                 "step-30 saved", "checkpoint": "/ckpt/ns/t/stage-1/checkpoints/step-30"}
    w = World(manifest(failurePolicy={"maxRetries": 0}))
    w.step()
    for attempt in (1, 2, 3):
        w.finish(f"t-s1-a{attempt}", "Failed", preempted)
        d = w.step()
        assert [(c.attempt, c.learning_rate) for c in d.creates] == [(attempt + 1, 1e-4)]
        assert w.status["stages"][0]["preemptions"] == attempt
    assert "was preempted: preempted after step 30" in d.events[0].message and d.events[0].type == "Normal"
    assert w.status["phase"] == "Running"
    w.finish("t-s1-a4", "Failed", {**FAULT, "reasonCode": "Error", "reason": "RuntimeError: boom"})
    w.step()
    assert w.status["phase"] == "Failed" and w.cond("Failed")["message"].endswith("RuntimeError: boom")


def test_preemptions_beyond_the_cap_count_as_failures(monkeypatch):
    from ctxext.controller import stages

    monkeypatch.setattr(stages, "MAX_PREEMPTIONS", 2)
    w = World(manifest(failurePolicy={"maxRetries": 0}))
    w.step()
    for attempt in (1, 2, 3):
        w.finish(f"t-s1-a{attempt}", "Failed", {"status": "Failed", "reasonCode": "Preempted", "reason": "preempted"})
        w.step()
    assert w.status["phase"] == "Failed" and w.status["stages"][0]["preemptions"] == 2


def test_a_job_that_does_not_start_in_time_says_so_in_a_condition():
    w = World(manifest())
    w.step()
    set_job(w, "t-s1-a1", state="Created")  # ImagePullBackOff, unschedulable, missing PVC: it never runs
    w.now += timedelta(seconds=899)
    d = w.step()
    assert w.cond("Degraded")["status"] == "False" and d.wake_at == T0 + timedelta(seconds=900)
    w.now += timedelta(seconds=1)
    w.step()
    degraded = w.cond("Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "NotStarted"
    assert "PyTorchJob t-s1-a1 has not started running 900 s after it was created (it is Created)" in \
        degraded["message"]
    set_job(w, "t-s1-a1", state="Running")
    w.step()
    assert w.cond("Degraded")["status"] == "False"


def test_a_spec_made_invalid_between_attempts_is_not_reported_as_progressing():
    w = World(manifest(failurePolicy={"backoffSeconds": 60}))
    w.step()
    w.finish("t-s1-a1", "Failed", FAULT)
    w.step()
    w.plan, w.error = None, SpecError([("spec.resources.gpuMemoryGiB", "stage 1 needs 70 GiB")])
    w.now += timedelta(seconds=61)
    d = w.step()
    assert d.creates == [] and w.cond("InvalidSpec")["status"] == "True"
    progressing = w.cond("Progressing")
    assert progressing["status"] == "False" and progressing["reason"] == "InvalidSpec"
    assert "stage 1/2 cannot start" in progressing["message"]


def test_a_spec_made_invalid_while_a_stage_runs_says_nothing_new_starts():
    w = World(manifest())
    w.step()
    set_job(w, "t-s1-a1", state="Running")
    w.plan, w.error = None, SpecError([("spec.resources.gpuMemoryGiB", "stage 1 needs 70 GiB")])
    w.step()
    assert w.cond("Progressing")["status"] == "True"
    assert "nothing new starts until it is fixed" in w.cond("Progressing")["message"]


def test_an_edit_of_a_finished_job_is_not_observed():
    w = World(manifest(failurePolicy={"maxRetries": 0}))
    w.step()
    w.finish("t-s1-a1", "Failed", FAULT)
    w.step()
    assert w.status["phase"] == "Failed" and w.status["observedGeneration"] == 1
    d = w.step(generation=2)
    assert d.status_patch(w.status) == {} and w.status["observedGeneration"] == 1
