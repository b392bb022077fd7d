"""Build a stage's :class:`StageData` from its config: read, hold out, tokenize."""

from __future__ import annotations

from ctxext.stage_config import StageConfig
from ctxext_trainer.data.augment import split_documents
from ctxext_trainer.data.batches import StageData
from ctxext_trainer.data.sources import load_documents
from ctxext_trainer.tokenizer import Tokenizer


def training_documents(config: StageConfig) -> list[str]:
    """The corpus documents used for training (validation ones held out, as evaluation sees them)."""
    data = config.data
    docs = load_documents(data.source, fmt=str(data.format), text_field=data.text_field)
    train, _ = split_documents(docs, data.validation_fraction, data.seed)
    return train


def build_stage_data(config: StageConfig, tokenizer: Tokenizer) -> StageData:
    """Tokenize the training documents and wrap them in a deterministic, resumable stage stream."""
    data = config.data
    token_docs = [tokenizer.encode(doc) for doc in training_documents(config)]
    token_docs = [d for d in token_docs if d]
    return StageData(token_docs, eos_id=tokenizer.eos_id, seed=data.seed, seq_len=config.seq_len,
                     min_seq_len=config.min_seq_len, upsample_long=data.long_context_upsampling,
                     synthetic_ratio=data.synthetic_retrieval_ratio,
                     synthetic_task=str(data.synthetic_retrieval_task), encode=tokenizer.encode)
