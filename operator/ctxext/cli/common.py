"""What every command shares: error reporting without tracebacks, consoles, output formats."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from ctxext.errors import SpecError
from ctxext.yaml_output import dump_yaml

# Wide when not a terminal, so piped tables are not squeezed to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
F = TypeVar("F", bound=Callable[..., Any])

#: Exit code of a bad manifest or bad argument (the usual "usage error" code).
EXIT_INVALID = 2


def _plain_usage(piece: str) -> str:
    """``{manifest}`` (typer's mark of a required argument) → ``MANIFEST``; ``[dir]`` → ``[DIR]``.

    >>> [_plain_usage(p) for p in ("[OPTIONS]", "{manifest}", "[directory]", "COMMAND")]
    ['[OPTIONS]', 'MANIFEST', '[DIRECTORY]', 'COMMAND']
    """
    if piece.startswith("{") and piece.endswith("}"):
        return piece[1:-1].upper()
    return piece.upper() if piece.startswith("[") else piece


class _PlainHelp:
    """Help as a user expects it: no ``<bool>`` type label on ``--help`` itself, arguments in the usage
    line as ``MANIFEST`` rather than ``{manifest}``."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""  # typer shows the metavar, when set, instead of the type
        return option

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [_plain_usage(p) for p in super().collect_usage_pieces(ctx)]  # type: ignore[misc]


class Command(_PlainHelp, TyperCommand):
    pass


class Group(_PlainHelp, TyperGroup):
    pass


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


def fail(message: str, code: int = EXIT_INVALID) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code)


def reports_errors(fn: F) -> F:
    """Turn expected errors into one clear message and exit 2; anything else into exit 1, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SpecError as exc:
            for path, msg in exc.problems:
                err_console.print(Text.assemble(("error:", "bold red"), f" {path + ': ' if path else ''}{msg}"),
                                  highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_INVALID) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            err_console.print(Text.assemble(("error:", "bold red"), f" {type(exc).__name__}: {exc}"),
                              highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def emit(data: Any, fmt: OutputFormat) -> None:
    """Print machine-readable output on stdout."""
    if fmt is OutputFormat.json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(dump_yaml(data))
