"""Post-processing mode "refined": the exact path's labels (bicubic logits, then argmax) on real frames, at a
fraction of the work; confidence consistent with the labels; the mode is selectable everywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import require

cv2 = require("cv2")

from evit_ros.pipeline.processing import (  # noqa: E402
    POSTPROCESS_MODES,
    postprocess,
    preprocess,
    refine_labels,
    resize_logits,
)

RES = (512, 1024)
MIN_AGREEMENT = 0.9999


@pytest.fixture(scope="module")
def real_logits(b0_onnx: Path, real_frames: list[Path]) -> list[tuple[str, tuple[int, int], np.ndarray]]:
    """(name, frame size, logits) of the official B0 on two Cityscapes full-resolution and two CamVid frames."""
    from evit_ros.runtime import BackendConfig, create_backend

    backend = create_backend("onnxruntime", BackendConfig(weights=str(b0_onnx), resolution=RES, num_threads=2))
    out = []
    for frame in real_frames:
        image = cv2.imread(str(frame), cv2.IMREAD_COLOR)
        out.append((frame.name, image.shape[:2], backend.infer(preprocess(image, RES, order="bgr"))[0]))
    return out


def _exact(logits: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The official path, written out: bicubic logits, then argmax and the winner's softmax."""
    full = resize_logits(logits, size)
    e = np.exp(full - full.max(axis=0, keepdims=True))
    return full.argmax(axis=0), (1.0 / e.sum(axis=0)).astype(np.float32)


@pytest.mark.parametrize("which", ["own", "1080p", "720x960"])
def test_refined_labels_match_exact_on_real_frames(real_logits, which: str) -> None:
    for name, frame_size, logits in real_logits:
        size = {"own": frame_size, "1080p": (1080, 1920), "720x960": (720, 960)}[which]
        exact, _ = _exact(logits, size)
        labels, conf = refine_labels(logits, size)
        assert labels.shape == size and labels.dtype == np.uint8 and conf is None
        agreement = float((labels == exact).mean())
        assert agreement >= MIN_AGREEMENT, (name, size, agreement)
        # The mode through postprocess (which may hand small upsampling factors to the exact path) agrees too.
        via_mode, _ = postprocess(logits, size, "refined")
        assert float((via_mode == exact).mean()) >= MIN_AGREEMENT, (name, size)


def test_refined_confidence_is_the_probability_of_its_label(real_logits) -> None:
    name, _, logits = real_logits[0]
    size = (1080, 1920)
    exact_labels, exact_conf = _exact(logits, size)
    labels, conf = refine_labels(logits, size, return_confidence=True)
    plain, _ = refine_labels(logits, size)
    np.testing.assert_array_equal(labels, plain)  # asking for confidence does not change the labels
    assert conf.shape == size and conf.dtype == np.float32 and np.isfinite(conf).all()
    # A winning class's probability lies in [1/C, 1]; where the labels agree it is close to the exact softmax.
    assert conf.min() >= 1.0 / logits.shape[0] - 1e-6 and conf.max() <= 1.0 + 1e-6
    same = labels == exact_labels
    assert float(np.abs(conf - exact_conf)[same].mean()) < 0.01, name
    # Near boundaries (where bicubic logits were evaluated) it is the exact softmax itself.
    boundary = cv2.dilate((labels != cv2.erode(labels, np.ones((3, 3), np.uint8))).astype(np.uint8), None) > 0
    np.testing.assert_allclose(conf[boundary & same], exact_conf[boundary & same], atol=1e-4)


