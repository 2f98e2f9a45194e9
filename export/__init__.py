"""Components of a diffusers checkpoint → ONNX, checked against torch, recorded in a manifest.

TensorRT plans are built from these ONNX files on a GPU with TensorRT (export/tensorrt_build.py, run on Modal)."""

from .family import EXPORTED, NOT_GIVEN, UNCHANGED, export_family, source_hash
from .manifest import EXPORTER_VERSION
from .onnx_export import PARITY_LIMIT, ExportError, ParityError

__all__ = [
    "EXPORTED",
    "EXPORTER_VERSION",
    "NOT_GIVEN",
    "PARITY_LIMIT",
    "UNCHANGED",
    "ExportError",
    "ParityError",
    "export_family",
    "source_hash",
]
