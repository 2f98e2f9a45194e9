"""Components of a diffusers checkpoint → ONNX, checked against torch, recorded in a manifest.

TensorRT plans are built from these ONNX files on the GPU (a later issue)."""

from .family import ExportError, export_family

__all__ = ["ExportError", "export_family"]
