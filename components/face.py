"""Face analysis for the identity routes (issue 18), around two ONNX models with the inputs and outputs of
insightface's antelopev2 files: an SCRFD detector (`scrfd_10g_bnkps.onnx`: 5 keypoints) and an ArcFace embedder
(`glintr100.onnx`: 512-d). The models run wherever their runtime is; this module is the arithmetic around them, as
insightface's `SCRFD.detect`, `face_align.norm_crop` and InstantID's `draw_kps` define it:

- detection input: the image letterboxed into the detector's square (aspect kept, padded right and bottom with
  black), RGB, (x - 127.5) / 128;
- its 9 outputs: for strides 8, 16 and 32, the scores (one per anchor, 2 anchors per cell), then the box distances
  (left, top, right, bottom) and then the keypoint offsets, both in units of the stride from the anchor's centre;
- faces scoring 0.5 or more, overlapping ones merged by NMS at IoU 0.4, mapped back to the image; the largest wins;
- the ArcFace crop: the similarity transform (Umeyama, as scikit-image's estimate) taking the 5 keypoints onto
  ArcFace's 112x112 template, the image warped by it (OpenCV, black outside), RGB, (x - 127.5) / 127.5;
- the keypoint image: InstantID's drawing (limbs to the nose as ellipses at 60 %, dots of radius 10) on black.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

STRIDES = (8, 16, 32)
ANCHORS_PER_CELL = 2
DETECTION_SIZE = 640  # the detector's input square (antelopev2's det_size)
SCORE_THRESHOLD = 0.5
NMS_IOU = 0.4
# ArcFace's template: where the eyes, the nose tip and the mouth corners sit in a 112x112 crop.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
ARCFACE_SIZE = 112
# InstantID's keypoint colours (eyes, nose, mouth corners) and its limbs, each from a keypoint to the nose.
KPS_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
KPS_LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))


class NoFace(ValueError):
    """The image holds no face the detector finds (the API answers 422 naming the image's field)."""


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # x1, y1, x2, y2 in image pixels
    score: float
    keypoints: np.ndarray  # 5 x 2: left eye, right eye, nose, left and right mouth corners

    @property
    def area(self) -> float:
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))


def letterbox(image: np.ndarray, size: int = DETECTION_SIZE) -> tuple[np.ndarray, float]:
    """image: H x W x 3 uint8 RGB -> (size x size x 3 with the image resized into its top left, the scale)."""
    height, width = image.shape[:2]
    if height > width:
        new_height, new_width = size, int(size * width / height)
    else:
        new_width, new_height = size, int(size * height / width)
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[:new_height, :new_width] = cv2.resize(image, (new_width, new_height))
    return canvas, new_height / height


