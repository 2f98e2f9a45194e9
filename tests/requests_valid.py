"""A minimal valid body for every route, by task: what tests send when the body itself is not under test."""

from __future__ import annotations

import base64
import io

from PIL import Image

from registry import ROUTES, Task


def _png(mode: str, size: tuple[int, int] = (64, 48)) -> str:
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


IMAGE, MASK = _png("RGB"), _png("L")
BY_TASK: dict[Task, dict[str, object]] = {
    Task.TEXT_TO_IMAGE: {"prompt": "a red fox"},
    Task.EDIT: {"instruction": "make the fox red", "source_image": IMAGE},
    Task.INPAINT: {"prompt": "a red fox", "source_image": IMAGE, "mask_image": MASK},
}
# The fields each task requires (the request schema's `required`).
REQUIRED: dict[Task, list[str]] = {
    Task.TEXT_TO_IMAGE: ["prompt"],
    Task.EDIT: ["instruction", "source_image"],
    Task.INPAINT: ["prompt", "source_image", "mask_image"],
}


def valid_body(path: str) -> dict[str, object]:
    return dict(BY_TASK[ROUTES[path].task])
