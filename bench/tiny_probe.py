"""Probe a tiny (byte-vocabulary) model's passkey retrieval at other RoPE thetas and on either haystack.

    PYTHONPATH=operator:trainer_image .venv/bin/python bench/tiny_probe.py MODEL_DIR \\
        [--thetas 10000,83149,691374] [--lengths 128,256,512] [--haystack classic,corpus] [--samples 10] [--seed 777]

For each theta (the model's own when --thetas is left out) and haystack, prints passkey accuracy per length
(``--samples`` per depth at depths 0, 0.25, 0.5, 0.75, 1), then one JSON line. ``classic`` is the evaluation's
filler (Mohtashami & Jaggi); ``corpus`` hides the key in sentences of the shipped corpus, like the trainer's
synthetic samples. This is the probe behind the theta-fragility and haystack figures in
operator/ctxext/data/tiny/TRAINING.md.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from transformers import LlamaForCausalLM

from ctxext_trainer.eval.haystack import SentencePool
from ctxext_trainer.eval.suite import builtin_corpus_texts, run_retrieval
from ctxext_trainer.rope import model_rope_theta, set_rope_theta
from ctxext_trainer.tokenizer import ByteTokenizer

DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def numbers(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--thetas", default="")
    parser.add_argument("--lengths", default="128,256,512")
    parser.add_argument("--haystack", default="classic,corpus")
    parser.add_argument("--samples", type=int, default=10, help="samples per (length, depth) cell")
    parser.add_argument("--seed", type=int, default=777)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tok = ByteTokenizer()
    pools = {"classic": lambda: SentencePool.classic(tok.encode),
             "corpus": lambda: SentencePool.from_texts(builtin_corpus_texts() or [], tok.encode)}
    lengths = [int(x) for x in numbers(args.lengths)]
    rows = []
    model = LlamaForCausalLM.from_pretrained(args.model_dir, local_files_only=True).eval()
    thetas = numbers(args.thetas) or [model_rope_theta(model)]
    for theta in thetas:
        set_rope_theta(model, theta, max(lengths))
        for name in args.haystack.split(","):
            grid = run_retrieval(model, tok, "passkey", lengths=lengths, depths=DEPTHS,
                                 samples_per_cell=args.samples, seed=args.seed, pool=pools[name](), rank=0,
                                 world_size=1, tokens_per_batch=4096, notes=[])
            acc = {str(n): round(sum(r.values()) / len(r), 3) for n, r in grid.items()}
            rows.append({"theta": theta, "haystack": name, "passkeyAccuracy": acc,
                         "byDepth": {str(n): [round(v, 2) for v in r.values()] for n, r in grid.items()}})
            print(f"theta {theta:>12,.0f}  {name:8}  " + "  ".join(f"{n}: {a:.2f}" for n, a in acc.items()), flush=True)
    print(json.dumps({"bench": "tiny_probe", "model": args.model_dir, "samplesPerCell": args.samples,
                      "seed": args.seed, "rows": rows}))


if __name__ == "__main__":
    main()
