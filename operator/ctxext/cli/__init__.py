"""The `ctxext` command line (typer). Each area registers its commands in its own module."""
