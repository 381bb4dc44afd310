"""Backends against the PyTorch fp32 model on real frames; ONNX cache; bench CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import needs, needs_torch, optional, require

require("onnx")
require("onnxruntime")
torch = optional("torch")  # without it the tests of the exported ONNX still run
cv2 = require("cv2")

from evit_ros.network.variants import get_variant  # noqa: E402
from evit_ros.network.weights import load_model  # noqa: E402
from evit_ros.pipeline.processing import preprocess  # noqa: E402
from evit_ros.runtime import BackendConfig, create_backend  # noqa: E402

RES = (512, 1024)


@needs_torch
def test_onnxruntime_and_torch_cpu_match_pytorch_on_real_frames(
    b0_onnx: Path, b0_checkpoint: Path, real_frames: list[Path]
) -> None:
    torch.set_num_threads(2)
    model, _ = load_model(get_variant("b0-cityscapes"), b0_checkpoint)
    ort_backend = create_backend("onnxruntime", BackendConfig(weights=str(b0_onnx), resolution=RES, num_threads=2))
    torch_backend = create_backend("torch", BackendConfig(weights=str(b0_checkpoint), resolution=RES, device="cpu"))
    assert ort_backend.describe()["providers"].startswith("CPUExecutionProvider")
    assert ort_backend.checkpoint_sha256 == torch_backend.checkpoint_sha256
    for frame in real_frames:
        x = preprocess(cv2.imread(str(frame), cv2.IMREAD_COLOR), RES, order="bgr")
        with torch.inference_mode():
            ref = model(torch.from_numpy(x)).numpy()
        for backend in (ort_backend, torch_backend):
            got = backend.infer(x)
            assert got.shape == ref.shape and got.dtype == np.float32
            diff = float(np.abs(got - ref).max())
            agreement = float((got.argmax(1) == ref.argmax(1)).mean())
            assert diff <= 1e-3, (backend.name, frame.name, diff)
            assert agreement >= 0.999, (backend.name, frame.name, agreement)


@needs_torch
def test_onnxruntime_exports_once_into_the_cache(b0_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    import evit_ros.deploy.onnx_export as export

    config = dict(weights=str(b0_checkpoint), resolution=(64, 128), engine_cache_dir=str(tmp_path), num_threads=1)
    first = create_backend("onnxruntime", BackendConfig(**config))
    cached = list(tmp_path.glob("*.onnx"))
    assert cached == [first.onnx_path] and not list(tmp_path.glob(".*"))  # no temp files left
    assert "b0-cityscapes_64x128" in cached[0].name and first.checkpoint_sha256[:16] in cached[0].name

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cache holds the model")

    with monkeypatch.context() as m:
        m.setattr(export, "export_onnx", no_export)
        second = create_backend("onnxruntime", BackendConfig(**config))
    assert second.onnx_path == first.onnx_path
    x = np.zeros(second.input_shape, dtype=np.float32)
    np.testing.assert_array_equal(first.infer(x), second.infer(x))
    # A truncated cache file is noticed and replaced.
    good_size = first.onnx_path.stat().st_size
    first.onnx_path.write_bytes(first.onnx_path.read_bytes()[:1000])
    third = create_backend("onnxruntime", BackendConfig(**config))
    assert third.onnx_path == first.onnx_path and third.onnx_path.stat().st_size == good_size  # rebuilt in place
    np.testing.assert_array_equal(third.infer(x), second.infer(x))


@needs_torch
def test_onnxruntime_random_weights_are_not_cached(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        backend = create_backend(
            "onnxruntime", BackendConfig(weights="random", resolution=(64, 64), engine_cache_dir=str(tmp_path))
        )
    assert backend.infer(np.zeros(backend.input_shape, dtype=np.float32)).shape == (1, 19, 8, 8)
    assert not any(tmp_path.iterdir())


@needs("openvino", "the second runtime to compare with")
def test_onnxruntime_and_openvino_agree_on_the_exported_onnx(b0_onnx: Path, real_frames: list[Path]) -> None:
    """Where torch is absent (Humble's Python 3.10, Jazzy) the exported file is all there is: the two CPU runtimes
    give it the same logits and labels on real frames (its parity with PyTorch was checked by the export)."""
    config = dict(weights=str(b0_onnx), resolution=RES, num_threads=2)
    ort_backend = create_backend("onnxruntime", BackendConfig(**config))
    ov_backend = create_backend("openvino", BackendConfig(**config))
    for frame in real_frames:
        x = preprocess(cv2.imread(str(frame), cv2.IMREAD_COLOR), RES, order="bgr")
        a, b = ort_backend.infer(x), ov_backend.infer(x)
        assert a.shape == b.shape == (1, 19, RES[0] // 8, RES[1] // 8) and a.dtype == b.dtype == np.float32
        assert float(np.abs(a - b).max()) <= 1e-3, frame.name
        assert float((a.argmax(1) == b.argmax(1)).mean()) >= 0.999, frame.name
        assert len(np.unique(a.argmax(1))) >= 3  # a real scene, not a constant map


def test_onnxruntime_rejects_mismatches(b0_onnx: Path) -> None:
    with pytest.raises(ValueError, match="512x1024|resolution"):
        create_backend("onnxruntime", BackendConfig(weights=str(b0_onnx), resolution=(256, 512)))
    with pytest.raises(ValueError, match="fp32 only"):
        create_backend("onnxruntime", BackendConfig(weights=str(b0_onnx), resolution=RES, precision="fp16"))


def test_auto_backend_on_cpu_is_openvino_else_onnxruntime(monkeypatch) -> None:
    import importlib.util

    from evit_ros.runtime import resolve_backend_name

    if torch is not None and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert resolve_backend_name("auto") == ("openvino" if importlib.util.find_spec("openvino") else "onnxruntime")
    monkeypatch.setitem(sys.modules, "openvino", None)  # Python's way to make a package unimportable
    assert resolve_backend_name("auto") == "onnxruntime"


@needs_torch
def test_bench_compare_prints_percentiles_and_ratios(capsys) -> None:
    from evit_ros.cli.main import main

    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        rc = main(
            [
                "bench",
                "--model",
                "b0-cityscapes",
                "--weights",
                "random",
                "--resolution",
                "64x128",
                "--compare",
                "torch,onnxruntime",
                "--iterations",
                "3",
                "--warmup",
                "1",
                "--num-threads",
                "1",
            ]
        )
    assert rc == 0
    out = capsys.readouterr().out
    assert "p50 ms" in out and "p90 ms" in out and "img/s" in out and "peak RSS MiB" in out
    assert "onnxruntime vs torch: p50 latency x" in out
    rows = [line.split()[:3] for line in out.splitlines()]
    assert ["torch", "fp32", "cpu"] in rows and ["onnxruntime", "fp32", "cpu"] in rows


def test_bench_requires_weights(capsys) -> None:
    from evit_ros.cli.main import main

    assert main(["bench", "--model", "b0-cityscapes", "--resolution", "64x128", "--backend", "onnxruntime"]) == 2
    assert "--weights is required" in capsys.readouterr().err


def test_batching_pays_only_on_gpu_backends() -> None:
    from evit_ros.runtime import batching_pays

    assert not batching_pays("onnxruntime") and not batching_pays("openvino")
    assert not batching_pays("torch", "cpu")
    assert batching_pays("tensorrt")  # a GPU backend by definition; the name alone decides
    assert batching_pays("torch", "cuda") == (torch is not None and torch.cuda.is_available())
