"""The trainer's exit code is the one the stage decided, whatever happens during interpreter teardown.

The operator chooses retry or stop from the code (:mod:`ctxext_trainer.exit_codes`). Native threads
(gloo, the c10d store client) used to race the interpreter's teardown now and then: rank 0 died with
"terminate called without an active exception" (SIGABRT, 134) after the guard had stopped the stage
with GUARD_STOP (3). These tests make that abort certain instead of rare — a ``sitecustomize`` in the
workers registers ``os.abort()`` to run at interpreter exit — and check the code still comes out.
``bench/exit_codes_under_load.py`` repeats real stages under CPU load without any injected abort.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from ctxext.results import read_result
from ctxext_trainer import exit_codes

from .conftest import run_trainer, stage_config, trainer_env

ABORT_AT_EXIT = '''
import atexit, os, sys

def _abort_like_a_native_thread():
    if "ctxext_trainer.stage" in sys.modules:  # a trainer worker, not the launcher
        os.abort()

atexit.register(_abort_like_a_native_thread)
'''


def _env_with_abort_at_exit(tmp_path: Path, **extra: str) -> dict[str, str]:
    site = tmp_path / "abort-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(ABORT_AT_EXIT)
    env = trainer_env(**extra)
    env["PYTHONPATH"] = f"{site}:{env.get('PYTHONPATH', '')}"
    return env


def test_guard_stop_keeps_its_exit_code_when_teardown_would_abort(tiny_model: Path, corpus: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "nan"
    config = stage_config(tiny_model, corpus, out, zero_stage=1, steps=4, checkpoint_interval=2)
    env = _env_with_abort_at_exit(tmp_path, CTXEXT_INJECT_NAN_AT_STEP="3")
    proc = run_trainer(config, nproc=2, env=env)
    assert isinstance(proc, subprocess.CompletedProcess)
    assert proc.returncode == exit_codes.GUARD_STOP, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = read_result(out)
    assert result is not None and result.reason_code == "NonFiniteGradients"


def test_success_keeps_exit_code_0_and_its_log_when_teardown_would_abort(tiny_model: Path, corpus: Path,
                                                                         tmp_path: Path) -> None:
    out = tmp_path / "ok"
    proc = run_trainer(stage_config(tiny_model, corpus, out, steps=2), env=_env_with_abort_at_exit(tmp_path))
    assert isinstance(proc, subprocess.CompletedProcess)
    assert proc.returncode == exit_codes.OK, proc.stderr[-3000:]
    assert "stage 1 Succeeded" in proc.stderr  # the last log line is flushed before the process leaves
    result = read_result(out)
    assert result is not None and result.status == "Succeeded"
