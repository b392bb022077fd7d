"""`ctxext init-tiny`'s base trainer: a short run with theta jitter saves a model at the base theta, and the
CLI refuses bad options with a message (no traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ctxext.cli.main import app
from ctxext_trainer.tiny.base import BaseTrainingConfig, command_of, train_base


def test_short_run_with_theta_jitter_saves_base_theta(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ctxext_trainer.tiny.base as base

    seen: list[float] = []
    real = base.set_rope_theta

    def spy(model: object, theta: float, seq_len: int) -> None:
        seen.append(theta)
        real(model, theta, seq_len)

    monkeypatch.setattr(base, "set_rope_theta", spy)
    cfg = BaseTrainingConfig(steps=4, batch_size=2, eval_every=2, check_samples=5, passkey_ratio=0.5,
                             theta_jitter=(2e4, 5e5), short_fact_ratio=0.5)
    metrics = train_base(tmp_path / "m", cfg, log=lambda _m: None)
    trained = [t for t in seen if t != cfg.base_theta]
    assert len(trained) == 4 and all(2e4 <= t <= 5e5 for t in trained) and len(set(trained)) == 4
    assert seen[-1] == cfg.base_theta  # checks and the saved model use the base theta
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["rope_parameters"]["rope_theta"] == 10000.0
    assert metrics["steps"] == 4 and 0.0 <= float(metrics["passkeyAccuracy"]) <= 1.0
    assert "--short-fact-ratio 0.5" in command_of(cfg)
    assert "--theta-jitter 20000,500000" in command_of(cfg) and "--passkey-ratio 0.5" in command_of(cfg)
    record = json.loads((tmp_path / "m" / "training.json").read_text())
    assert record["config"]["theta_jitter"] == [2e4, 5e5]


@pytest.mark.parametrize("args, message", [
    (["--theta-jitter", "abc"], "two numbers"),
    (["--theta-jitter", "1e6,1e4"], "0 < LO <= HI"),
    (["--theta-jitter", "0,1e4"], "0 < LO <= HI"),
    (["--passkey-ratio", "1.5"], "passkey-ratio"),
    (["--short-fact-ratio", "-0.1"], "short-fact-ratio"),
])
def test_init_tiny_rejects_bad_options(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["init-tiny", str(tmp_path / "m"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m").exists()
