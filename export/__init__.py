"""Components of a diffusers checkpoint → ONNX, checked against torch, recorded in a manifest.

TensorRT plans are built from these ONNX files (export/tensorrt_build.py): serving plans on Modal by the datacenter
TensorRT, plans for checking by TensorRT for RTX on the CPU install (export/tensorrt_flavours.py)."""

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
