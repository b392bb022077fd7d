"""Deterministic names of the objects the operator creates.

A PyTorchJob is named ``<cej>-s<stage>-a<attempt>`` so that a restarted operator finds the job
it already created instead of making a second one. Kubeflow names pods and services
``<pytorchjob>-worker-<index>``; those must be DNS-1035 labels (≤ 63 characters), so PyTorchJob
names are kept to :data:`MAX_JOB_NAME` characters. A longer CEJ name is cut and given a stable
8-character hash of the full name, so two long names that share a prefix never collide.

>>> pytorchjob_name("llama3-8b-1m", 2, 1)
'llama3-8b-1m-s2-a1'
>>> pytorchjob_name("a" * 63, 4, 3)
'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-7d3e74a0-s4-a3'
"""

from __future__ import annotations

import hashlib

#: 63 − len("-worker-9999"): room for Kubeflow's pod and service suffixes.
MAX_JOB_NAME = 51


def pytorchjob_name(cej_name: str, stage: int, attempt: int) -> str:
    """The PyTorchJob of ``stage`` (1-based) attempt ``attempt`` (1-based) of ``cej_name``."""
    suffix = f"-s{stage}-a{attempt}"
    if len(cej_name) + len(suffix) <= MAX_JOB_NAME:
        return cej_name + suffix
    digest = hashlib.sha256(cej_name.encode()).hexdigest()[:8]
    keep = MAX_JOB_NAME - len(suffix) - len(digest) - 1
    return f"{cej_name[:keep].rstrip('-.')}-{digest}{suffix}"
