"""Which events need a pass, the per-job memory, and the pass scheduler — pure parts, no cluster."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from ctxext.controller.changes import NONE, PASS, REFRESH, Seen, classify_cej, classify_job, digest
from ctxext.controller.observe import ObservedJob
from ctxext.controller.passes import Scheduler
from ctxext.controller.registry import PENDING, Owned, Registry, merge_owned, trim


def job(state: str = "Running", **kw) -> ObservedJob:
    return ObservedJob(name=kw.pop("name", "t-s1-a1"), stage=1, attempt=1, state=state, **kw)


def seen(*jobs: ObservedJob, generation: int = 1, results=None, loss=None) -> Seen:
    return Seen(generation=generation, results=digest(results), progress=(loss, None),
                jobs={j.name: j for j in jobs})


def body(generation: int = 1, **status) -> dict:
    return {"metadata": {"name": "t", "generation": generation}, "status": status}


def test_cej_events_pass_on_spec_and_results_refresh_on_progress_and_ignore_echoes():
    last = seen(results={"t-s1-a1": {"status": "Succeeded"}}, loss=2.0)
    same = body(results={"t-s1-a1": {"status": "Succeeded"}}, progress={"loss": 2.0, "step": 9}, phase="Running")
    assert classify_cej(None, same) == PASS  # first sight: created, or listed after a restart
    assert classify_cej(last, same) == NONE  # e.g. the echo of our own status patch (step is not mirrored)
    assert classify_cej(last, {**same, "metadata": {"generation": 2}}) == PASS
    assert classify_cej(last, body(results={"t-s1-a1": {"status": "Failed"}}, progress={"loss": 2.0})) == PASS
    assert classify_cej(last, body(results={"t-s1-a1": {"status": "Succeeded"}}, progress={"loss": 1.5})) == REFRESH


def test_job_events_pass_only_on_decisive_changes():
    running = job("Running")
    last = seen(running)
    assert classify_job(None, running.name, running) == NONE  # the CEJ's own first pass reads the index
    assert classify_job(last, running.name, running) == NONE
    assert classify_job(last, running.name, job("Restarting", message="pod restarted")) == REFRESH
    assert classify_job(last, running.name, job("Running", suspended=True)) == PASS
    finished = datetime(2026, 1, 1, tzinfo=UTC)
    assert classify_job(last, running.name, job("Failed", finished_at=finished)) == PASS
    assert classify_job(last, running.name, None) == PASS  # deleted
    assert classify_job(last, "t-s2-a1", job("Pending", name="t-s2-a1")) == PASS  # one we never saw
    # One this process just created: its ADDED event (and the first condition) need no pass.
    created = job("Pending", name="t-s2-a1")
    assert classify_job(last, created.name, created, expected=created) == NONE
    assert classify_job(last, created.name, job("Created", name="t-s2-a1"), expected=created) == REFRESH


def test_merge_prefers_the_newer_of_index_and_own_writes_and_drops_what_the_index_caught_up_with():
    pending = Owned(PENDING, job("Pending", name="t-s2-a1"))
    indexed = [Owned(10, job("Succeeded"))]
    jobs, left = merge_owned(indexed, {"t-s2-a1": pending})
    assert sorted(jobs) == ["t-s1-a1", "t-s2-a1"] and left == {"t-s2-a1": pending}
    jobs, left = merge_owned([*indexed, Owned(12, job("Created", name="t-s2-a1"))], left)
    assert jobs["t-s2-a1"].state == "Created" and left == {}
    patched = Owned(13, job("Running", suspended=True))
    jobs, left = merge_owned([Owned(11, job("Running"))], {"t-s1-a1": patched})
    assert jobs["t-s1-a1"].suspended and left == {"t-s1-a1": patched}


def test_registry_keeps_the_newest_trimmed_body_and_forgets_it():
    reg = Registry()
    big = {"apiVersion": "ctxext.dev/v1alpha1", "kind": "ContextExtensionJob", "spec": {"x": 1},
           "status": {"phase": "Running"},
           "metadata": {"name": "a", "namespace": "ns", "uid": "u", "resourceVersion": "20", "managedFields": [{}] * 5,
                        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}",
                                        "kopf.zalando.org/last-handled-configuration": "{...}", "team": "nlp"}}}
    assert reg.offer("ns/a", big)
    kept = reg.body("ns/a")
    assert kept is not None and kept["metadata"] == {"name": "a", "namespace": "ns", "uid": "u",
                                                     "resourceVersion": "20", "annotations": {"team": "nlp"}}
    assert kept["spec"] == {"x": 1} and trim(big) == kept
    assert not reg.offer("ns/a", {**big, "metadata": {**big["metadata"], "resourceVersion": "19"}})
    assert reg.offer("ns/a", {**big, "status": {"phase": "Succeeded"},
                              "metadata": {**big["metadata"], "resourceVersion": "21"}})
    assert reg.body("ns/a")["status"] == {"phase": "Succeeded"}
    reg.state("ns/a").created["a-s1-a1"] = Owned(PENDING, job("Pending", name="a-s1-a1"))
    assert reg.expected("ns/a", "a-s1-a1") is not None and reg.expected("ns/b", "x") is None
    reg.forget("ns/a")
    assert len(reg) == 0 and reg.body("ns/a") is None and reg.expected("ns/a", "a-s1-a1") is None


def test_scheduler_coalesces_requests_during_a_pass_into_one_more_pass():
    async def scenario():
        ran: list[tuple[str, bool]] = []
        gate = asyncio.Event()

        async def run(key, fresh):
            ran.append((key, fresh))
            await gate.wait()

        s = Scheduler(run)
        first = asyncio.create_task(s.request("ns/a"))
        await asyncio.sleep(0)
        assert s.running("ns/a")
        await asyncio.gather(*(s.request("ns/a") for _ in range(10)))  # each returns at once
        other = asyncio.create_task(s.request("ns/b"))  # another job is not held up by ns/a
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(first, other)
        return ran, len(s)

    ran, pending = asyncio.run(scenario())
    assert sorted(ran) == [("ns/a", False), ("ns/a", False), ("ns/b", False)] and pending == 0


def test_scheduler_wakes_at_the_earliest_time_a_pass_absorbs_it_and_forget_cancels():
    async def scenario():
        ran: list[tuple[str, bool]] = []

        async def run(key, fresh):
            ran.append((key, fresh))

        s = Scheduler(run)
        loop = asyncio.get_running_loop()
        s.wake("ns/a", 60)
        s.wake("ns/a", 0.02, fresh=False)  # earlier wins, with its own kind (a deadline: no re-read)
        s.wake("ns/a", 30)  # later loses
        assert s.wake_at("ns/a") is not None and s.wake_at("ns/a") < loop.time() + 1
        s.wake("ns/b", 60)
        await s.request("ns/b")  # the pass takes the wake-up along (the engine re-arms it)
        assert s.wake_at("ns/b") is None
        s.wake("ns/c", 0.01)
        s.forget("ns/c")
        await asyncio.sleep(0.1)
        return ran, len(s)

    ran, pending = asyncio.run(scenario())
    assert ran == [("ns/b", False), ("ns/a", False)] and pending == 0
