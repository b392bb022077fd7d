"""`ctxext run` end to end on CPU: two stages through torchrun (2 processes, gloo), evaluation,
gates, metrics, report — interrupted mid-stage with Ctrl-C (SIGINT) and resumed by a rerun.

A shortened tiny-cpu manifest (few steps, 1 sample per cell) on a freshly initialised tiny model,
so the test checks the machinery, not the recipe (the recipe's numbers come from the full run).
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
    spec["evaluation"].update(lengths=[128, 256, 512], depths=[0.5], samplesPerCell=1, gates=[
        {"metric": "perplexity", "atLength": "original", "max": 1000.0},
        {"metric": "passkeyAccuracy", "atLength": "stage", "min": 0.0}])
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
    assert proc.returncode == 0, out
    result = json.loads((workdir / "stage-1" / "result.json").read_text())
    assert result["status"] == "Succeeded" and result["stepsDone"] == STAGE1_STEPS
    assert result["resumedFromStep"] == stopped_at  # SIGTERM made the trainer checkpoint the step it was at
    assert _log_steps(workdir, 1) == first + list(range(stopped_at + 1, STAGE1_STEPS + 1))
    assert [g["passed"] for g in result["gates"]] == [True, True]

    report = json.loads((workdir / "report.json").read_text())
    assert report["status"] == "Succeeded" and report["originalContextLength"] == 128
    lengths = {"128", "256", "512"}
    for entry in [report["baseline"], *report["stages"]]:
        assert set(entry["passkeyAccuracy"]) == lengths and set(entry["perplexity"]) == lengths
        assert [(b["from"], b["to"]) for b in entry["positionLoss"]] == [(0, 128), (128, 256), (256, 384),
                                                                          (384, 512)]
    assert [(s["index"], s["seqLen"]) for s in report["stages"]] == [(1, 256), (2, 512)]
    assert all(isinstance(s["finalLoss"], float) and s["ropeTheta"] > 10000 for s in report["stages"])
    config = json.loads((workdir / "model" / "config.json").read_text())
    assert config["rope_parameters"]["rope_theta"] == pytest.approx(report["stages"][-1]["ropeTheta"])
    md = (workdir / "report.md").read_text()
    assert "## Passkey accuracy by length" in md and "loss_by_position.png" in md
    assert (workdir / "loss_by_position.png").stat().st_size > 0
    assert "passkey@512" in out  # the summary table

    proc = _start(manifest, workdir, 0)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert out.count("done (earlier run)") == 2
