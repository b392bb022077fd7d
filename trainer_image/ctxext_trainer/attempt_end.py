"""A pod restarted inside an attempt that already ended: leave at once with the attempt's own exit code.

Kubeflow Trainer's built-in ``torch-distributed`` runtime leaves its Job at Kubernetes' default
``backoffLimit`` (6), and a TrainJob cannot change it: a trainer that stopped for good — the gradient-health
guard (exit 3), a base model that cannot be extended, a checkpoint of another world size, evaluation out
of memory (exit 2) — is started again in a new pod, up to six times, each time loading the model and
training into the same wall. ctxext decides retries itself (a new attempt, from the checkpoint, with a
lower learning rate where that helps), so a restarted pod first reads the stage's ``result.json`` on the
shared volume: if it is this attempt's (same ``jobName``) and final, it exits with that outcome's code
before it imports torch, and the Job reaches its backoff limit in seconds instead of GPU-hours.

A preempted attempt (``Preempted``) or an unexpected crash (``Error``) is run again: resuming from the
checkpoint is what a restart is for. Only a TrainJob's pods (``$CTXEXT_TRAINJOB`` set) are checked: a
PyTorchJob runs with ``backoffLimit: 0``, and ``ctxext run`` names every attempt of a stage alike.

>>> ended({"jobName": "j-s1-a2", "status": "Failed", "reasonCode": "NonFiniteGradients"}, "j-s1-a2")
3
>>> ended({"jobName": "j-s1-a1", "status": "Failed", "reasonCode": "NonFiniteGradients"}, "j-s1-a2") is None
True
>>> ended({"jobName": "j-s1-a2", "status": "Failed", "reasonCode": "Preempted"}, "j-s1-a2") is None
True
>>> ended({"jobName": "j-s1-a2", "status": "Succeeded"}, "j-s1-a2"), ended({"jobName": "j-s1-a2",
...       "status": "Failed", "reasonCode": "UnsupportedModel"}, "j-s1-a2")
(0, 2)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ctxext.results import PERMANENT_REASON_CODES, RESULT_FILE
from ctxext_trainer import exit_codes

#: Outcomes a restart cannot change, and the exit code the trainer gave each the first time.
GUARD_CODES = ("NonFiniteGradients", "LossSpikes")


def ended(result: Any, job_name: str) -> int | None:
    """The exit code of an attempt that already ended for good (see the module docstring), else None."""
    if not isinstance(result, dict) or result.get("jobName") != job_name:
        return None
    if result.get("status") == "Succeeded":
        return exit_codes.OK
    code = result.get("reasonCode")
    if result.get("status") == "Failed" and code in GUARD_CODES:
        return exit_codes.GUARD_STOP
    if result.get("status") == "Failed" and code in PERMANENT_REASON_CODES:
        return exit_codes.BAD_CONFIG
    return None


def check(output_dir: str, job_name: str) -> tuple[int, str] | None:
    """(exit code, plain words) when ``output_dir``'s result.json says this attempt already ended."""
    try:
        result = json.loads((Path(output_dir) / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    code = ended(result, job_name)
    if code is None:
        return None
    outcome = result.get("status") if code == exit_codes.OK else f"{result.get('status')} ({result.get('reasonCode')})"
    return code, (f"attempt {job_name} already ended: {outcome}, per {Path(output_dir) / RESULT_FILE}; this restarted "
                  f"pod does not run it again (exit {code}); ctxext starts the next attempt itself")
