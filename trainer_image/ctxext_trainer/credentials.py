"""Model credentials mounted as files, exported as environment variables (the TrainJob backend).

A PyTorchJob's trainer gets the keys of ``spec.model.credentialsSecretRef`` as variables through
``envFrom``; a TrainJob cannot carry ``envFrom`` (Kubeflow Trainer's runtime patches allow only env,
volumeMounts and securityContext of a container), so the operator mounts the Secret read-only at
``$CTXEXT_CREDENTIALS_DIR`` and :func:`export_credentials` — called by ``ctxext_trainer.launch`` before it
starts the workers, which inherit its environment — sets one variable per key, as envFrom would. The
values never appear in the TrainJob, in logs or in status.

Kubelet's Secret volume holds one file per key plus its own bookkeeping (``..data``, ``..2026_12_07...``);
only names that are valid variable names are exported, and a variable already set wins (as an explicit
``env`` entry wins over envFrom).

>>> import os, tempfile
>>> d = tempfile.mkdtemp(); _ = open(os.path.join(d, "HF_TOKEN"), "w").write("hf_x")
>>> os.mkdir(os.path.join(d, "..data")); _ = open(os.path.join(d, "not-a-name"), "w").write("y")
>>> env = {"CTXEXT_CREDENTIALS_DIR": d}
>>> export_credentials(env), env["HF_TOKEN"]
(['HF_TOKEN'], 'hf_x')
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping

from ctxext.stage_config import CREDENTIALS_ENV_VAR as ENV_VAR

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def export_credentials(env: MutableMapping[str, str] | None = None) -> list[str]:
    """Set a variable per key file under ``$CTXEXT_CREDENTIALS_DIR``; returns the names set (never values)."""
    env = os.environ if env is None else env
    folder = env.get(ENV_VAR)
    if not folder or not os.path.isdir(folder):
        return []
    exported = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not _NAME.match(name) or name in env or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            env[name] = f.read()
        exported.append(name)
    return exported
