"""Sweep of tiny-base recipes (`ctxext init-tiny` variants), one single-thread process per variant, with a
wall-clock deadline. This is the research script behind operator/ctxext/data/tiny/TRAINING.md's tables.

    PYTHONPATH=operator:trainer_image python bench/tiny_base_sweep.py OUTDIR SECONDS [VARIANT,...]

Each variant trains with ``ctxext_trainer.tiny.base.train_base`` (3000-step cosine, stop 100 steps after a
check reaches 0.98) and logs ``OUTDIR/<variant>.log`` (passkey accuracy at 128 on 50 samples every 100
steps); after SECONDS the unfinished ones are stopped and OUTDIR/summary.json lists every log's tail.
Variants with a leading-underscore key patch the trainer for the experiment: ``_heads`` (attention heads),
``_rep`` (share of text rows replaced by repeated random strings), ``_init`` (continue from the shipped
model), ``_compact`` (share of passkey rows in a shorter format), ``_theta_from`` ((model, theta): continue
a saved model at another RoPE theta, a stage emulation), ``_jitter`` (RoPE theta per step, log-uniform).
Measured with 14 variants at once on a 16-core Xeon (about 5 minutes each); on 2 cores run 2 at a time.
"""
import json
import math
import multiprocessing as mp
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

VARIANTS: dict[str, dict[str, Any]] = {
    "smoke": dict(steps=30, eval_every=10, check_samples=10),
    "pr100_bs8":      dict(passkey_ratio=1.0, batch_size=8),
    "stage256_pr90":  dict(passkey_ratio=0.9, batch_size=8, original_length=256, learning_rate=1e-3, warmup_steps=20,
                           steps=1000, _theta_from=("/tmp/dev1/pr90_bs16", 83149)),
    "jitter_pr90":    dict(passkey_ratio=0.9, batch_size=16, _jitter=(1e4, 1e6)),
    "jitter_pr90_s3": dict(passkey_ratio=0.9, batch_size=16, seed=3, _jitter=(1e4, 1e6)),
    "compact_pr90":   dict(passkey_ratio=0.9, batch_size=16, _compact=0.5),
    "pr90_bs16_s1":   dict(passkey_ratio=0.9, batch_size=16, seed=1),
    "pr90_bs16_s2":   dict(passkey_ratio=0.9, batch_size=16, seed=2),
    "pr90_bs16_s3":   dict(passkey_ratio=0.9, batch_size=16, seed=3),
    "pr80_bs16":      dict(passkey_ratio=0.8, batch_size=16),
    "pr80_bs16_s1":   dict(passkey_ratio=0.8, batch_size=16, seed=1),
    "pr90_bs16_lr3":  dict(passkey_ratio=0.9, batch_size=16, learning_rate=3e-3),
    "pr90_bs16_lr3_s1": dict(passkey_ratio=0.9, batch_size=16, learning_rate=3e-3, seed=1),
    "pr90_bs12":      dict(passkey_ratio=11/12, batch_size=12),
    "pr90_bs12_s1":   dict(passkey_ratio=11/12, batch_size=12, seed=1),
    "pr90_bs24":      dict(passkey_ratio=0.9, batch_size=24),
    "pr90_bs16_rep":  dict(passkey_ratio=0.9, batch_size=16, _rep=0.5),
    "pr100_bs16":     dict(passkey_ratio=1.0, batch_size=16),
    "pr100_bs8_lr3":  dict(passkey_ratio=1.0, batch_size=8, learning_rate=3e-3),
    "pr75_bs8":       dict(passkey_ratio=0.75, batch_size=8),
    "pr90_bs16":      dict(passkey_ratio=0.9, batch_size=16),
    "pr50_bs8":       dict(passkey_ratio=0.5, batch_size=8),
    "pr100_bs8_h8":   dict(passkey_ratio=1.0, batch_size=8, _heads=8),
    "pr100_bs8_s1":   dict(passkey_ratio=1.0, batch_size=8, seed=1),
    "rep_pr50_bs8":   dict(passkey_ratio=0.5, batch_size=8, _rep=0.5),
    "rep_pr75_bs8":   dict(passkey_ratio=0.75, batch_size=8, _rep=0.5),
    "init_pr100_bs8": dict(passkey_ratio=1.0, batch_size=8, _init=True, learning_rate=1e-3, warmup_steps=20),
    "pr100_bs8_aw5":  dict(passkey_ratio=1.0, batch_size=8, answer_weight=5),
}


