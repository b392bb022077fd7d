"""Where the corpus lives and how its documents are read.

``data.source`` URIs and the local paths they resolve to:

==============================  ==========================================================
``file:///abs/path``            ``/abs/path`` (a file or a directory)
``builtin://NAME``              ``ctxext.model_info.BUILTIN_DIR / NAME`` (shipped demo data)
``pvc://CLAIM/sub/path``        ``/data/CLAIM/sub/path`` — the operator mounts each data
                                PersistentVolumeClaim read-only at ``/data/<claim>`` in every
                                trainer pod (:data:`PVC_MOUNT_ROOT`)
``s3://...``                    not supported yet (clear error)
==============================  ==========================================================

A directory is read recursively in sorted path order; files are read by extension (``.txt``,
``.md``: one document per file; ``.jsonl``/``.json``: one record per line; ``.parquet``) or by
``data.format`` when it is not ``auto``. Records hold the text in ``data.textField``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from ctxext.model_info import BUILTIN_DIR

PVC_MOUNT_ROOT = Path(os.environ.get("CTXEXT_DATA_MOUNT_ROOT", "/data"))
TEXT_SUFFIXES = {".txt", ".md", ".text"}
JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
PARQUET_SUFFIXES = {".parquet"}


class DataSourceError(ValueError):
    """The corpus cannot be found or read; the message says which path and why."""


def resolve_source(source: str, pvc_root: Path = PVC_MOUNT_ROOT) -> Path:
    """The local path of a ``data.source`` URI.

    >>> resolve_source("file:///corpus/a.txt")
    PosixPath('/corpus/a.txt')
    >>> resolve_source("pvc://datasets/slimpajama/train", pvc_root=Path("/data"))
    PosixPath('/data/datasets/slimpajama/train')
    """
    if source.startswith("file://"):
        return Path(source[len("file://"):])
    if source.startswith("builtin://"):
        return BUILTIN_DIR / source[len("builtin://"):]
    if source.startswith("pvc://"):
        rest = source[len("pvc://"):].strip("/")
        if not rest:
            raise DataSourceError(f"data.source {source!r}: pvc:// needs a claim name")
        return pvc_root / rest
    if source.startswith("s3://"):
        raise DataSourceError(f"data.source {source!r}: s3:// is not supported yet; copy the corpus to a PVC")
    if source.startswith("/"):
        return Path(source)
    raise DataSourceError(f"data.source {source!r}: expected file://, builtin://, pvc:// or s3://")


def _kind(path: Path, fmt: str) -> str:
    if fmt and fmt != "auto":
        return "text" if fmt in ("text", "txt", "plain") else fmt
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    return "text"


def corpus_files(root: Path) -> list[Path]:
    """The corpus files under ``root`` in sorted order (hidden files skipped)."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DataSourceError(f"corpus path {root} does not exist")
    files = sorted(
        p for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.suffix.lower() in TEXT_SUFFIXES | JSONL_SUFFIXES | PARQUET_SUFFIXES
    )
    if not files:
        raise DataSourceError(f"corpus directory {root} holds no .txt/.md/.jsonl/.parquet files")
    return files


def read_documents(path: Path, *, fmt: str = "auto", text_field: str = "text") -> Iterator[str]:
    """Yield the non-empty documents of one file."""
    kind = _kind(path, fmt)
    if kind == "text":
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            yield text
    elif kind == "jsonl":
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise DataSourceError(f"{path}:{lineno}: not valid JSON ({exc})") from None
                field = record.get(text_field) if isinstance(record, dict) else None
                if not isinstance(field, str):
                    raise DataSourceError(f"{path}:{lineno}: record has no string field {text_field!r}")
                if field.strip():
                    yield field
    elif kind == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=[text_field])
        for value in table.column(text_field).to_pylist():
            if isinstance(value, str) and value.strip():
                yield value
    else:
        raise DataSourceError(f"{path}: unsupported data.format {fmt!r}")


def load_documents(source: str, *, fmt: str = "auto", text_field: str = "text") -> list[str]:
    """Every document of the corpus at ``source``, in a deterministic order."""
    docs = [d for f in corpus_files(resolve_source(source)) for d in read_documents(f, fmt=fmt, text_field=text_field)]
    if not docs:
        raise DataSourceError(f"data.source {source!r} holds no non-empty documents")
    return docs
