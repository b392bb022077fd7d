"""The tiny demo base model: corpus, passkey samples, training at L0 (``ctxext init-tiny``), evaluation."""
