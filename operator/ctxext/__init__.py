"""ctxext: extend the context window of Llama-family models by RoPE theta scaling on Kubernetes."""

__version__ = "0.1.0"
