"""Segmenter.segment_batch: several images of different sizes and channel orders in batched network calls give
what one Segmenter.segment call per image gives (real weights, real CamVid frames)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")

from evit_ros.pipeline.segmenter import Segmenter  # noqa: E402

RESOLUTION = "128x256"


@pytest.fixture(scope="module")
def images(camvid_pairs) -> tuple[list[np.ndarray], list[str]]:
    """Three frames: 480x360 BGR, 320x240 RGB, 640x480 BGR."""
    frames = [cv2.imread(str(img), cv2.IMREAD_COLOR) for img, _ in camvid_pairs[:3]]
    small_rgb = cv2.cvtColor(cv2.resize(frames[1], (320, 240), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    big = cv2.resize(frames[2], (640, 480), interpolation=cv2.INTER_LINEAR)
    return [frames[0], small_rgb, big], ["bgr", "rgb", "bgr"]


@pytest.fixture(scope="module")
def single(b0_checkpoint):
    seg = Segmenter("b0-cityscapes", b0_checkpoint, RESOLUTION, backend="torch", num_threads=1)
    yield seg
    seg.close()


def _check_against_single(batched: Segmenter, single: Segmenter, images, orders, exact: bool) -> None:
    sizes = [None, "network", (100, 150)]
    got = batched.segment_batch(images, orders, sizes, return_confidence=True, return_logits=True)
    assert len(got) == len(images)
    for image, order, size, result in zip(images, orders, sizes, got, strict=True):
        want = single.segment(image, order=order, output_size=size, return_confidence=True, return_logits=True)
        assert result.labels.shape == want.labels.shape == single.output_size(image.shape[:2], size)
        if exact:
            np.testing.assert_array_equal(result.logits, want.logits)
            np.testing.assert_array_equal(result.labels, want.labels)
        else:
            assert np.abs(result.logits - want.logits).max() < 1e-3
            assert (result.labels == want.labels).mean() >= 0.999
        assert np.allclose(result.confidence, want.confidence, atol=1e-3)


def test_torch_batch_equals_one_at_a_time(b0_checkpoint, single, images):
    seg = Segmenter("b0-cityscapes", b0_checkpoint, RESOLUTION, backend="torch", num_threads=1, batch_size=3)
    assert seg.max_batch == 3 and seg.backend.dynamic_batch
    _check_against_single(seg, single, *images, exact=True)
    # more images than the batch: split into network calls of at most max_batch
    twice = seg.logits_batch([*images[0], *images[0]], [*images[1], *images[1]])
    assert twice.shape[0] == 6
    np.testing.assert_array_equal(twice[:3], twice[3:])


def test_onnxruntime_dynamic_batch(b0_checkpoint, single, images):
    pytest.importorskip("onnxruntime")
    seg = Segmenter("b0-cityscapes", b0_checkpoint, RESOLUTION, backend="onnxruntime", num_threads=1, batch_size=3)
    assert seg.max_batch == 3 and seg.backend.dynamic_batch
    assert "bdyn" in seg.describe()["onnx"]
    _check_against_single(seg, single, *images, exact=False)


def test_openvino_dynamic_batch(b0_checkpoint, single, images):
    pytest.importorskip("openvino", reason="openvino is not installed")
    seg = Segmenter("b0-cityscapes", b0_checkpoint, RESOLUTION, backend="openvino", num_threads=1, batch_size=3)
    assert seg.max_batch == 3 and seg.backend.dynamic_batch
    _check_against_single(seg, single, *images, exact=False)
    one = seg.logits_batch(images[0][:1], images[1][:1])  # a partial batch runs as it is
    assert one.shape[0] == 1


def test_fixed_batch_onnx_is_padded_and_chunked(b0_checkpoint, single, images, tmp_path):
    """An ONNX file with a fixed batch of 2: three images run as 2 + (1 padded to 2), the file's batch wins."""
    pytest.importorskip("onnxruntime")
    from evit_ros.deploy.onnx_export import export_onnx
    from evit_ros.network.variants import get_variant
    from evit_ros.network.weights import load_model

    variant = get_variant("b0-cityscapes")
    model, sha = load_model(variant, str(b0_checkpoint))
    path = tmp_path / "b0_batch2.onnx"
    export_onnx(model, variant, (128, 256), path, checkpoint_sha256=sha, batch_size=2)
    seg = Segmenter("b0-cityscapes", str(path), RESOLUTION, backend="onnxruntime", num_threads=1, batch_size=4)
    assert seg.max_batch == 2 and not seg.backend.dynamic_batch
    _check_against_single(seg, single, *images, exact=False)


def test_mismatched_arguments(single, images):
    with pytest.raises(ValueError, match="channel orders"):
        single.logits_batch(images[0], ["bgr"])
    with pytest.raises(ValueError, match="output sizes"):
        single.segment_batch(images[0], images[1], [None])
    with pytest.raises(ValueError, match="no images"):
        single.logits_batch([], [])
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        single.logits_batch([images[0][0], np.zeros((4, 4), np.uint8)], "bgr")
