"""Training data: corpus sources, deterministic resumable packing, augmentation, length curriculum."""
