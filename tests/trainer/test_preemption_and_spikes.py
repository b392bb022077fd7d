"""Two promises of the train loop, checked on real runs (gloo, CPU):

* a SIGTERM that arrives *inside* an optimizer step (between micro-batches) drops that step and
  leaves a checkpoint of the last completed one, from which the stage resumes bit-identically;
* a loss spike is caught *before* the update: the step is trained as a skipped update (weights and
  optimizer state unchanged), and the next step trains normally.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from ctxext.results import read_result
from ctxext_trainer import exit_codes

from .conftest import run_trainer, stage_config, train_log, trainer_env


def _run(config: dict[str, Any], nproc: int, **env: str) -> subprocess.CompletedProcess[str]:
    proc = run_trainer(config, nproc=nproc, env=trainer_env(**env))
    assert isinstance(proc, subprocess.CompletedProcess)
    return proc


@pytest.mark.distributed
def test_sigterm_mid_step_drops_the_step_and_resumes_bit_identically(tiny_model: Path, corpus: Path,
                                                                     tmp_path: Path) -> None:
    common: dict[str, Any] = dict(zero_stage=2, steps=6, gradient_accumulation=3, checkpoint_interval=100,
                                  lr_schedule="cosine", warmup_steps=1, seq_len=64)
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    first = _run(stage_config(tiny_model, corpus, straight, **common), 2)
    assert first.returncode == exit_codes.OK, first.stdout[-3000:] + first.stderr[-3000:]

    # rank 0 gets SIGTERM after the first of step 4's three micro-batches; rank 1 learns it at the boundary
    stopped = _run(stage_config(tiny_model, corpus, cut, **common), 2, CTXEXT_SIGTERM_MID_STEP="4@1")
    assert stopped.returncode == exit_codes.PREEMPTED, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    result = read_result(cut)
    assert result is not None and result.reason_code == "Preempted" and result.steps_done == 3
    assert result.reason == "preempted after step 3; checkpoint step-3 saved"
    assert result.checkpoint == str(cut / "checkpoints" / "step-3")
    assert (cut / "checkpoints" / "step-3" / "MANIFEST.json").is_file()
    assert [r["step"] for r in train_log(cut)] == [1, 2, 3]  # step 4 was never logged as trained

    resumed = _run(stage_config(tiny_model, corpus, cut, attempt=2, **common), 2, CTXEXT_SIGTERM_MID_STEP="4@1")
    assert resumed.returncode == exit_codes.OK, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    final = read_result(cut)
    assert final is not None and final.status == "Succeeded" and final.resumed_from_step == 3
    want = {r["step"]: (r["loss"], r["gradNorm"]) for r in train_log(straight)}
    got = {r["step"]: (r["loss"], r["gradNorm"]) for r in train_log(cut)}
    assert sorted(got) == list(range(1, 7))
    for step in range(1, 7):
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-7), step


def _tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor inside a loaded checkpoint file, by its path in the nested structure."""
    if torch.is_tensor(obj):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list | tuple) else []
    out: dict[str, torch.Tensor] = {}
    for key, value in items:
        out.update(_tensors(value, f"{prefix}/{key}"))
    return out


def _checkpoint_tensors(out: Path, step: int) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for path in sorted((out / "checkpoints" / f"step-{step}").rglob("*.pt")):
        found.update(_tensors(torch.load(path, map_location="cpu", weights_only=False), path.name))
    assert found, f"no tensors in checkpoint step-{step}"
    return found


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.distributed
@pytest.mark.parametrize(("zero_stage", "nproc"), [(0, 1), (3, 2)])
def test_a_loss_spike_is_skipped_before_it_reaches_the_weights(tiny_model: Path, corpus: Path, tmp_path: Path,
                                                               zero_stage: int, nproc: int) -> None:
    out = tmp_path / f"spike-z{zero_stage}"
    config = stage_config(tiny_model, corpus, out, zero_stage=zero_stage, steps=8, checkpoint_interval=1,
                          keep_checkpoints=20, learning_rate=1e-3,
                          failure_policy={"maxLossSpikes": 3, "lossSpikeSigma": 6.0})
    proc = _run(config, nproc, CTXEXT_INJECT_LOSS_SPIKE_AT_STEPS="7")
    assert proc.returncode == exit_codes.OK, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = {r["step"]: r for r in train_log(out)}
    assert log[7].get("skipped") == "lossSpike" and log[7]["loss"] > 50 * log[6]["loss"]
    assert not any(r.get("skipped") for step, r in log.items() if step != 7)
    result = read_result(out)
    assert result is not None and result.status == "Succeeded" and result.health.loss_spikes == 1

    six, seven, eight = (_checkpoint_tensors(out, s) for s in (6, 7, 8))
    assert _same(six, seven), "the spiking step changed weights or optimizer state"
    assert not _same(seven, eight), "the step after the spike did not train"
    assert not _same(_checkpoint_tensors(out, 5), six)
