"""The operator: reconcile ContextExtensionJobs into Kubeflow PyTorchJobs, stage by stage.

Pure parts (unit-tested without a cluster): :mod:`.builder` (the PyTorchJob dict), :mod:`.paths`,
:mod:`.observe`, :mod:`.model`, :mod:`.stages` and :mod:`.reconcile` (the state machine).
I/O: :mod:`.kube` (API calls), :mod:`.handlers` (kopf decorators only), :mod:`.runner` (start-up),
:mod:`.metrics`; :mod:`.local_executor` is the development stand-in for the training-operator.
"""
