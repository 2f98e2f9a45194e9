"""Tiny stand-ins for the antelopev2 face models, written as ONNX files with their file names, inputs and outputs:

- `scrfd_10g_bnkps.onnx`: input `input.1` (1 x 3 x 640 x 640, normalised as components/face.py feeds it); nine
  outputs, per stride 8, 16 and 32 the scores (N x 1), box distances (N x 4) and keypoint offsets (N x 10), N = two
  anchors per cell. Built, not trained: at each stride it finds a bright square of 8 x 8 cells (64, 128 or 256
  pixels) on a dark ground, its box the square and its keypoints where a face's would be (`KEYPOINTS`).
- `glintr100.onnx`: input `input.1` (N x 3 x 112 x 112), a 512-d embedding: a random convolution and projection.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .face import ANCHORS_PER_CELL, ARCFACE_SIZE, DETECTION_SIZE, STRIDES

DETECTOR_FILE, EMBEDDER_FILE = "scrfd_10g_bnkps.onnx", "glintr100.onnx"
FACE_CELLS = 8  # a face the tiny detector finds is this many cells of its stride wide and high
# Keypoints of a found face, in half face widths from its centre: eyes, nose tip, mouth corners.
KEYPOINTS = np.array([[-0.35, -0.25], [0.35, -0.25], [0.0, 0.1], [-0.3, 0.45], [0.3, 0.45]], dtype=np.float32)
EMBEDDING_DIM = 512


class TinyDetector(nn.Module):
    def __init__(self, threshold: float = 0.95, sharpness: float = 60.0) -> None:
        super().__init__()
        self.threshold, self.sharpness = threshold, sharpness
        half = FACE_CELLS / 2
        self.register_buffer("distances", torch.full((1, 4), half))  # in strides: half a face to every side
        self.register_buffer("offsets", torch.from_numpy(KEYPOINTS * half).reshape(1, 10))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        bright = (x.mean(1, keepdim=True) * 128.0 + 127.5) / 255.0  # back to 0..1
        scores, boxes, keypoints = [], [], []
        k = FACE_CELLS
        for stride in STRIDES:
            cells = F.avg_pool2d(bright, stride)
            # The mean over the k x k cells around each cell's corner (SCRFD's anchor centre): 1 on a square's centre.
            window = F.avg_pool2d(F.pad(cells, (k // 2, k // 2 - 1, k // 2, k // 2 - 1)), k, stride=1)
            score = torch.sigmoid(self.sharpness * (window - self.threshold)).reshape(-1, 1)
            score = score.repeat_interleave(ANCHORS_PER_CELL, dim=0)
            scores.append(score)
            boxes.append(torch.ones_like(score) * self.distances)
            keypoints.append(torch.ones_like(score) * self.offsets)
        return (*scores, *boxes, *keypoints)


class TinyEmbedder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=4, stride=4)
        self.proj = nn.Linear(8 * (ARCFACE_SIZE // 4) ** 2, EMBEDDING_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.relu(self.conv(x)).flatten(1))


def build_tiny_face_models(folder: Path, seed: int = 0) -> Path:
    """Write the two tiny models into `folder` (antelopev2's layout); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    names = [f"{kind}_{stride}" for kind in ("score", "bbox", "kps") for stride in STRIDES]
    detector = torch.zeros(1, 3, DETECTION_SIZE, DETECTION_SIZE)
    _export(TinyDetector().eval(), (detector,), folder / DETECTOR_FILE, names, None)
    batch = torch.export.Dim("batch", min=1, max=16)
    face = torch.zeros(2, 3, ARCFACE_SIZE, ARCFACE_SIZE)
    _export(TinyEmbedder().eval(), (face,), folder / EMBEDDER_FILE, ["embedding"], {"x": {0: batch}})
    return folder


def _export(module: nn.Module, example: tuple, path: Path, outputs: list[str], dynamic: dict | None) -> None:
    with torch.no_grad():
        program = torch.onnx.export(
            module, example, dynamo=True, input_names=["input.1"], output_names=outputs, dynamic_shapes=dynamic,
            verbose=False,
        )  # fmt: skip
    program.save(str(path))
