"""Refuse to resume a checkpoint written by a different number of processes, before any model is loaded.

DeepSpeed's ZeRO checkpoints hold one optimizer shard per data-parallel rank
(``zero_pp_rank_<r>_mp_rank_00_optim_states.pt``) and the trainer's data split and sequence-parallel
layout follow the world size, so a stage resumed with another GPU count cannot continue where it
stopped. Without this check DeepSpeed raises only after the model is loaded, the failure reads as a
retryable ``Error``, and every retry fails the same way. Instead the newest intact checkpoint's
recorded world size (``worldSize`` in its ``trainer_state.json``; for checkpoints that predate it,
the number of ZeRO optimizer shards) is compared with this run's at the start of the stage, and a
mismatch ends the attempt with reason code ``WorldSizeChanged``, exit code 2 (permanent).

Example: a stage checkpointed at step 40 on 2 nodes × 8 GPUs, restarted on 1 node × 8::

    checkpoint step-40 was written by 16 processes but this attempt runs 8. ZeRO shards and the data
    split cannot move between world sizes: run the stage on 16 processes again, or delete
    /ckpt/job/stage-2/checkpoints to restart the stage from its first step.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ctxext_trainer.checkpoint import _broadcast, latest_valid_checkpoint

#: ``reasonCode`` of the result (one of ``ctxext.results.PERMANENT_REASON_CODES``).
REASON_CODE = "WorldSizeChanged"
WORLD_SIZE_KEY = "worldSize"
_SHARD = re.compile(r"^zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")


class WorldSizeChanged(Exception):
    """The newest checkpoint was written by a different number of processes."""


def recorded_world_size(checkpoint: Path) -> int | None:
    """World size that wrote ``checkpoint`` (a ``step-<N>`` directory); None when it cannot be told.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "trainer_state.json").write_text('{"step": 3, "worldSize": 2}')
    >>> recorded_world_size(d)
    2
    """
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        if WORLD_SIZE_KEY in state:
            return int(state[WORLD_SIZE_KEY])
    except (OSError, ValueError):
        pass
    shards = {int(m.group(1)) for p in checkpoint.rglob("*") if (m := _SHARD.match(p.name))}
    return max(shards) + 1 if shards else None


def mismatch_message(step: int, recorded: int, world_size: int, root: Path) -> str:
    """The plain-words reason of a world-size mismatch.

    >>> mismatch_message(40, 16, 8, Path("/ckpt/c"))[:68]
    'checkpoint step-40 was written by 16 processes but this attempt runs'
    """
    return (f"checkpoint step-{step} was written by {recorded} processes but this attempt runs {world_size}. "
            f"ZeRO shards and the data split cannot move between world sizes: run the stage on {recorded} "
            f"processes again, or delete {root} to restart the stage from its first step.")


def check_resume_world_size(root: Path, world_size: int, *, is_rank0: bool) -> None:
    """Raise :class:`WorldSizeChanged` on every rank when the newest intact checkpoint under ``root``
    was written by another world size (rank 0 reads, all ranks learn the verdict)."""
    problem = None
    if is_rank0:
        found = latest_valid_checkpoint(root)
        recorded = recorded_world_size(found[1]) if found else None
        if found and recorded is not None and recorded != world_size:
            problem = mismatch_message(found[0], recorded, world_size, root)
    problem = _broadcast(problem)
    if problem:
        raise WorldSizeChanged(problem)
