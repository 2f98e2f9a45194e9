from __future__ import annotations

from pathlib import Path

import pytest

from checkpoints.source import resolve


@pytest.fixture(scope="session")
def z_image_checkpoint(stack_dirs) -> Path:
    """Tiny Z-Image-Turbo: the test stack's folder (built here if the stack has not built it yet)."""
    return resolve("z-image-turbo", "tiny", stack_dirs.checkpoints).path
