"""`ctxext init-tiny` still runs the committed base model's recipe, and the committed model still passes.

The committed model (operator/ctxext/data/tiny) comes from a chain of `ctxext init-tiny` phases recorded in
its training.json (the commands are in TRAINING.md beside it). Phase 1 trains from scratch until passkey
retrieval at 128 tokens appears in a sudden transition whose step depends on the seed *and on the CPU*:
the same command solved at step 800 on a 16-core Xeon, at step 1300 on the 2-core VM that recorded the
chain, and not at all in 3000 steps on the CI machine (passkey 0.705; floating-point differences between
CPU kernels change the trajectory). A full rerun is therefore no test of the code; this test checks what
is deterministic instead:

* the committed model passes the init-tiny bar (passkey at 128 >= 0.95 on 200 samples, the same check
  and seed ``init-tiny`` uses);
* phase 1's recorded command, shortened to 300 steps, trains (held-out perplexity far below an untrained
  model's) and writes a loadable model;
* every later phase's recorded command runs for a few steps from the previous output, so a change that
  breaks a recorded option or the chain fails here, and the result has the committed model's shape.

The seed and machine sensitivity of phase 1 is measured with ``bench/tiny_base_sweep.py`` (TRAINING.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctxext.model_info import BUILTIN_DIR
from ctxext_trainer.tiny.base import CHECK_SEED, PASS_BAR

pytestmark = pytest.mark.slow
COMMITTED = BUILTIN_DIR / "tiny"
UNTRAINED_PERPLEXITY = 200.0
"""An untrained byte-level model sits near the vocabulary size (260); 300 steps of phase 1 reach ~12."""


def _init_tiny(out: Path, args: list[str], previous: Path | None) -> subprocess.CompletedProcess[str]:
    argv = [str(previous) if a == "{previous}" else a for a in args]
    return subprocess.run([sys.executable, "-m", "ctxext.cli.main", "init-tiny", str(out), *argv],
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=3000)


def _with_steps(args: list[str], steps: int) -> list[str]:
    out = list(args)
    out[out.index("--steps") + 1] = str(steps)
    return out


def test_committed_tiny_model_passes_the_init_tiny_bar() -> None:
    import torch
    from transformers import LlamaForCausalLM

    from ctxext_trainer.tiny.model import passkey_accuracy

    torch.set_num_threads(1)
    model = LlamaForCausalLM.from_pretrained(COMMITTED, local_files_only=True)
    accuracy = passkey_accuracy(model, length=128, samples=200, seed=CHECK_SEED)
    assert accuracy >= PASS_BAR, accuracy


def _exit_code_says_whether_the_bar_was_reached(proc: subprocess.CompletedProcess[str], metrics: dict) -> None:
    """0 when the model reached the passkey bar, 1 with advice when it did not (a short chain may not)."""
    reached = metrics["passkeyAccuracy"] >= PASS_BAR
    assert proc.returncode == (0 if reached else 1), (metrics, proc.stdout + proc.stderr)
    if not reached:
        assert "train longer" in " ".join((proc.stdout + proc.stderr).split())


def test_init_tiny_runs_the_committed_chain(tmp_path: Path) -> None:
    recorded = json.loads((COMMITTED / "training.json").read_text())
    phases = recorded["phases"]
    assert len(phases) >= 1 and "{previous}" not in phases[0]["args"]
    first = tmp_path / "phase-1"
    proc = _init_tiny(first, _with_steps([str(a) for a in phases[0]["args"]], 300), None)
    metrics = json.loads((first / "training.json").read_text())["metrics"]
    _exit_code_says_whether_the_bar_was_reached(proc, metrics)
    assert metrics["steps"] == 300
    assert metrics["heldOutPerplexity"] < UNTRAINED_PERPLEXITY / 4, metrics
    previous = first
    for i, phase in enumerate(phases[1:], start=2):
        out = tmp_path / f"phase-{i}"
        proc = _init_tiny(out, _with_steps([str(a) for a in phase["args"]], 3), previous)
        _exit_code_says_whether_the_bar_was_reached(proc, json.loads((out / "training.json").read_text())["metrics"])
        assert (out / "model.safetensors").exists()
        previous = out
    committed = json.loads((COMMITTED / "config.json").read_text())
    config = json.loads((previous / "config.json").read_text())
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                "max_position_embeddings", "rope_parameters", "tie_word_embeddings"):
        assert config[key] == committed[key], key
