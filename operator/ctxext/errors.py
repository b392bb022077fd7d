"""Errors that name the field they are about, so every front end can say what to fix."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydantic import ValidationError


class SpecError(ValueError):
    """One or more problems with a ContextExtensionJob, each tied to a field path.

    >>> str(SpecError([("spec.targetContextLength", "must be greater than 8192")]))
    'spec.targetContextLength: must be greater than 8192'
    """

    def __init__(self, problems: Sequence[tuple[str, str]]):
        self.problems = list(problems)
        super().__init__("\n".join(f"{path}: {msg}" if path else msg for path, msg in self.problems))

    @property
    def field(self) -> str:
        """Path of the first problem."""
        return self.problems[0][0] if self.problems else ""


def field_path(loc: Iterable[str | int], prefix: str = "") -> str:
    """``('spec', 'curriculum', 'stages', 1, 'seqLen')`` → ``spec.curriculum.stages[1].seqLen``."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def from_validation_error(err: ValidationError, prefix: str = "") -> SpecError:
    """Translate pydantic's errors into field paths and short messages."""
    problems = []
    for e in err.errors(include_url=False):
        loc = [p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p in {"int", "str"}))]
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check its spelling and indentation)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "string_pattern_mismatch" and _pattern_hint(e.get("ctx", {}).get("pattern")):
            msg = f"{_pattern_hint(e['ctx']['pattern'])} (got {str(e.get('input'))[:60]!r})"
        else:
            shown = e.get("input")
            if not isinstance(shown, dict | list) and shown is not None:
                text = repr(shown)
                msg += f" (got {text[:60] + '…' if len(text) > 60 else text})"
        problems.append((field_path(loc, prefix), msg))
    # One union failing on both arms reports twice; keep the first per path.
    seen: dict[str, str] = {}
    for path, msg in problems:
        seen.setdefault(path, msg)
    return SpecError(list(seen.items()))


def _pattern_hint(pattern: object) -> str | None:
    """The words for a pattern the API declares (ctxext.api.spec.PATTERN_HINTS), else None."""
    from ctxext.api.spec import PATTERN_HINTS

    return PATTERN_HINTS.get(pattern) if isinstance(pattern, str) else None
