"""``python -m ctxext_trainer.launch [torchrun options] -m ctxext_trainer --stage-config FILE``

torchrun, but the pod's exit code is the trainer's. Plain torchrun exits 1 whenever a worker fails,
which would hide the guarded-stop code 3 and the preemption code 143
(:mod:`ctxext_trainer.exit_codes`) from the operator and from Kubeflow's ExitCode restart policy.
Options and the ``PET_*`` environment variables (``PET_NNODES``, ``PET_NPROC_PER_NODE``,
``PET_NODE_RANK``, ``PET_MASTER_ADDR``, ...) are torchrun's own; this only maps the outcome, and first
exports model credentials mounted as files (a TrainJob's, :mod:`ctxext_trainer.credentials`) so that the
workers inherit them.
"""

from __future__ import annotations

import os
import sys

from ctxext.stage_config import CREDENTIALS_ENV_VAR
from ctxext_trainer import exit_codes
from ctxext_trainer.credentials import export_credentials


def combined_exit_code(worker_codes: list[int]) -> int:
    """One exit code for the pod from the failed workers' codes.

    A guarded stop on any rank wins (the stage is finished, with a reason), then preemption, then
    the first other failure.

    >>> combined_exit_code([3, -15]), combined_exit_code([143, 1]), combined_exit_code([-9]), combined_exit_code([])
    (3, 143, 137, 1)
    """
    if exit_codes.GUARD_STOP in worker_codes:
        return exit_codes.GUARD_STOP
    if exit_codes.PREEMPTED in worker_codes:
        return exit_codes.PREEMPTED
    for code in worker_codes:
        if code < 0:
            return 128 - code  # killed by signal -code
        if code > 0:
            return code
    return exit_codes.ERROR


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(sys.argv[1:] if argv is None else argv)
    if names := export_credentials():
        print(f"ctxext: model credentials from {os.environ[CREDENTIALS_ENV_VAR]}: {', '.join(names)}", flush=True)
    try:
        run(args)
    except ChildFailedError as exc:
        return combined_exit_code([failure.exitcode for failure in exc.failures.values()])
    except SignalException as exc:
        return 128 + int(exc.sigval)
    return exit_codes.OK


if __name__ == "__main__":
    sys.exit(main())
