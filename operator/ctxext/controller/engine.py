"""The controller: watch events in, passes out. Async, on kopf's event loop.

Events arrive through :mod:`ctxext.controller.handlers`; :mod:`ctxext.controller.changes` says
which ones need a pass, :mod:`ctxext.controller.passes` runs the passes (one at a time per job,
coalesced, woken up at deadlines and at the resync), :mod:`ctxext.controller.registry` keeps the
little each job needs between passes. A pass:

1. reads the CEJ from memory (the newest version the watch or our own status patch showed) and the
   owned training jobs (PyTorchJobs and TrainJobs) from kopf's indexes — no read, no list; the resync
   (and a retry after an API error) re-reads the CEJ and lists its training jobs instead, trusting
   nothing kept;
2. settles which Kubeflow API the job runs on (:mod:`ctxext.controller.job_backend`) and whether its spec
   fits that API;
3. runs the pure reconciler (:func:`ctxext.controller.reconcile.reconcile`), which never learns the API;
4. creates / suspends training jobs through the job's backend first and patches status last, only the
   fields that differ.

That order keeps a restart at any moment safe: a training job is created under its deterministic
name before status mentions it (409 AlreadyExists → read and adopt it), and kopf runs no handler
before its indexes are filled, so the first pass after a restart sees every job that exists. API
calls run in a small thread pool (the ``kubernetes`` client is synchronous); nothing else blocks the loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import kopf
from kubernetes.client import ApiException

from ctxext.config import OperatorConfig
from ctxext.controller import metrics
from ctxext.controller.backends import by_kind, observe_job
from ctxext.controller.changes import PASS, REFRESH, Seen, classify_cej, classify_job
from ctxext.controller.identity import TRAINER_IDENTITY_MISSING, IdentityCache, missing_message
from ctxext.controller.job_backend import JobBackends
from ctxext.controller.kube import KubeApi
from ctxext.controller.model import Decision, Inputs
from ctxext.controller.passes import Scheduler
from ctxext.controller.reconcile import parse_and_plan, reconcile, recoverable_failure, waits_on_the_cluster
from ctxext.controller.registry import PENDING, JobState, Owned, Registry, merge_owned, resource_version

log = logging.getLogger("ctxext.controller")
T = TypeVar("T")
#: Seconds before a pass that failed on an API error is tried again (with a fresh read).
ERROR_RETRY_SECONDS = 10.0
#: Threads for API calls: requests in flight at once, across all jobs. With 1,000 jobs applied at once on a
#: loaded 2-core machine, 8 threads queued passes (mean pass 0.82 s, apply → PyTorchJob p99 2.5 s) where 16
#: did not (0.41 s, p99 1.5 s), at the same peak RSS (bench/README.md).
API_THREADS = 16
OwnedIndex = Mapping[tuple[str, str], Iterable[Owned]]
#: kopf's two indexes of owned training jobs: PyTorchJobs and TrainJobs (:mod:`ctxext.controller.handlers`).
OwnedIndexes = tuple[OwnedIndex, ...]


TERMINAL_PHASES = ("Succeeded", "Failed")


class ForeignJobError(RuntimeError):
    """A training job under the name of one to create belongs to another owner (or none)."""


def _brief(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    return str(exc)


def key_of(namespace: str | None, name: str) -> str:
    return f"{namespace or 'default'}/{name}"


class Engine:
    """Reconciles ContextExtensionJobs; one per operator process (kopf's ``memo.engine``)."""

    def __init__(self, config: OperatorConfig, api: KubeApi):
        self.config, self.api = config, api
        self.registry = Registry()
        self.scheduler = Scheduler(self._pass)
        self.phases = metrics.PhaseTracker()
        self.attempts = metrics.attempt_tracker()
        self.identities = IdentityCache(config.resync_seconds)
        self.backends = JobBackends(config, lambda: self._call(self.api.served, config.training_runtime))
        self.indexes: OwnedIndexes = ()
        self._pool = ThreadPoolExecutor(max_workers=API_THREADS, thread_name_prefix="ctxext-api")

    # -- events ----------------------------------------------------------------------------------
    async def cej_event(self, kind: str | None, body: Mapping[str, Any], indexes: OwnedIndexes) -> None:
        """A watch event of a ContextExtensionJob (kind None: listed at start or after a watch restart)."""
        self.indexes = indexes
        meta = body.get("metadata") or {}
        key = key_of(meta.get("namespace"), str(meta.get("name")))
        if kind == "DELETED":
            kept = (self.registry.body(key) or {}).get("metadata") or {}
            if kept.get("uid") in (None, meta.get("uid")):  # not when a same-named successor is already kept:
                self.forget(key)  # kopf handles each UID's events on its own, in no fixed order between them
            return
        self.registry.offer(key, body)
        state = self.registry.state(key)
        newest = self.registry.body(key) or dict(body)
        change = classify_cej(state.seen, newest)
        if change == PASS:
            await self.scheduler.request(key)
        elif change == REFRESH:
            self.scheduler.wake(key, self.config.status_refresh_seconds, fresh=False)

    async def job_event(self, kind: str | None, namespace: str | None, name: str, cej: str,
                        body: Mapping[str, Any], indexes: OwnedIndexes) -> None:
        """A watch event of an owned PyTorchJob or TrainJob (``body`` has its ``kind``)."""
        self.indexes = indexes
        key = key_of(namespace, cej)
        state = self.registry.get(key)
        if state is None:  # the CEJ's own event (or its deletion) decides
            return
        job = None if kind == "DELETED" else observe_job(dict(body))
        change = classify_job(state.seen, name, job, expected=self.registry.expected(key, name))
        if job is None:  # what we created or patched must not hide that it is gone
            state.created.pop(name, None)
        if change == PASS:
            await self.scheduler.request(key)
        elif change == REFRESH:
            self.scheduler.wake(key, self.config.status_refresh_seconds, fresh=False)

    def forget(self, key: str) -> None:
        """Free everything kept for a deleted job."""
        self.registry.forget(key)
        self.scheduler.forget(key)
        self.phases.forget(key)
        self.attempts.forget(key)
        self.backends.forget(key)

    def close(self) -> None:
        self.scheduler.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- the pass ----------------------------------------------------------------------------------
    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    async def _pass(self, key: str, fresh: bool) -> None:
        try:
            await self.reconcile(key, fresh=fresh)
        except Exception as exc:  # an API error: try again soon, re-reading everything
            # Even a 404 (a PyTorchJob deleted under a suspend, a CEJ deleted under its status patch) only
            # says that one object is gone: the fresh pass forgets the job when the CEJ itself is gone.
            metrics.RECONCILE_ERRORS.inc()
            log.warning("%s: reconcile failed (%s); retrying in %g s", key, _brief(exc), ERROR_RETRY_SECONDS)
            if key in self.registry:
                self.scheduler.wake(key, ERROR_RETRY_SECONDS)

    async def reconcile(self, key: str, *, fresh: bool = False) -> Decision | None:
        """One pass over ``key`` (see the module docstring); None when there is nothing to reconcile."""
        namespace, name = key.split("/", 1)
        indexed: Iterable[Owned] = [o for index in self.indexes for o in index.get((namespace, name), ())]
        if fresh:  # the resync (or a retry): re-read the job and list its training jobs, trust nothing kept
            current = await self._call(self.api.read, namespace, name)
            if current is None:
                self.forget(key)
                return None
            self.registry.offer(key, current)
            indexed = [Owned(resource_version(j) or 0, observe_job(j))
                       for j in await self._call(self.api.list_jobs, namespace, name)]
        body = self.registry.body(key)
        if body is None:
            return None
        state = self.registry.state(key)
        with metrics.RECONCILE_SECONDS.time():
            jobs, state.created = merge_owned(indexed, state.created)
            state.seen = Seen.of(body, jobs)  # events from here on compare with what this pass reads
            job, plan, error = parse_and_plan(body)
            status = body.get("status") or {}
            uid = body["metadata"].get("uid")
            finished = status.get("phase") in TERMINAL_PHASES and not recoverable_failure(status)
            which = await self.backends.resolve(job, plan, status, [j for j in jobs.values() if j.owner_uid == uid],
                                                finished=finished)
            backend = which.backend
            misfit = self.backends.check(key, body["metadata"].get("generation"), backend, job, plan) \
                if backend is not None and job is not None and plan is not None and not finished else None
            if misfit is not None:
                plan, error = None, misfit
            blocked = await self._identity_missing(namespace, status) if which.problem is None else \
                (which.problem.reason, which.problem.message)
            now = datetime.now(UTC)
            decision = reconcile(Inputs(
                name=name, namespace=namespace, generation=body["metadata"].get("generation"),
                spec=job.spec if job else None, plan=plan, spec_error=error, status=status,
                jobs=list(jobs.values()), now=now, uid=uid,
                result_grace_seconds=self.config.result_grace_seconds,
                start_deadline_seconds=self.config.start_deadline_seconds, blocked=blocked,
                backend=backend.kind if backend else None))
            if job is not None and plan is not None and backend is not None:
                for create in decision.creates:
                    manifest = backend.build(job, plan, create.stage, attempt=create.attempt,
                                             learning_rate=create.learning_rate, config=self.config,
                                             steps=create.steps, result_key=secrets.token_hex(16))
                    kopf.adopt(manifest, owner=kopf.Body(cast(kopf.RawBody, body)))
                    await self._create(state, namespace, manifest)
            for change in decision.suspends:
                kind = jobs[change.name].kind if change.name in jobs else (backend.kind if backend else "PyTorchJob")
                patched = await self._call(self.api.set_suspend, namespace, change.name, change.suspend, kind)
                state.created[change.name] = Owned(resource_version(patched) or PENDING,
                                                   observe_job({"kind": kind, **patched}))
            patch = decision.status_patch(status)
            if patch:  # only onto this job: not onto a same-named successor if it was deleted meanwhile
                self.registry.offer(key, await self._call(functools.partial(
                    self.api.patch_status, namespace, name, patch, uid=uid,
                    current=body.get("status") or None, resource_version=body["metadata"].get("resourceVersion"))))
        if self.registry.get(key) is not state:  # deleted meanwhile
            return decision
        self._record(key, body, decision)
        current = {**jobs, **{name: owned.job for name, owned in state.created.items()}}  # incl. just created
        newest = max(current.values(), key=lambda j: (j.stage, j.attempt), default=None)
        if newest is None or newest.terminal:
            self.attempts.forget(key)
        else:
            self.attempts.set(key, newest.state)
        deadline = (decision.wake_at - now).total_seconds() if decision.wake_at is not None else None
        if deadline is not None and deadline < self.config.resync_seconds:
            self.scheduler.wake(key, deadline, fresh=False)  # what changes then is time, not the job
        elif decision.status.get("phase") not in TERMINAL_PHASES or waits_on_the_cluster(decision.status) \
                or (misfit is not None and job is not None and job.spec.backend == "Auto"):
            self.scheduler.wake(key, self.config.resync_seconds, fresh=True)
        # A finished job needs no resync: only an edit or its deletion (both watch events) concern it. One that
        # failed before it started for want of a mended cluster (a CRD, a runtime, an identity) is asked again.
        return decision

    async def _identity_missing(self, namespace: str, status: dict[str, Any]) -> tuple[str, str] | None:
        """(reason, message) when the trainer ServiceAccount is missing where a job has yet to start."""
        account = self.config.trainer_service_account
        if not account or any(int(s.get("attempts") or 0) for s in status.get("stages") or []) \
                or self.identities.fresh(namespace):
            return None
        exists = await self._call(self.api.service_account_exists, namespace, account)
        self.identities.record(namespace, exists)
        return (TRAINER_IDENTITY_MISSING, missing_message(account, namespace)) if exists is False else None

    async def _create(self, state: JobState, namespace: str, manifest: dict[str, Any]) -> None:
        name, kind = manifest["metadata"]["name"], manifest["kind"]
        mine = observe_job(manifest)
        state.created[name] = Owned(PENDING, mine)  # its ADDED event may beat the response
        try:
            made = await self._call(self.api.create_job, namespace, manifest)
        except Exception:
            state.created.pop(name, None)
            raise
        found = by_kind(kind).observe({"kind": kind, **made})
        if found.owner_uid != mine.owner_uid:  # 409: the name is taken by a job not ours
            state.created.pop(name, None)
            raise ForeignJobError(f"{kind} {namespace}/{name} exists but is not owned by this "
                                  "ContextExtensionJob; it is not adopted")
        state.created[name] = Owned(resource_version(made) or PENDING, found)

    def _record(self, key: str, body: dict[str, Any], decision: Decision) -> None:
        self.phases.set(key, decision.status.get("phase"))
        for before, after in decision.transitions:
            metrics.STAGE_TRANSITIONS.labels(**{"from": before, "to": after}).inc()
        for seconds in decision.stage_durations:
            metrics.STAGE_SECONDS.observe(seconds)
        for event in decision.events:
            log.info("%s: %s: %s", key, event.reason, event.message)
            if self.config.post_events:
                try:  # best effort: an API server without events must not stop reconciliation
                    kopf.event(kopf.Body(cast(kopf.RawBody, body)), type=event.type, reason=event.reason,
                               message=event.message)
                except Exception as exc:
                    log.debug("event not posted: %s", exc)
