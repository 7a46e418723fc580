"""Online: serve a saved model over HTTP with Ray Serve (batched across clients), and export it
to ONNX, TorchScript or plain safetensors for other runtimes."""

from raycls.serve.settings import ServeSettings

__all__ = ["ServeSettings"]
