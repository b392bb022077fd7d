"""Process exit codes of the trainer, as the operator (and Kubeflow's ExitCode restart policy) reads them.

Kubeflow treats 1–127 as permanent failures and 128–255 as retryable ones. Plain torchrun exits 1
when any worker fails; start the workers with ``python -m ctxext_trainer.launch`` (torchrun's
options) so the pod exits with these codes.

====  =====================================================================================
0     stage finished (result.json status Succeeded)
1     unexpected error (traceback in the log; result.json status Failed, reasonCode Error)
2     bad stage config (message names the field), or a base model theta scaling cannot extend
      (result.json reasonCode UnsupportedModel, e.g. a `dynamic` RoPE type), or evaluation out of
      memory (reasonCode EvaluationOutOfMemory, after the model is exported): retrying cannot help
3     guarded stop: the gradient-health guard stopped the stage (NonFiniteGradients or
      LossSpikes; result.json says which and at which step). Not a crash: do not restart the
      pod; the operator starts a new attempt per failurePolicy.onNonFiniteGradients
143   preempted (SIGTERM): a checkpoint was saved; restarting resumes from it
====  =====================================================================================
"""

OK = 0
ERROR = 1
BAD_CONFIG = 2
GUARD_STOP = 3
PREEMPTED = 143
