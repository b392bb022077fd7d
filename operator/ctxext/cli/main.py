"""Entry point of the `ctxext` console script."""

from __future__ import annotations

import typer
from typer.core import TyperCommand

from ctxext.cli import eval_cmds, operator_cmds, plan_cmds, run_cmds
from ctxext.cli.common import Command, Group

app = typer.Typer(
    name="ctxext",
    help="Extend the context window of Llama-family models by RoPE theta scaling, on Kubernetes or locally.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=Group,
)
plan_cmds.register(app)
operator_cmds.register(app)
run_cmds.register(app)
eval_cmds.register(app)
for _info in app.registered_commands:  # plain help (common._PlainHelp) for every command
    if not isinstance(_info.cls, type) or _info.cls is TyperCommand:  # typer's default
        _info.cls = Command

if __name__ == "__main__":  # pragma: no cover
    app()
