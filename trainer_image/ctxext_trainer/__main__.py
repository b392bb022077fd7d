"""``python -m ctxext_trainer --stage-config FILE`` (or the JSON in ``$CTXEXT_STAGE_CONFIG``).

Thin on purpose: parse, then :func:`ctxext_trainer.stage.run_stage` builds, trains, evaluates, saves
and closes. Exit codes: :mod:`ctxext_trainer.exit_codes`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ctxext.errors import SpecError
from ctxext.stage_config import ENV_VAR, TRAINJOB_ENV_VAR, load_stage_config, read_stage_config
from ctxext_trainer import attempt_end, exit_codes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctxext_trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--stage-config", help=f"stage config file (JSON/YAML); default: ${ENV_VAR}")
    args = parser.parse_args(argv)
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO if rank == "0" else logging.WARNING,
                        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    try:
        if args.stage_config:
            config = read_stage_config(args.stage_config)
        elif os.environ.get(ENV_VAR):
            config = load_stage_config(os.environ[ENV_VAR])
        else:
            parser.error(f"give --stage-config FILE or set ${ENV_VAR}")
    except (SpecError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_codes.BAD_CONFIG
    if os.environ.get(TRAINJOB_ENV_VAR) and (done := attempt_end.check(config.output_dir, config.job_name)):
        print(f"ctxext: {done[1]}", file=sys.stderr, flush=True)
        return done[0]
    from ctxext_trainer.stage import run_stage  # imports torch / deepspeed

    return run_stage(config)


if __name__ == "__main__":
    exit_codes.exit_now(main())