def test_refined_on_hard_synthetic_logits() -> None:
    """Many classes, rough logits, non-integer and sub-unity scale factors and border cells."""
    rng = np.random.default_rng(3)
    for classes, low, size in [(150, (24, 40), (700, 1000)), (19, (30, 50), (997, 1601)), (19, (64, 128), (40, 70))]:
        coarse = rng.normal(0, 4, (classes, low[0] // 4, low[1] // 4)).astype(np.float32)
        smooth = resize_logits(coarse, low)
        logits = np.ascontiguousarray(smooth + rng.normal(0, 0.5, smooth.shape), np.float32)
        exact, _ = _exact(logits, size)
        labels, _ = refine_labels(logits, size)
        assert labels.shape == size
        assert float((labels == exact).mean()) >= MIN_AGREEMENT, (classes, low, size)


@pytest.mark.parametrize("mode", POSTPROCESS_MODES)
@pytest.mark.parametrize(("classes", "size"), [(19, (700, 1000)), (19, (24, 40)), (300, (96, 160))])
def test_labels_written_into_a_given_array_are_the_returned_labels(mode: str, classes: int, size) -> None:
    """``out`` (a message's pixel buffer in the node) receives exactly the labels postprocess would return, in
    every mode, at upsampling, at network size and for uint16 label maps; a wrong ``out`` is refused."""
    rng = np.random.default_rng(classes)
    logits = resize_logits(rng.normal(0, 4, (classes, 6, 10)).astype(np.float32), (24, 40))
    labels, conf = postprocess(logits, size, mode, return_confidence=True)
    if labels.dtype == np.uint8:  # a view behind a message prefix, as in the node
        out = np.full(8 + size[0] * size[1], 255, np.uint8)[8:].reshape(size)
    else:
        out = np.full(size, 65535, np.uint16)
    got, got_conf = postprocess(logits, size, mode, return_confidence=True, out=out)
    assert got is out
    np.testing.assert_array_equal(out, labels)
    np.testing.assert_array_equal(got_conf, conf)
    strided = np.zeros((size[0], size[1] * 2), labels.dtype)[:, ::2]  # OpenCV cannot write into this one itself
    assert postprocess(logits, size, mode, out=strided)[0] is strided
    np.testing.assert_array_equal(strided, labels)
    with pytest.raises(ValueError, match="out must be"):
        postprocess(logits, size, mode, out=np.empty((size[0], size[1] + 1), labels.dtype))
    with pytest.raises(ValueError, match="out must be"):
        postprocess(logits, size, mode, out=np.empty(size, np.int32))


def test_modes_are_one_tuple_and_bad_ones_are_refused() -> None:
    assert POSTPROCESS_MODES == ("exact", "refined", "fast")
    logits = np.zeros((19, 8, 16), np.float32)
    with pytest.raises(ValueError, match="exact, refined, fast"):
        postprocess(logits, (64, 128), "bilinear")
    from evit_ros.pipeline.segmenter import Segmenter

    with pytest.raises(ValueError, match="postprocess_mode"):
        Segmenter(weights="random", allow_random_weights=True, backend="onnxruntime", postprocess_mode="nearest")


def test_cli_postprocess_flag_reaches_the_segmenter(tmp_path: Path) -> None:
    require("onnxruntime")
    require("torch")  # to export the random weights
    from evit_ros.cli.common import segmenter_from_args
    from evit_ros.cli.main import build_parser

    base = ["predict", "--weights", "random", "--backend", "onnxruntime", "--resolution", "64x128"]
    parser = build_parser(base)
    assert parser.parse_args([*base, "in", "out"]).postprocess == "exact"  # the official protocol by default
    args = parser.parse_args([*base, "--postprocess", "refined", "--engine-cache-dir", str(tmp_path), "in", "out"])
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        seg = segmenter_from_args(args)
    assert seg.postprocess_mode == "refined"
    image = np.full((480, 960, 3), 120, np.uint8)
    assert seg.segment(image).labels.shape == (480, 960)
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--postprocess", "nearest", "in", "out"])


def test_bench_frames_splits_time_and_compares_modes(real_frames: list[Path], tmp_path: Path, capsys) -> None:
    require("onnxruntime")
    require("torch")  # to export the random weights
    from evit_ros.cli.main import main

    args = ["bench", "--weights", "random", "--resolution", "64x128", "--backend", "onnxruntime", "--num-threads", "1"]
    args += ["--engine-cache-dir", str(tmp_path), "--iterations", "2", "--warmup", "0"]
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        rc = main([*args, "--frames", str(real_frames[0]), "--frame-size", "540x960"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "frame 960x540 -> labels 960x540 (p50 ms per frame)" in out
    wall = out.split("  wall time")[1].split("host CPU time")[0]
    table = [line.split() for line in wall.splitlines() if line.split()[:1] in (["host:exact"], ["host:refined"])]
    rows = {cells[0]: [float(v) for v in cells[1:]] for cells in table if len(cells) == 6}
    assert set(rows) == {"host:exact", "host:refined"}
    for pre, net, post, colour, frame in rows.values():
        assert min(pre, net, post, colour) > 0 and frame >= max(pre, net, post, colour)
    ratio = next(line for line in out.splitlines() if "host:refined / host:exact postprocess: x" in line)
    assert float(ratio.rsplit("x", 1)[1]) == pytest.approx(
        rows["host:refined"][2] / rows["host:exact"][2], rel=0.05, abs=0.002
    )
    assert "frame / network (wall): host:exact x" in out and ", host:refined x" in out
    assert "batch 1," not in out  # --frames alone times the frame path only
    assert main([*args, "--frames", str(tmp_path / "missing.png")]) == 2
    assert main([*args, "--frames", str(real_frames[0]), "--modes", "exact,nearest"]) == 2
    # ONNX Runtime takes host arrays: it has no device frame path
    assert main([*args, "--frames", str(real_frames[0]), "--frame-path", "host,device"]) == 2
    assert main([*args, "--frames", str(real_frames[0]), "--frame-path", "gpu"]) == 2
