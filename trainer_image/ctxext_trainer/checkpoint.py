"""Atomic, verifiable checkpoints under ``<output_dir>/checkpoints/step-<N>/``.

Saving (all ranks take part):

1. DeepSpeed writes model / optimizer / scheduler shards of every rank into
   ``checkpoints/.tmp-step-<N>/`` (``client_state`` carries the trainer state: step, data-stream
   position, guard window);
2. after a barrier, rank 0 writes ``MANIFEST.json`` — size and SHA-256 of every file — *last*;
3. rank 0 renames ``.tmp-step-<N>`` to ``step-<N>`` (atomic on one file system) and deletes all
   but the newest ``keep`` checkpoints and leftover ``.tmp-*`` directories.

Only one attempt of a stage writes its checkpoints: an attempt *claims* the directory before it resumes
(:func:`claim_checkpoints` writes a fresh token to ``checkpoints/OWNER``), writes its shards into its own
``.tmp-step-<N>-<token>`` and, before the rename, checks that ``OWNER`` still holds its token. A pod of an
earlier attempt that outlived it (a node cut off from the API server keeps running a deleted pod) finds a
newer claim there and stops with :class:`SupersededError` without touching ``step-<N>`` or pruning.

Loading picks the newest ``step-<N>`` whose manifest matches the files on disk; a truncated or
corrupt checkpoint (missing manifest, wrong size or hash) is skipped with a warning and the previous
one is used. Files above :data:`FULL_HASH_LIMIT` are hashed on their size plus first and last
:data:`EDGE_BYTES` (hashing a 100 GB checkpoint in full would take minutes per save); the size check
still catches truncation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch.distributed as torch_dist

from ctxext_trainer.distributed import barrier

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
FULL_HASH_LIMIT = 256 * 1024**2
EDGE_BYTES = 16 * 1024**2
STEP_DIR = re.compile(r"^step-(\d+)$")
OWNER = "OWNER"
_claims: dict[str, str] = {}  # checkpoint root → this attempt's token (the same on every rank)


class SupersededError(RuntimeError):
    """A newer attempt of the stage has claimed its checkpoint directory: this one must not write there."""


def file_digest(path: Path) -> str:
    """SHA-256 of a file (of size + head + tail above FULL_HASH_LIMIT)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as fh:
        if size <= FULL_HASH_LIMIT:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(str(size).encode())
            h.update(fh.read(EDGE_BYTES))
            fh.seek(size - EDGE_BYTES)
            h.update(fh.read(EDGE_BYTES))
    return h.hexdigest()


def write_manifest(directory: Path, step: int) -> None:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": file_digest(p)} for p in files}
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"step": step, "files": entries}, indent=1, sort_keys=True))
    tmp.replace(directory / MANIFEST)


def verify_checkpoint(directory: Path) -> str | None:
    """None if the checkpoint is complete and intact, else what is wrong."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        return f"no readable {MANIFEST} ({exc.__class__.__name__})"
    for rel, want in manifest.get("files", {}).items():
        path = directory / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != want["size"]:
            return f"{rel} has {path.stat().st_size} bytes, the manifest says {want['size']}"
        if file_digest(path) != want["sha256"]:
            return f"{rel} does not match its SHA-256"
    return None


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    """``step-<N>`` directories under ``root``, newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return sorted(found, reverse=True)


def latest_valid_checkpoint(root: Path, warnings: list[str] | None = None) -> tuple[int, Path] | None:
    """The newest intact checkpoint, skipping (and logging, and appending to ``warnings``) damaged ones."""
    for step, path in step_dirs(root):
        problem = verify_checkpoint(path)
        if problem is None:
            return step, path
        message = f"checkpoint {path.name} is unusable ({problem}); trying an older one"
        log.warning("%s (%s)", message, path)
        if warnings is not None:
            warnings.append(message)
    return None


def _broadcast(value: Any) -> Any:
    if torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1:
        box = [value]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


def prune(root: Path, keep: int) -> None:
    for _, path in step_dirs(root)[keep:]:
        shutil.rmtree(path, ignore_errors=True)
    for tmp in root.glob(".tmp-step-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _owner(root: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((root / OWNER).read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def claim_checkpoints(root: Path, job_name: str, *, is_rank0: bool) -> str:
    """Make ``root`` this attempt's (every rank calls this, before resuming); returns the claim's token.

    The newest claim wins: an attempt of the stage that claimed earlier can no longer save there.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> first = claim_checkpoints(root, "j-s1-a1", is_rank0=True)
    >>> second = claim_checkpoints(root, "j-s1-a2", is_rank0=True)
    >>> owns(root, first), owns(root, second)
    (False, True)
    """
    token = _broadcast(uuid.uuid4().hex[:12] if is_rank0 else None)
    if is_rank0:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{OWNER}.{token}"
        tmp.write_text(json.dumps({"token": token, "jobName": job_name}))
        tmp.replace(root / OWNER)
    _claims[str(root)] = token
    return str(token)


def owns(root: Path, token: str) -> bool:
    """Whether the claim ``token`` still holds ``root`` (unclaimed directories belong to whoever writes)."""
    owner = _owner(root)
    return not owner or owner.get("token") == token


def save_checkpoint(engine: Any, root: Path, step: int, trainer_state: dict[str, Any], *, keep: int,
                    is_rank0: bool) -> Path:
    """Save step ``step`` atomically (every rank calls this); returns the final directory."""
    token = _claims.get(str(root))
    tag_tmp, final = f".tmp-step-{step}" + (f"-{token}" if token else ""), root / f"step-{step}"
    if is_rank0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root / tag_tmp, ignore_errors=True)
    barrier()
    engine.save_checkpoint(str(root), tag=tag_tmp, client_state={"ctxext": trainer_state}, save_latest=False)
    barrier()
    lost = _broadcast(bool(is_rank0 and token and not owns(root, token)))
    if lost:
        if is_rank0:
            shutil.rmtree(root / tag_tmp, ignore_errors=True)
        raise SupersededError(f"{_owner(root).get('jobName') or 'a newer attempt'} has taken over this stage's "
                              f"checkpoints ({root}); this attempt stops without saving step {step} there")
    if is_rank0:
        tmp = root / tag_tmp
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1, sort_keys=True))
        write_manifest(tmp, step)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        prune(root, keep)
    barrier()
    return final


def load_latest_checkpoint(engine: Any, root: Path,
                           warnings: list[str] | None = None) -> tuple[int, dict[str, Any]] | None:
    """Load the newest intact checkpoint into ``engine``: (step, trainer state), or None to start fresh.

    Damaged checkpoints that were skipped are described in ``warnings`` (on rank 0, which reports them).
    """
    found = latest_valid_checkpoint(root, warnings) \
        if not torch_dist.is_initialized() or torch_dist.get_rank() == 0 else None
    choice = _broadcast(None if found is None else found[0])
    if choice is None:
        return None
    path, client = engine.load_checkpoint(str(root), tag=f"step-{choice}", load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {root / f'step-{choice}'}")
    return int(choice), dict((client or {}).get("ctxext", {}))
