"""Pre-processing against the official formula written out: RGB, INTER_CUBIC resize, /255, ImageNet mean/std,
NCHW float32, for either channel order and with or without a caller's output buffer."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require

cv2 = require("cv2")

from evit_ros.pipeline.processing import IMAGENET_MEAN, IMAGENET_STD, preprocess  # noqa: E402


def _official(rgb: np.ndarray, resolution: tuple[int, int]) -> np.ndarray:
    if rgb.shape[:2] != resolution:
        rgb = cv2.resize(rgb, resolution[::-1], interpolation=cv2.INTER_CUBIC)
    x = (rgb.astype(np.float64) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    return x.transpose(2, 0, 1)[None].astype(np.float32)


SIZES = [((1080, 1920), (512, 1024)), ((360, 480), (384, 512)), ((64, 96), (64, 96))]


@pytest.mark.parametrize("shape,resolution", SIZES)
def test_preprocess_matches_the_formula(shape: tuple[int, int], resolution: tuple[int, int]) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ref = _official(rgb, resolution)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    buffer = np.full((1, 3, *resolution), np.nan, dtype=np.float32)
    results = [preprocess(rgb, resolution), preprocess(bgr, resolution, order="bgr")]
    results.append(preprocess(rgb, resolution, out=buffer))
    for got in results:
        assert got.shape == (1, 3, *resolution) and got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_allclose(got, ref, atol=1e-5)
    assert preprocess(bgr, resolution, order="bgr", out=buffer) is buffer
    np.testing.assert_allclose(buffer, ref, atol=1e-5)
    view = np.concatenate([rgb, rgb[:, :, :1]], axis=2)[:, :, :3]  # a non-contiguous view
    np.testing.assert_allclose(preprocess(view, resolution), ref, atol=1e-5)
    with pytest.raises(ValueError, match="order"):
        preprocess(rgb, resolution, order="rgba")


def test_numpy_path_where_opencv_lacks_blob_params(monkeypatch) -> None:
    import evit_ros.pipeline.processing as processing

    rgb = np.random.default_rng(2).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    monkeypatch.setattr(processing, "_blob_params", lambda order: None)  # as on OpenCV < 4.9
    got = preprocess(rgb[:, :, ::-1], (96, 128), order="bgr")
    np.testing.assert_allclose(got, _official(rgb, (96, 128)), atol=1e-5)