def one(name: str, kw: dict[str, Any], outdir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    torch.set_num_threads(1)
    from ctxext_trainer.tiny.base import BaseTrainingConfig, train_base
    cfg: dict[str, Any] = dict(steps=3000, stop_accuracy=0.98, cooldown_steps=100)
    kw = dict(kw)
    heads, rep, init = kw.pop("_heads", None), kw.pop("_rep", None), kw.pop("_init", None)
    compact, theta_from = kw.pop("_compact", None), kw.pop("_theta_from", None)
    jitter = kw.pop("_jitter", None)
    if jitter:
        from ctxext_trainer.rope import set_rope_theta
        from ctxext_trainer.tiny import base as tb
        jitter_rng = random.Random(12345)
        state: dict[str, Any] = {"model": None}
        orig_new = tb.new_tiny_model

        def new_model(*a: Any, **k: Any) -> Any:
            m = orig_new(*a, **k)
            state["model"] = m
            return m
        tb.new_tiny_model = new_model
        orig_step = torch.optim.AdamW.step

        def step(self: Any, *a: Any, _lo: float = math.log(jitter[0]), _hi: float = math.log(jitter[1]),
                 **k: Any) -> Any:
            out = orig_step(self, *a, **k)
            m = state["model"]
            if m is not None and m.training:
                set_rope_theta(m, math.exp(jitter_rng.uniform(_lo, _hi)), 128)
            return out
        torch.optim.AdamW.step = step  # type: ignore[method-assign]
        orig_pa = tb.passkey_accuracy

        def pa(model: Any, **k: Any) -> float:
            set_rope_theta(model, 10000.0, 128)
            return orig_pa(model, **k)
        tb.passkey_accuracy = pa
        orig_save = tb.save_tiny

        def save(model: Any, directory: str | Path) -> Path:
            set_rope_theta(model, 10000.0, 128)
            return orig_save(model, directory)
        tb.save_tiny = save
    if theta_from:
        src, theta = theta_from
        dst = Path(outdir, name + "_init")
        shutil.copytree(src, dst, dirs_exist_ok=True)
        c = json.loads(Path(dst, "config.json").read_text())
        c["rope_parameters"]["rope_theta"] = float(theta)
        c["max_position_embeddings"] = kw.get("original_length", 128)
        Path(dst, "config.json").write_text(json.dumps(c))
        kw["init_from"] = str(dst)
    if compact:
        from ctxext_trainer.tiny import base as tb
        orig_row = tb.passkey_row

        def passkey_row(rng: random.Random, tokenizer: Any, pools: Any, *, length: int, _orig: Any = orig_row,
                        _q: float = compact) -> tuple[list[int], list[int], int]:
            tok = tokenizer
            if rng.random() >= _q:
                return _orig(rng, tok, pools, length=length)
            key = str(rng.randint(10000, 99999))
            fact = tok.encode(f" The pass key is {key}. ")
            q = tok.encode(rng.choice([" What is the pass key? The pass key is", " The pass key is"]))
            ans = tok.encode(f" {key}.")
            n = length - len(fact) - len(q) - len(ans)
            pool = pools[rng.randrange(2)]
            fill: list[int] = []
            while len(fill) < n:
                if hasattr(pool, "sentences"):
                    fill += tok.encode(" " + pool.sentences[rng.randrange(len(pool.sentences))].strip())
                else:
                    fill += tok.encode(" The grass is green.")
            fill = fill[:n]
            d = rng.randint(0, n)
            ids = fill[:d] + fact + fill[d:] + q + ans
            return ids, list(ids), len(ids) - len(ans)
        tb.passkey_row = passkey_row
    cfg.update(kw)
    if heads:
        from ctxext_trainer.tiny import model as tm
        tm.TINY_SHAPE.update(num_attention_heads=heads, num_key_value_heads=heads)
    if rep:
        from ctxext_trainer.tiny import data as td
        stream_cls: Any = td.TokenStream  # Any: mypy would refuse assigning to a method
        orig = stream_cls.window

        def window(self: Any, rng: random.Random, length: int, _orig: Any = orig, _p: float = rep) -> list[int]:
            if rng.random() < _p:
                k = rng.randint(8, 40)
                seg = [rng.randrange(35, 126) for _ in range(k)]
                return (seg * (length // k + 1))[:length]
            return _orig(self, rng, length)
        stream_cls.window = window
    if init:
        from ctxext.model_info import BUILTIN_DIR
        cfg["init_from"] = str(BUILTIN_DIR / "tiny")
    with open(Path(outdir, f"{name}.log"), "w", buffering=1) as log:
        t0 = time.monotonic()

        def say(m: str) -> None:
            log.write(f"[{time.monotonic()-t0:6.0f}s] {m}\n")
        try:
            metrics = train_base(Path(outdir, name), BaseTrainingConfig(**cfg), log=say)
            say("FINAL " + json.dumps(metrics))
        except Exception as e:
            say(f"ERROR {e!r}")


if __name__ == "__main__":
    out = sys.argv[1]
    deadline = float(sys.argv[2])
    only = sys.argv[3].split(",") if len(sys.argv) > 3 else [v for v in VARIANTS if v != "smoke"]
    Path(out).mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    procs = {n: ctx.Process(target=one, args=(n, VARIANTS[n], out)) for n in only}
    for p in procs.values():
        p.start()
    end = time.monotonic() + deadline
    while time.monotonic() < end and any(p.is_alive() for p in procs.values()):
        time.sleep(5)
    for p in procs.values():
        if p.is_alive():
            p.terminate()
    summary: dict[str, list[str]] = {}
    for n in only:
        lines = Path(out, f"{n}.log").read_text().splitlines() if Path(out, f"{n}.log").exists() else []
        summary[n] = lines[-3:]
        print(n, "|", " || ".join(lines[-6:]))
    Path(out, "summary.json").write_text(json.dumps(summary, indent=1))
