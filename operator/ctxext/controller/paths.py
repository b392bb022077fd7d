"""Where things live inside a trainer pod: model, data and checkpoint volumes and the paths on them.

Conventions (the trainer and ``ctxext local-executor`` rely on them):

=====================================  ==========================================================
``spec.model.source``                  mounted / passed to the trainer as ``model_path``
=====================================  ==========================================================
``pvc://models/llama-3-8b``            claim ``models`` read-only at ``/models/models``;
                                       model_path ``/models/models/llama-3-8b``
``file:///opt/models/llama``           nothing mounted (the path is in the image or on the node);
                                       model_path ``/opt/models/llama``
``hf://meta-llama/Meta-Llama-3-8B``    the operator's ``CTXEXT_HF_CACHE_CLAIM`` (a Hugging Face
                                       cache, ``hub/`` layout) read-only at ``/models/hf-cache``,
                                       ``HF_HOME=/models/hf-cache``, ``HF_HUB_OFFLINE=1``;
                                       model_path ``meta-llama/Meta-Llama-3-8B`` (resolved from
                                       the cache by transformers, never downloaded)
``builtin://tiny``                      the ctxext package's own ``data/tiny`` directory (where
                                       ``ctxext init-tiny`` puts the demo model); works with the local
                                       executor and in images that install ctxext the same way
``s3://bucket/prefix``                 passed as-is (the trainer fetches it, credentials from
                                       ``credentialsSecretRef`` via ``envFrom``)
=====================================  ==========================================================

``spec.data.source`` ``pvc://corpus/slimpajama`` mounts claim ``corpus`` read-only at
``/data/corpus``; the trainer resolves it to ``/data/corpus/slimpajama``. The checkpoint claim is
mounted read-write at ``spec.checkpoint.mountPath``; stage *i* writes to
``<mountPath>/<namespace>/<cej>/stage-<i>`` (``checkpoints/``, ``model/``, ``result.json``) and
stage *i+1* starts from ``<stage-i>/model``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ctxext.api.job import ContextExtensionJobSpec
from ctxext.model_info import local_model_dir

MODELS_ROOT = "/models"
DATA_ROOT = "/data"
HF_CACHE_MOUNT = "/models/hf-cache"


@dataclass
class PodStorage:
    """Volumes, mounts and environment a trainer pod needs for its model, data and checkpoints."""

    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    env: list[dict[str, Any]] = field(default_factory=list)

    def add_claim(self, name: str, claim: str, mount_path: str, *, read_only: bool) -> None:
        self.volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}})
        self.mounts.append({"name": name, "mountPath": mount_path, "readOnly": read_only})


def split_pvc(source: str) -> tuple[str, str]:
    """``pvc://claim/some/path`` → ``("claim", "some/path")``.

    >>> split_pvc("pvc://models/llama-3-8b")
    ('models', 'llama-3-8b')
    """
    claim, _, path = source[len("pvc://"):].partition("/")
    return claim, path.strip("/")


def stage_output_dir(spec: ContextExtensionJobSpec, namespace: str, name: str, stage: int) -> str:
    """``/ckpt/team-a/llama3-8b-1m/stage-2`` for stage 2 (the same for every attempt, so retries resume);
    ``.../baseline`` for stage 0, the base model's evaluation."""
    return f"{spec.checkpoint.mount_path.rstrip('/')}/{namespace}/{name}/" + (f"stage-{stage}" if stage else "baseline")


def base_model_path(spec: ContextExtensionJobSpec) -> str:
    """Where the trainer finds the base model (see the table in the module docstring)."""
    source = spec.model.source
    if source.startswith("pvc://"):
        claim, path = split_pvc(source)
        return f"{MODELS_ROOT}/{claim}/{path}".rstrip("/")
    if source.startswith("file://"):
        return source[len("file://"):]
    if source.startswith("hf://"):
        return source[len("hf://"):]
    if source.startswith("builtin://"):
        return str(local_model_dir(source))
    return source


def stage_model_path(spec: ContextExtensionJobSpec, namespace: str, name: str, stage: int) -> str:
    """Stage 1 starts from the base model, stage i from stage i−1's ``model/`` directory."""
    if stage <= 1:
        return base_model_path(spec)
    return stage_output_dir(spec, namespace, name, stage - 1) + "/model"


def pod_storage(spec: ContextExtensionJobSpec, *, hf_cache_claim: str | None) -> PodStorage:
    """Volumes and mounts for model, data and checkpoints of one trainer pod."""
    out = PodStorage()
    ckpt = spec.checkpoint
    if ckpt.claim_name:
        out.add_claim("checkpoints", ckpt.claim_name, ckpt.mount_path, read_only=False)
    else:  # Only useful off-cluster (local executor); the operator warns about it in status.warnings.
        out.volumes.append({"name": "checkpoints", "emptyDir": {}})
        out.mounts.append({"name": "checkpoints", "mountPath": ckpt.mount_path})
    source = spec.model.source
    if source.startswith("pvc://"):
        claim, _ = split_pvc(source)
        out.add_claim("model", claim, f"{MODELS_ROOT}/{claim}", read_only=True)
    elif source.startswith("hf://"):
        if hf_cache_claim:
            out.add_claim("hf-cache", hf_cache_claim, HF_CACHE_MOUNT, read_only=True)
        out.env += [{"name": "HF_HOME", "value": HF_CACHE_MOUNT}, {"name": "HF_HUB_OFFLINE", "value": "1"}]
    if spec.data.source.startswith("pvc://"):
        claim, _ = split_pvc(spec.data.source)
        out.add_claim("data", claim, f"{DATA_ROOT}/{claim}", read_only=True)
    return out