def detection_input(canvas: np.ndarray) -> np.ndarray:
    """The detector's 1 x 3 x H x W float32 input of a letterboxed RGB canvas."""
    return ((canvas.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]


def anchor_centres(height: int, width: int, stride: int) -> np.ndarray:
    """(height/stride * width/stride * ANCHORS_PER_CELL) x 2 (x, y): every cell's centre, once per anchor."""
    ys, xs = np.mgrid[: height // stride, : width // stride]
    centres = (np.stack([xs, ys], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
    return np.repeat(centres, ANCHORS_PER_CELL, axis=0)


def decode(outputs: list[np.ndarray], height: int, width: int, threshold: float = SCORE_THRESHOLD) -> list[Face]:
    """The detector's 9 outputs (scores, boxes, keypoints per stride) on a height x width input -> faces in input
    pixels, best first, NMS applied."""
    levels = len(STRIDES)
    boxes, scores, keypoints = [], [], []
    for i, stride in enumerate(STRIDES):
        score = outputs[i].reshape(-1)
        distance = outputs[i + levels].reshape(-1, 4) * stride
        offsets = outputs[i + 2 * levels].reshape(-1, 5, 2) * stride
        centres = anchor_centres(height, width, stride)
        keep = score >= threshold
        c = centres[keep]
        boxes.append(np.concatenate([c - distance[keep, :2], c + distance[keep, 2:]], axis=1))
        keypoints.append(c[:, None, :] + offsets[keep])
        scores.append(score[keep])
    box, score, kps = np.concatenate(boxes), np.concatenate(scores), np.concatenate(keypoints)
    order = np.argsort(-score, kind="stable")
    kept = nms(box[order], NMS_IOU)
    return [Face(box[order][k], float(score[order][k]), kps[order][k]) for k in kept]


def nms(boxes: np.ndarray, iou: float) -> list[int]:
    """Indices of `boxes` (sorted best first) that no better box overlaps by more than `iou` (insightface's +1
    pixel areas)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = np.arange(len(boxes)), []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        overlap = w * h / (areas[i] + areas[rest] - w * h)
        order = rest[overlap <= iou]
    return keep


def largest_face(image: np.ndarray, run_detector, size: int = DETECTION_SIZE) -> Face:  # noqa: ANN001
    """The largest face of `image` (H x W x 3 uint8 RGB), in image pixels. `run_detector(input) -> 9 outputs`."""
    canvas, scale = letterbox(image, size)
    faces = decode(run_detector(detection_input(canvas)), size, size)
    if not faces:
        raise NoFace("no face found in the image")
    face = max(faces, key=lambda f: f.area)
    return Face(face.box / scale, face.score, face.keypoints / scale)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2 x 3 similarity transform (rotation, uniform scale, translation) taking points `src` closest onto
    `dst` in least squares: Umeyama's closed form, without reflection."""
    src, dst = src.astype(np.float64), dst.astype(np.float64)
    mean_src, mean_dst = src.mean(0), dst.mean(0)
    a, b = src - mean_src, dst - mean_dst
    u, s, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])
    rotation = u @ d @ vt
    scale = np.trace(np.diag(s) @ d) / a.var(0).sum()
    return np.hstack([scale * rotation, (mean_dst - scale * rotation @ mean_src)[:, None]])


def arcface_crop(image: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """The 112 x 112 RGB crop of `image` that puts the face's keypoints onto ArcFace's template."""
    matrix = similarity(keypoints, ARCFACE_TEMPLATE)
    return cv2.warpAffine(image, matrix, (ARCFACE_SIZE, ARCFACE_SIZE), borderValue=0.0)


def embedding_input(crop: np.ndarray) -> np.ndarray:
    """The embedder's 1 x 3 x 112 x 112 float32 input of an aligned RGB crop."""
    return ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]


def normalised(embedding: np.ndarray) -> np.ndarray:
    """The embedding over its L2 norm (insightface's `normed_embedding`, what IP-Adapter FaceID takes)."""
    flat = embedding.reshape(-1).astype(np.float32)
    return flat / np.linalg.norm(flat)


def draw_keypoints(width: int, height: int, keypoints: np.ndarray) -> np.ndarray:
    """InstantID's control image: on black, each keypoint's limb to the nose as a filled ellipse 8 pixels wide,
    all at 60 % brightness, then a dot of radius 10 per keypoint in its colour. height x width x 3 uint8."""
    canvas = np.zeros((height, width, 3), dtype=np.float64)
    kps = np.asarray(keypoints, dtype=np.float64)
    for start, end in KPS_LIMBS:
        (x0, y0), (x1, y1) = kps[start], kps[end]
        length = math.hypot(x0 - x1, y0 - y1)
        angle = math.degrees(math.atan2(y0 - y1, x0 - x1))
        centre = (int((x0 + x1) / 2), int((y0 + y1) / 2))
        polygon = cv2.ellipse2Poly(centre, (int(length / 2), 4), int(angle), 0, 360, 1)
        canvas = cv2.fillConvexPoly(canvas.copy(), polygon, KPS_COLOURS[start])
    canvas = (canvas * 0.6).astype(np.uint8)
    for (x, y), colour in zip(kps, KPS_COLOURS, strict=True):
        canvas = cv2.circle(canvas.copy(), (int(x), int(y)), 10, colour, -1)
    return canvas
