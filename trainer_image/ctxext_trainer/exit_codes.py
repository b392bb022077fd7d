"""Process exit codes of the trainer, as the operator (and Kubeflow's ExitCode restart policy) reads them.

Kubeflow treats 1–127 as permanent failures and 128–255 as retryable ones. Plain torchrun exits 1
when any worker fails; start the workers with ``python -m ctxext_trainer.launch`` (torchrun's
options) so the pod exits with these codes.

====  =====================================================================================
0     stage finished (result.json status Succeeded)
1     unexpected error (traceback in the log; result.json status Failed, reasonCode Error)
2     bad stage config (message names the field), or a base model theta scaling cannot extend
      (result.json reasonCode UnsupportedModel, e.g. a `dynamic` RoPE type), a checkpoint written
      by another number of processes (reasonCode WorldSizeChanged), or evaluation out of memory
      (reasonCode EvaluationOutOfMemory, after the model is exported): retrying cannot help
3     guarded stop: the gradient-health guard stopped the stage (NonFiniteGradients or
      LossSpikes; result.json says which and at which step). Not a crash: do not restart the
      pod; the operator starts a new attempt per failurePolicy.onNonFiniteGradients
143   preempted (SIGTERM): a checkpoint was saved; restarting resumes from it
====  =====================================================================================
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import NoReturn

OK = 0
ERROR = 1
BAD_CONFIG = 2
GUARD_STOP = 3
PREEMPTED = 143


def exit_now(code: int) -> NoReturn:
    """Leave with ``code`` without the interpreter's teardown, after flushing logs and output.

    By the time a ``main`` returns, the stage has written its result and destroyed the process
    group; nothing is left to do. But native threads that torch/gloo/DeepSpeed started (the c10d
    store client, gloo's I/O threads) can still race the interpreter's teardown and abort the
    process ("terminate called without an active exception", SIGABRT → 134) — turning a guarded
    stop (3, "do not retry") into a crash the operator retries. ``os._exit`` skips that teardown,
    so the code the stage decided is the code the process exits with, every time.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe must not change the code
            stream.flush()
    os._exit(code)
