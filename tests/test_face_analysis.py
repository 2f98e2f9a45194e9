"""Face analysis for the identity routes (components/face.py) around tiny stand-ins of the antelopev2 models
(components/face_tiny.py) run by ONNX Runtime: the detector's files have antelopev2's inputs and outputs, the largest
face of an image is found where it is, in the image's pixels, through the letterbox; an image without one is
refused; the ArcFace crop puts the keypoints on ArcFace's template; the keypoint image is InstantID's drawing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from components import face
from components.face_tiny import DETECTOR_FILE, EMBEDDER_FILE, EMBEDDING_DIM, KEYPOINTS, build_tiny_face_models


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_face_models(tmp_path_factory.mktemp("antelopev2"))


@pytest.fixture(scope="module")
def detector(models: Path):  # noqa: ANN201 - the detector as a function of its input
    session = ort.InferenceSession(str(models / DETECTOR_FILE), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input.1": x})


def test_the_detector_has_antelopev2s_inputs_and_outputs(models: Path) -> None:
    session = ort.InferenceSession(str(models / DETECTOR_FILE), providers=["CPUExecutionProvider"])
    (source,) = session.get_inputs()
    assert source.name == "input.1" and source.shape == [1, 3, 640, 640]
    shapes = [o.shape for o in session.get_outputs()]
    cells = [2 * (640 // s) ** 2 for s in (8, 16, 32)]  # two anchors per cell, strides 8, 16, 32
    assert shapes == [[n, 1] for n in cells] + [[n, 4] for n in cells] + [[n, 10] for n in cells]
    embedder = ort.InferenceSession(str(models / EMBEDDER_FILE), providers=["CPUExecutionProvider"])
    assert embedder.get_inputs()[0].shape[1:] == [3, 112, 112] and embedder.get_outputs()[0].shape[1] == 512


def square(image: np.ndarray, top: int, left: int, side: int) -> None:
    image[top : top + side, left : left + side] = 255


def test_the_largest_face_is_found_where_it_is_in_image_pixels(detector) -> None:  # noqa: ANN001
    # 1280 x 960 letterboxes at half scale: squares of 128 and 256 pixels are faces at strides 8 and 16.
    image = np.full((960, 1280, 3), 30, np.uint8)
    square(image, 192, 384, 128)
    square(image, 576, 800, 256)
    found = face.largest_face(image, detector)
    np.testing.assert_allclose(found.box, [800, 576, 1056, 832], atol=1e-3)
    centre, half = np.array([928.0, 704.0]), 128.0
    np.testing.assert_allclose(found.keypoints, centre + KEYPOINTS * half, atol=1e-3)
    assert found.score > face.SCORE_THRESHOLD
    # Alone, the smaller face is the one found.
    small = np.full((960, 1280, 3), 30, np.uint8)
    square(small, 192, 384, 128)
    np.testing.assert_allclose(face.largest_face(small, detector).box, [384, 192, 512, 320], atol=1e-3)


def test_a_portrait_image_letterboxes_along_its_height(detector) -> None:  # noqa: ANN001
    image = np.zeros((640, 480, 3), np.uint8)  # taller than wide: scale 1, padded on the right
    square(image, 320, 64, 64)
    np.testing.assert_allclose(face.largest_face(image, detector).box, [64, 320, 128, 384], atol=1e-3)


def test_an_image_without_a_face_is_refused(detector) -> None:  # noqa: ANN001
    with pytest.raises(face.NoFace):
        face.largest_face(np.full((512, 512, 3), 30, np.uint8), detector)


def transform(points: np.ndarray, scale: float, degrees: float, shift: tuple[float, float]) -> np.ndarray:
    a = math.radians(degrees)
    rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return points @ (scale * rotation).T + np.array(shift)


def test_the_similarity_maps_keypoints_onto_the_template() -> None:
    keypoints = transform(face.ARCFACE_TEMPLATE, 2.5, 20.0, (300.0, 140.0))
    matrix = face.similarity(keypoints, face.ARCFACE_TEMPLATE)
    mapped = keypoints @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped, face.ARCFACE_TEMPLATE, atol=1e-4)
    assert math.isclose(np.linalg.det(matrix[:, :2]), 1 / 2.5**2, rel_tol=1e-6)  # a scale, no reflection


def test_the_arcface_crop_puts_each_keypoint_on_its_template_place() -> None:
    keypoints = transform(face.ARCFACE_TEMPLATE, 3.0, -15.0, (200.0, 90.0))
    image = np.zeros((720, 720, 3), np.uint8)
    for (x, y), colour in zip(keypoints, face.KPS_COLOURS, strict=True):
        yy, xx = np.mgrid[:720, :720]
        image[(xx - x) ** 2 + (yy - y) ** 2 <= 4.0**2] = colour  # a dot of radius 4 (1.3 pixels in the crop)
    crop = face.arcface_crop(image, keypoints)
    assert crop.shape == (112, 112, 3)
    for (x, y), colour in zip(face.ARCFACE_TEMPLATE, face.KPS_COLOURS, strict=True):
        mask = np.all(np.abs(crop.astype(int) - colour) < 60, axis=-1)
        ys, xs = np.nonzero(mask)
        assert len(xs) and abs(xs.mean() - x) < 1.0 and abs(ys.mean() - y) < 1.0, (colour, xs.mean(), ys.mean())


def test_the_embedding_is_512_numbers_of_norm_one_and_tells_faces_apart(models: Path) -> None:
    session = ort.InferenceSession(str(models / EMBEDDER_FILE), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(2)]
    (out,) = session.run(None, {"input.1": np.concatenate([face.embedding_input(c) for c in crops])})
    first, second = (face.normalised(e) for e in out)
    assert first.shape == (EMBEDDING_DIM,) and math.isclose(float(np.linalg.norm(first)), 1.0, rel_tol=1e-5)
    assert float(first @ second) < 0.999


def test_the_keypoint_image_is_instantids_drawing() -> None:
    keypoints = np.array([[100.0, 100.0], [200.0, 100.0], [150.0, 160.0], [110.0, 220.0], [190.0, 220.0]])
    drawn = face.draw_keypoints(320, 256, keypoints)
    assert drawn.shape == (256, 320, 3) and drawn.dtype == np.uint8
    assert not drawn[5, 5].any() and not drawn[250, 310].any()  # black around
    for (x, y), colour in zip(keypoints, face.KPS_COLOURS, strict=True):
        assert tuple(drawn[int(y), int(x)]) == colour  # a dot in the keypoint's own colour, at full brightness
    # Half way from the left eye to the nose: its limb, in the eye's colour at 60 %.
    assert tuple(drawn[130, 125]) == (153, 0, 0)
