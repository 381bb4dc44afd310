"""TensorRT: engine cache key, build config and accuracy gate without TensorRT; engines only where it runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from evit_ros.deploy.accuracy_gate import accuracy_gate
from evit_ros.deploy.tensorrt_build import (
    EngineBuildConfig,
    engine_cache_key,
    engine_cache_root,
    engine_path,
    is_attention_layer,
)


def _trt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
        import torch
    except Exception:
        return False
    return torch.cuda.is_available()


needs_trt = pytest.mark.skipif(not _trt_available(), reason="TensorRT with a CUDA device is not available")

BASE = dict(
    onnx_sha256="a" * 64,
    tensorrt_version="10.3.0",
    gpu_name="Orin",
    compute_capability=(8, 7),
    build=EngineBuildConfig(precision="fp16", fp32_pins=("/x/linear_attention/MatMul", "/x/linear_attention/Div")),
    input_shape=(1, 3, 1024, 2048),
)


def test_engine_cache_key_is_deterministic_and_sensitive() -> None:
    key = engine_cache_key(**BASE)
    assert key == engine_cache_key(**BASE) and len(key) == 64
    build = BASE["build"]
    changes = {
        "onnx_sha256": "b" * 64,
        "tensorrt_version": "10.4.0",
        "gpu_name": "NVIDIA H100",
        "compute_capability": (9, 0),
        "input_shape": (1, 3, 512, 1024),
        "build": dataclasses.replace(build, precision="fp32", fp32_pins=()),
    }
    for name, value in changes.items():
        assert engine_cache_key(**{**BASE, name: value}) != key, name
    for field, value in {
        "fp32_pins": build.fp32_pins[:1],
        "workspace_mib": 4096,
        "tf32": True,
        "dla_core": 0,
        "strongly_typed": True,
        "builder_optimization_level": 5,
    }.items():
        assert engine_cache_key(**{**BASE, "build": dataclasses.replace(build, **{field: value})}) != key, field
    # Order of pins and the accuracy gate's settings do not change the engine.
    same = dataclasses.replace(build, fp32_pins=build.fp32_pins[::-1], min_label_agreement=0.5, gate_frames=9)
    assert engine_cache_key(**{**BASE, "build": same}) == key


def test_build_config_validation() -> None:
    assert EngineBuildConfig().tf32 is False and EngineBuildConfig().min_label_agreement == 0.99
    with pytest.raises(ValueError, match="calibration"):
        EngineBuildConfig(precision="int8")
    with pytest.raises(ValueError, match="fp16"):
        EngineBuildConfig(precision="fp32", strongly_typed=True)
    with pytest.raises(ValueError):
        EngineBuildConfig(precision="bf16")
    assert not EngineBuildConfig(precision="fp32").needs_gate and EngineBuildConfig().needs_gate


def test_engine_cache_location_is_persistent(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EVIT_ROS_CACHE", str(tmp_path / "cache"))
    root = engine_cache_root()
    assert root == tmp_path / "cache" / "tensorrt"
    assert engine_cache_root(str(tmp_path / "x")) == tmp_path / "x"
    path = engine_path(root, "b0-cityscapes", "fp16", "f" * 64)
    assert path.parent == root and path.name.startswith("b0-cityscapes_fp16_") and path.suffix == ".engine"


def test_attention_layer_selection_by_name() -> None:
    pins = frozenset({"/model/backbone/stages.3/op_list.1/context_module/main/linear_attention/MatMul"})
    assert is_attention_layer("/model/backbone/stages.3/op_list.1/context_module/main/linear_attention/MatMul", pins)
    assert is_attention_layer("/backbone/stages.2/op_list.1/context_module/main/linear_attention/Pad_1", pins)
    assert not is_attention_layer("/backbone/stages.3/op_list.1/context_module/main/qkv/conv/Conv", pins)
    assert not is_attention_layer("/head/input_ops.0/op_list.1/Resize", pins)


def test_accuracy_gate_rejects_nan_and_disagreement() -> None:
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((1, 4, 8, 8), dtype=np.float32) for _ in range(2)]

    def identity(x):
        return x

    ok = accuracy_gate(lambda x: x + 1e-3, identity, batches, 0.99)
    assert ok.passed and ok.nonfinite == 0 and ok.label_agreement == 1.0
    nan = accuracy_gate(lambda x: np.where(x > 2, np.nan, x), identity, batches, 0.99)
    assert not nan.passed and nan.nonfinite > 0
    shuffled = accuracy_gate(lambda x: x[:, ::-1], identity, batches, 0.99)
    assert not shuffled.passed and shuffled.label_agreement < 0.99


def test_build_engine_cli_without_tensorrt(capsys) -> None:
    if _trt_available():
        pytest.skip("TensorRT is installed")
    from evit_ros.cli.main import main

    rc = main(["build-engine", "--model", "b0-cityscapes", "--weights", "random", "--resolution", "256x512"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "TensorRT is not available" in err and "--backend torch" in err


@needs_trt
@pytest.mark.parametrize("options", [{}, {"strongly_typed": True}])
def test_tensorrt_fp16_engine_matches_fp32(
    b0_checkpoint: Path, real_frames: list[Path], tmp_path: Path, options
) -> None:
    import cv2

    from evit_ros.runtime import BackendConfig, create_backend

    res = (512, 1024)
    frames = tmp_path / "frames"
    frames.mkdir()
    for f in real_frames:
        (frames / f.name).write_bytes(f.read_bytes())
    config = BackendConfig(
        weights=str(b0_checkpoint),
        resolution=res,
        precision="fp16",
        engine_cache_dir=str(tmp_path / "cache"),
        options={**options, "gate_images": str(frames)},
    )
    trt_backend = create_backend("tensorrt", config)  # builds, gates, caches
    assert trt_backend.engine_info.path.is_file()
    ref = create_backend(
        "onnxruntime",
        BackendConfig(weights=str(b0_checkpoint), resolution=res, engine_cache_dir=str(tmp_path / "cache")),
    )
    for f in real_frames:
        x = preprocess_frame(cv2, f, res)
        got, want = trt_backend.infer(x), ref.infer(x)
        assert np.isfinite(got).all()
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.99
    again = create_backend("tensorrt", BackendConfig(**{**config.__dict__, "options": dict(config.options)}))
    assert again.engine_info.path == trt_backend.engine_info.path


@needs_trt
def test_tensorrt_rebuilds_corrupt_engine(b0_checkpoint: Path, tmp_path: Path, caplog) -> None:
    from evit_ros.runtime import BackendConfig, create_backend

    config = dict(weights=str(b0_checkpoint), resolution=(256, 512), precision="fp32", engine_cache_dir=str(tmp_path))
    first = create_backend("tensorrt", BackendConfig(**config))
    first.engine_info.path.write_bytes(b"not an engine")
    second = create_backend("tensorrt", BackendConfig(**config))
    assert "rebuilding" in caplog.text
    x = np.zeros(second.input_shape, dtype=np.float32)
    assert np.isfinite(second.infer(x)).all()


def preprocess_frame(cv2, path: Path, res) -> np.ndarray:
    from evit_ros.pipeline.processing import preprocess

    return preprocess(cv2.imread(str(path), cv2.IMREAD_COLOR), res, order="bgr")
