"""Progress and result reporting to the ContextExtensionJob's status subresource (rank 0 only).

With ``report.kind == "kubernetes"`` the trainer merge-patches
``contextextensionjobs.ctxext.dev/v1alpha1`` ``<namespace>/<name>/status``:

* every :data:`MIN_INTERVAL_SECONDS` at most: ``status.progress`` = ``{jobName, stage, step,
  totalSteps, loss, perplexity, tokensPerSecond, updated}``;
* at the end: ``status.results[<jobName>]`` = the stage result (result.json's content, signed with the
  attempt's ``report.resultKey``: :func:`ctxext.results.sign`). This one
  write matters (the operator reads the result when the PyTorchJob finishes, i.e. after this process
  exits), so it is retried for up to ``$CTXEXT_RESULT_RETRY_SECONDS`` (default
  :data:`RESULT_RETRY_SECONDS`) while the API server is unreachable or answers 429/5xx, e.g. during
  an API server restart.

The client uses the in-cluster service account, else ``$KUBECONFIG``. Every failure is logged and
swallowed: reporting never stops training (result.json on the volume stays the source of truth).

Under a TrainJob (``$CTXEXT_TRAINJOB`` set), each progress report also goes, with the same throttle, to
that TrainJob's ``status.trainerStatus`` (:mod:`ctxext_trainer.trainjob_status`), whatever report.kind.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import time
from typing import Any

from ctxext.results import SIGNATURE, sign
from ctxext.stage_config import StageConfig
from ctxext_trainer.trainjob_status import TrainJobStatusWriter

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "ctxext.dev", "v1alpha1", "contextextensionjobs"
MIN_INTERVAL_SECONDS = 10.0
REQUEST_TIMEOUT_SECONDS = 5
RESULT_RETRY_SECONDS = 60.0
RESULT_RETRY_ENV = "CTXEXT_RESULT_RETRY_SECONDS"


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def progress_patch(config: StageConfig, *, step: int, loss: float | None, tokens_per_second: float | None,
                   now: dt.datetime) -> dict[str, Any]:
    """The status merge patch of one progress report.

    >>> from ctxext.stage_config import StageConfig
    >>> c = StageConfig(job="j", job_name="j-s1-a1", stage=1, total_stages=2, model_path="/m", output_dir="/o",
    ...                 seq_len=256, rope_theta=1e4, original_context_length=128, steps=10, learning_rate=1e-3)
    >>> p = progress_patch(c, step=3, loss=0.0, tokens_per_second=5.0, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    >>> p["status"]["progress"]["perplexity"], p["status"]["progress"]["updated"]
    (1.0, '2026-01-01T00:00:00Z')
    """
    loss = _finite(loss)
    return {"status": {"progress": {
        "jobName": config.job_name, "stage": config.stage, "step": step, "totalSteps": config.steps,
        "loss": loss, "perplexity": math.exp(min(loss, 700.0)) if loss is not None else None,
        "tokensPerSecond": _finite(tokens_per_second),
        "updated": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }}}


def result_patch(job_name: str, result: dict[str, Any]) -> dict[str, Any]:
    return {"status": {"results": {job_name: result}}}


class StatusReporter:
    """Rate-limited CEJ status patcher; a no-op unless report.kind is kubernetes and this is rank 0."""

    def __init__(self, config: StageConfig, *, is_rank0: bool, min_interval: float = MIN_INTERVAL_SECONDS):
        self.config = config
        self.enabled = is_rank0 and config.report.kind == "kubernetes"
        self.min_interval = min_interval
        self._last = -math.inf
        self._api: Any = None
        self.result_retry_seconds = float(os.environ.get(RESULT_RETRY_ENV) or RESULT_RETRY_SECONDS)
        if self.enabled and not (config.report.name or config.job):
            log.warning("report.kind is kubernetes but no job name is known; status reporting disabled")
            self.enabled = False
        self.trainjob = TrainJobStatusWriter(config, is_rank0=is_rank0, client=self._client, min_interval=min_interval)

    def _client(self) -> Any:
        if self._api is None:
            from kubernetes import client
            from kubernetes import config as kube_config

            if os.environ.get("KUBERNETES_SERVICE_HOST"):
                kube_config.load_incluster_config()
                self._api = client.CustomObjectsApi()
            else:
                self._api = client.CustomObjectsApi(kube_config.new_client_from_config(
                    config_file=os.environ.get("KUBECONFIG")))
        return self._api

    def _patch(self, body: dict[str, Any]) -> bool:
        return self._try_patch(body) is None

    def _try_patch(self, body: dict[str, Any]) -> bool | None:
        """None on success; else whether the failure is worth retrying (no answer, 429 or 5xx)."""
        target = self.config.report
        try:
            self._client().patch_namespaced_custom_object_status(
                GROUP, VERSION, target.namespace or self.config.namespace, PLURAL, target.name or self.config.job,
                body, _request_timeout=REQUEST_TIMEOUT_SECONDS)
            return None
        except Exception as exc:  # reporting must never stop training
            log.warning("could not patch the ContextExtensionJob status: %s", exc)
            status = getattr(exc, "status", None)
            return not isinstance(status, int) or status == 429 or status >= 500

    def progress(self, *, step: int, loss: float | None, tokens_per_second: float | None,
                 force: bool = False, grad_norm: float | None = None) -> bool:
        """Report a step (throttled unless ``force``); True when the ContextExtensionJob's status was written."""
        self.trainjob.progress(step=step, loss=loss, grad_norm=grad_norm, force=force)
        if not self.enabled:
            return False
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return False
        self._last = now
        return self._patch(progress_patch(self.config, step=step, loss=loss, tokens_per_second=tokens_per_second,
                                          now=dt.datetime.now(dt.UTC)))

    def result(self, result: dict[str, Any]) -> bool:
        """Replace ``status.results[<jobName>]``. A merge patch alone would keep keys of an earlier
        result of the same attempt (a preempted run's ``reasonCode: Preempted`` after the resumed run
        succeeded), so the old entry is removed first; the operator reads results only after the
        PyTorchJob finished, which is after this returns."""
        if not self.enabled:
            return False
        if self.config.report.result_key:  # lets the operator tell this attempt's result from a forged one
            result = {**result, SIGNATURE: sign(result, self.config.report.result_key)}
        deadline, delay = time.monotonic() + self.result_retry_seconds, 1.0
        while True:
            retry = self._try_patch({"status": {"results": {self.config.job_name: None}}})
            if retry is None:
                retry = self._try_patch(result_patch(self.config.job_name, result))
                if retry is None:
                    return True
            if not retry or time.monotonic() + delay > deadline:
                return False
            log.warning("retrying the stage result in %g s", delay)
            time.sleep(delay)
            delay = min(2 * delay, 10.0)
