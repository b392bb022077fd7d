"""Resuming a stage with another number of processes (issue 25 item 8): the attempt fails at once,
before the model is loaded, with a plain message and a permanent reason code and exit code."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ctxext.results import PERMANENT_REASON_CODES, read_result
from ctxext_trainer import exit_codes
from ctxext_trainer.resume_check import recorded_world_size

from .conftest import run_trainer, stage_config, trainer_env


@pytest.mark.distributed
def test_a_two_process_checkpoint_resumed_on_one_process_fails_permanently(tiny_model: Path, corpus: Path,
                                                                           tmp_path: Path) -> None:
    out = tmp_path / "stage"
    first = run_trainer(stage_config(tiny_model, corpus, out, zero_stage=2, steps=4), nproc=2,
                        env=trainer_env(CTXEXT_STOP_AFTER_STEP="2"))
    assert isinstance(first, subprocess.CompletedProcess)
    assert first.returncode == exit_codes.PREEMPTED, first.stdout[-3000:] + first.stderr[-3000:]
    checkpoint = out / "checkpoints" / "step-2"
    assert recorded_world_size(checkpoint) == 2
    legacy = tmp_path / "legacy"  # a checkpoint from before worldSize was recorded: its ZeRO shards tell
    shutil.copytree(checkpoint, legacy)
    (legacy / "trainer_state.json").unlink()
    assert recorded_world_size(legacy) == 2

    again = run_trainer(stage_config(tiny_model, corpus, out, zero_stage=2, steps=4, attempt=2), nproc=1)
    assert isinstance(again, subprocess.CompletedProcess)
    output = again.stdout + again.stderr
    assert again.returncode == exit_codes.BAD_CONFIG, output[-3000:]
    result = read_result(out)
    assert result is not None and result.status == "Failed" and result.reason_code == "WorldSizeChanged"
    assert result.reason_code in PERMANENT_REASON_CODES
    assert result.reason == (f"checkpoint step-2 was written by 2 processes but this attempt runs 1. ZeRO shards "
                             f"and the data split cannot move between world sizes: run the stage on 2 processes "
                             f"again, or delete {out / 'checkpoints'} to restart the stage from its first step.")
    assert "Traceback" not in output and "runtime:" not in output  # stopped before the model was built
    assert checkpoint.is_dir()  # nothing was overwritten
