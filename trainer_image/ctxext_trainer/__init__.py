"""ctxext trainer: runs one curriculum stage inside a PyTorchJob pod (or under `ctxext run`)."""
