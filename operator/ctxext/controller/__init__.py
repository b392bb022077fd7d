"""The operator: reconcile ContextExtensionJobs into Kubeflow PyTorchJobs, stage by stage.

Pure parts (unit-tested without a cluster): :mod:`.builder` (the PyTorchJob dict), :mod:`.paths`,
:mod:`.observe`, :mod:`.model`, :mod:`.stages` and :mod:`.reconcile` (the state machine),
:mod:`.changes` (which watch events need a pass), :mod:`.registry` (what is kept per job).
Event loop: :mod:`.passes` (per-job serialisation, coalescing, wake-ups), :mod:`.engine` (events in,
passes out). I/O: :mod:`.kube` (API calls), :mod:`.handlers` (kopf decorators only), :mod:`.startup`
(kopf settings), :mod:`.runner` (``ctxext operator``), :mod:`.metrics`; :mod:`.local_executor` is the
development stand-in for the training-operator.

Imports go one way: runner → handlers → startup → engine → the rest; nothing imports the runner.
"""
