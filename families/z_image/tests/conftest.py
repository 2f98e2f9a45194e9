from __future__ import annotations

from pathlib import Path

import pytest

from families.z_image import tiny


@pytest.fixture(scope="session")
def z_image_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny Z-Image-Turbo, built once per run."""
    out = tmp_path_factory.mktemp("z-image-turbo")
    tiny.build(out)
    return out
