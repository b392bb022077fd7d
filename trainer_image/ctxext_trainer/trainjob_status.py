"""Rank 0 of a stage run under a Kubeflow TrainJob writes that TrainJob's ``status.trainerStatus``.

The TrainJob builder (:mod:`ctxext.controller.backends.trainjob`) sets ``$CTXEXT_TRAINJOB`` to the
TrainJob's name; the PyTorchJob path does not, and then nothing here runs. With it, rank 0
merge-patches ``trainer.kubeflow.org/v1alpha1`` ``trainjobs/<name>/status`` in the stage's namespace
(Trainer v2.2+ schema, ``TrainJobTrainerStatus``)::

    status:
      trainerStatus:
        progressPercentage: 45              # int32 0..100: floor(100 * step / steps) of this stage
        estimatedRemainingSeconds: 795      # int32 >= 0: seconds per step so far x steps left
        metrics:                            # strings of 1..64 characters, names as transformers logs them
        - {name: loss, value: "2.31046"}
        - {name: perplexity, value: "10.0823"}
        - {name: grad_norm, value: "0.84211"}
        lastUpdatedTime: "2026-01-23T10:30:45Z"

so ``kubectl get trainjob -o yaml`` and the Kubeflow SDK's ``TrainJob.trainerStatus`` show a stage's
progress. Writes are throttled like the ContextExtensionJob reports (at most one per
``min_interval``), plus a forced one at the end of the stage (100 % when the stage finished its
steps). The patch uses field validation ``Strict``: an API server whose TrainJob CRD has no
``trainerStatus`` (Trainer before v2.2) refuses it instead of silently pruning it.

Upstream Trainer's own clients (``kubeflow.trainer.utils.update_runtime_status``) POST the same
``trainerStatus`` to the controller's status endpoint (``$KUBEFLOW_TRAINER_STATUS_URL``, behind the
``TrainJobStatus`` feature gate); ctxext writes the status subresource with the trainer's service
account instead (Role: ``get``/``patch`` on ``trainjobs/status``), which works with the gate off too.

A refused write (400/403/404/422: no such TrainJob, no RBAC, older Trainer) is logged once with the
server's reason and no further write is tried; other failures (no answer, 429, 5xx) are logged the
first time and retried at the next report. Training never stops for this.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from ctxext.stage_config import TRAINJOB_ENV_VAR, StageConfig

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
INT32_MAX = 2**31 - 1
#: Answers that will not change by trying again: the write is refused for good.
REFUSED = (400, 403, 404, 422)
REQUEST_TIMEOUT_SECONDS = 5


def progress_percentage(step: int, total_steps: int) -> int:
    """Whole percent of the stage's steps done, rounded down (100 only when all are done).

    >>> progress_percentage(0, 400), progress_percentage(399, 400), progress_percentage(400, 400)
    (0, 99, 100)
    >>> progress_percentage(5, 0)  # a stage with no steps to train is done
    100
    """
    if total_steps <= 0:
        return 100
    return max(0, min(100, (100 * step) // total_steps))


def eta_seconds(steps_done: int, elapsed_seconds: float, steps_left: int) -> int | None:
    """Seconds until the stage's last step at this run's mean step time; None before a step is timed.

    >>> eta_seconds(10, 25.0, 30), eta_seconds(0, 3.0, 30), eta_seconds(10, 25.0, 0)
    (75, None, 0)
    >>> eta_seconds(1, 1e9, 10**6)  # clamped to the field's int32
    2147483647
    """
    if steps_left <= 0:
        return 0
    if steps_done <= 0 or not elapsed_seconds > 0 or not math.isfinite(elapsed_seconds):
        return None
    return min(INT32_MAX, math.ceil(elapsed_seconds / steps_done * steps_left))


def format_metric(value: float | None) -> str | None:
    """A metric value as the CRD wants it (a string of 1..64 characters); None when unknown.

    >>> format_metric(2.310456789), format_metric(1e-9), format_metric(math.exp(700)), format_metric(None)
    ('2.31046', '1e-09', '1.01423e+304', None)
    >>> format_metric(float("nan")), format_metric(float("inf"))
    ('nan', 'inf')
    """
    if value is None:
        return None
    return format(float(value), ".6g")


def trainer_status(*, step: int, total_steps: int, loss: float | None, grad_norm: float | None,
                   eta: int | None, now: dt.datetime) -> dict[str, Any]:
    """``status.trainerStatus`` of one report: a key left unknown is null, so a merge patch clears it.

    >>> s = trainer_status(step=3, total_steps=4, loss=0.0, grad_norm=None, eta=7,
    ...                    now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    >>> s["progressPercentage"], s["estimatedRemainingSeconds"], s["metrics"], s["lastUpdatedTime"]
    (75, 7, [{'name': 'loss', 'value': '0'}, {'name': 'perplexity', 'value': '1'}], '2026-01-01T00:00:00Z')
    """
    perplexity = math.exp(min(loss, 700.0)) if loss is not None and math.isfinite(loss) else None
    values = (("loss", format_metric(loss)), ("perplexity", format_metric(perplexity)),
              ("grad_norm", format_metric(grad_norm)))
    return {"progressPercentage": progress_percentage(step, total_steps), "estimatedRemainingSeconds": eta,
            "metrics": [{"name": name, "value": value} for name, value in values if value is not None],
            "lastUpdatedTime": now.strftime("%Y-%m-%dT%H:%M:%SZ")}


def _reason(exc: Exception, limit: int = 300) -> str:
    """The API server's reason for a failed request in one short line, else the exception's first line.

    A refused patch's message quotes the whole patched object; its ``details.causes`` say what is wrong
    (``strict decoding error: unknown field "status.trainerStatus"``), else the message's end does.
    """
    body = getattr(exc, "body", None)
    try:
        answer = json.loads(body) if body else {}
        causes = [c["message"] for c in (answer.get("details") or {}).get("causes") or [] if c.get("message")]
        text = "; ".join(causes) or answer.get("message") or ""
    except (ValueError, TypeError, KeyError, AttributeError):
        text = ""
    text = " ".join((text or str(exc)).split())
    if len(text) > limit:
        text = "..." + text[-limit:]
    status = getattr(exc, "status", None)
    return f"HTTP {status}: {text}" if isinstance(status, int) else text


class TrainJobStatusWriter:
    """Throttled ``trainjobs/status`` patcher; a no-op unless rank 0 and ``$CTXEXT_TRAINJOB`` is set."""

    resource = (GROUP, VERSION, PLURAL)

    def __init__(self, config: StageConfig, *, is_rank0: bool, client: Callable[[], Any], min_interval: float,
                 environ: Mapping[str, str] = os.environ):
        self.config = config
        self.name = environ.get(TRAINJOB_ENV_VAR) or ""
        self.namespace = config.report.namespace or config.namespace
        self.enabled = is_rank0 and bool(self.name)
        self.refused: str | None = None
        self._client = client
        self.min_interval = min_interval
        self._last = -math.inf
        self._started = time.monotonic()
        self._first_step: int | None = None
        self._grad_norm: float | None = None
        self._failures_logged: set[int | None] = set()

    def progress(self, *, step: int, loss: float | None, grad_norm: float | None = None,
                 force: bool = False) -> bool:
        """Note this step's values; write them unless throttled (``force``: the end of the stage)."""
        if not self.enabled:
            return False
        if self._first_step is None:  # this run trained `step` since it started (a resumed run: from step - 1)
            self._first_step = step - 1
        if grad_norm is not None:
            self._grad_norm = grad_norm
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return False
        self._last = now
        eta = eta_seconds(step - self._first_step, now - self._started, self.config.steps - step)
        body = {"status": {"trainerStatus": trainer_status(
            step=step, total_steps=self.config.steps, loss=loss, grad_norm=self._grad_norm, eta=eta,
            now=dt.datetime.now(dt.UTC))}}
        return self._patch(body)

    def _patch(self, body: dict[str, Any]) -> bool:
        try:
            self._client().patch_namespaced_custom_object_status(
                *self.resource[:2], self.namespace, self.resource[2], self.name, body,
                field_validation="Strict", _request_timeout=REQUEST_TIMEOUT_SECONDS)
            return True
        except Exception as exc:  # reporting must never stop training
            status = getattr(exc, "status", None)
            if status in REFUSED:
                self.enabled = False
                self.refused = _reason(exc)
                log.warning("not reporting progress to TrainJob %s/%s: the API server refused status.trainerStatus "
                            "(%s); training goes on", self.namespace, self.name, self.refused)
            elif status not in self._failures_logged:
                self._failures_logged.add(status)
                log.warning("could not write status.trainerStatus of TrainJob %s/%s (%s); will retry at the next "
                            "report", self.namespace, self.name, _reason(exc))
            return False
