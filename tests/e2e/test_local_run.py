"""`ctxext run` end to end on CPU: torchrun (2 processes, gloo), evaluation, the example's own gates,
metrics, report — interrupted mid-stage with Ctrl-C (SIGINT) and resumed by a rerun.

A shortened tiny-cpu manifest (few steps, 1 sample per cell) on a freshly initialised tiny model, with the
example's gates as shipped: an untrained model cannot retrieve a passkey, so stage 1 must fail its gates,
with the perplexity gate judged against the base model's evaluation. (The example itself, gates and
model as shipped, runs to Succeeded on both paths in tests/e2e/test_examples_e2e.py.)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.unit.helpers import example

pytestmark = pytest.mark.distributed
STAGE1_STEPS, STAGE2_STEPS, INTERVAL = 40, 6, 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ctxext_trainer.tiny.model import new_tiny_model, save_tiny

    root = tmp_path_factory.mktemp("local-run")
    save_tiny(new_tiny_model(0), root / "base")
    obj = example("tiny-cpu.yaml")
    spec = obj["spec"]
    spec["model"]["source"] = f"file://{root / 'base'}"
    spec["targetContextLength"] = 512  # the example goes to 1024; half the length keeps this test short
    spec["curriculum"]["stages"] = [{"seqLen": 256, "steps": STAGE1_STEPS}, {"seqLen": 512, "steps": STAGE2_STEPS}]
    spec["curriculum"]["stageDefaults"]["warmupSteps"] = 2
    spec["checkpoint"] = {"intervalSteps": INTERVAL}
    spec["evaluation"].update(lengths=[128, 256, 512], depths=[0.5], samplesPerCell=1)  # gates as shipped
    path = root / "tiny-short.yaml"
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path


def _start(manifest: Path, workdir: Path, port: int) -> subprocess.Popen[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="160")
    return subprocess.Popen([sys.executable, "-m", "ctxext.cli.main", "run", str(manifest), "--workdir", str(workdir),
                             "--metrics-port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _log_steps(workdir: Path, stage: int) -> list[int]:
    path = workdir / f"stage-{stage}" / "train_log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]


def test_run_interrupt_resume_report(manifest: Path, tmp_path: Path) -> None:
    workdir, port = tmp_path / "run", _free_port()
    proc = _start(manifest, workdir, port)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        steps = _log_steps(workdir, 1)
        if steps and steps[-1] >= INTERVAL + 2:
            break
        time.sleep(0.1)
    time.sleep(1.0)  # the runner polls the trainer's log twice a second
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert proc.poll() is None, f"the run ended before it could be interrupted:\n{proc.communicate()[0]}"
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out
    assert "rerun the same command to resume" in out
    assert 'ctxext_run_train_step{cej="tiny-cpu",stage="1"}' in scraped
    assert 'ctxext_run_eval_accuracy{cej="tiny-cpu",length="512",stage="0",task="passkey"}' in scraped
    first = _log_steps(workdir, 1)
    stopped_at = first[-1]
    assert INTERVAL + 2 <= stopped_at < STAGE1_STEPS
    assert json.loads((workdir / "stage-1" / "result.json").read_text())["status"] != "Succeeded"

    proc = _start(manifest, workdir, _free_port())
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 1, out
    result = json.loads((workdir / "stage-1" / "result.json").read_text())
    assert result["stepsDone"] == STAGE1_STEPS
    assert result["resumedFromStep"] == stopped_at  # SIGTERM made the trainer checkpoint the step it was at
    assert _log_steps(workdir, 1) == first + list(range(stopped_at + 1, STAGE1_STEPS + 1))
    # the example's three gates, judged: an untrained model retrieves nothing, and the perplexity gate is
    # read against the base model's evaluation (the baseline evaluated before stage 1)
    assert result["status"] == "Failed" and result["reasonCode"] == "GateFailed"
    gates = {(g["metric"], g["atLength"]): g for g in result["gates"]}
    assert set(gates) == {("passkeyAccuracy", 256), ("passkeyAccuracy", 128), ("perplexity", 128)}
    assert gates[("passkeyAccuracy", 256)]["passed"] is False
    assert "the base model's" in gates[("perplexity", 128)]["message"]
    assert "stage 1/2 failed: evaluation gate not met: passkeyAccuracy at 256 = 0 < min 0.8" in " ".join(out.split())
    assert not (workdir / "stage-2").exists()  # nothing trained after the failed gate

    report = json.loads((workdir / "report.json").read_text())
    assert report["status"] == "Failed" and report["originalContextLength"] == 128
    lengths = {"128", "256", "512"}
    for entry in [report["baseline"], *report["stages"]]:
        assert set(entry["passkeyAccuracy"]) == lengths and set(entry["perplexity"]) == lengths
        assert [(b["from"], b["to"]) for b in entry["positionLoss"]] == [(0, 128), (128, 256), (256, 384),
                                                                          (384, 512)]
    assert [(s["index"], s["seqLen"]) for s in report["stages"]] == [(1, 256)]
    assert isinstance(report["stages"][0]["finalLoss"], float) and report["stages"][0]["ropeTheta"] > 10000
    md = (workdir / "report.md").read_text()
    assert "## Passkey accuracy by length" in md and "loss_by_position.png" in md
    assert "passkey@512" in out  # the summary table
