"""Fixtures shared by the suite: tiny checkpoints and the FLUX components exported from them, cached under .cache/
so reruns reuse them (the builder's stamp and the export manifest decide what is stale). The serving fixtures (a
real Triton and the API) live in stack_fixtures.py."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.stack_fixtures"]

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_CHECKPOINTS = REPO_ROOT / ".cache" / "test-checkpoints"
TEST_ONNX = REPO_ROOT / ".cache" / "test-onnx"


@pytest.fixture(scope="session")
def tiny_checkpoint_dirs() -> dict[str, Path]:
    """Registry checkpoint key -> its tiny diffusers folder."""
    from checkpoints import resolve
    from registry import CHECKPOINTS

    return {key: resolve(key, "tiny", TEST_CHECKPOINTS).path for key in sorted(CHECKPOINTS)}


@pytest.fixture(scope="session")
def flux_onnx_dir(tiny_checkpoint_dirs: dict[str, Path]) -> Path:
    """The FLUX family exported to ONNX: <dir>/<triton_model>/model.onnx and <dir>/manifest.json."""
    from export import export_family
    from registry import checkpoints_of

    export_family("flux", {c.key: tiny_checkpoint_dirs[c.key] for c in checkpoints_of("flux")}, TEST_ONNX)
    return TEST_ONNX
