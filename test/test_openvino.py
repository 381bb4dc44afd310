"""OpenVINO backend: parity with PyTorch fp32 on real frames, model cache, the reduced-precision gate, bench."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_torch, optional, require

ov = require("openvino")
require("onnx")
torch = optional("torch")  # without it the tests of the exported ONNX still run
cv2 = require("cv2")

from evit_ros.network.variants import get_variant  # noqa: E402
from evit_ros.network.weights import load_model  # noqa: E402
from evit_ros.pipeline.processing import preprocess  # noqa: E402
from evit_ros.runtime import BackendConfig, create_backend  # noqa: E402

RES = (512, 1024)


@needs_torch
def test_openvino_matches_pytorch_on_real_frames(b0_onnx: Path, b0_checkpoint: Path, real_frames: list[Path]) -> None:
    torch.set_num_threads(2)
    model, sha = load_model(get_variant("b0-cityscapes"), b0_checkpoint)
    backend = create_backend("openvino", BackendConfig(weights=str(b0_onnx), resolution=RES, num_threads=2))
    info = backend.describe()
    assert info["device"] == "CPU" and "float32" in info["inference_precision"]  # pinned, not the CPU's bf16 default
    assert backend.checkpoint_sha256 == sha
    for frame in real_frames:
        x = preprocess(cv2.imread(str(frame), cv2.IMREAD_COLOR), RES, order="bgr")
        with torch.inference_mode():
            ref = model(torch.from_numpy(x)).numpy()
        got = backend.infer(x)
        assert got.shape == ref.shape and got.dtype == np.float32
        diff = float(np.abs(got - ref).max())
        agreement = float((got.argmax(1) == ref.argmax(1)).mean())
        assert diff <= 1e-3, (frame.name, diff)
        assert agreement >= 0.999, (frame.name, agreement)
    again = backend.infer(x)
    np.testing.assert_array_equal(again, got)  # the result is not the request's reused buffer


@needs_torch
def test_openvino_cache_follows_the_onnx(b0_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    import evit_ros.deploy.onnx_export as export

    config = dict(weights=str(b0_checkpoint), resolution=(64, 128), engine_cache_dir=str(tmp_path), num_threads=1)
    first = create_backend("openvino", BackendConfig(**config))
    assert first.onnx_path.parent == tmp_path and first.cache_dir.parent == tmp_path / "openvino"
    blobs = sorted(first.cache_dir.iterdir())
    assert blobs, "OpenVINO wrote no compiled model into its cache"
    x = preprocess(np.full((64, 128, 3), 90, np.uint8), (64, 128))

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cache holds the model")

    with monkeypatch.context() as m:
        m.setattr(export, "export_onnx", no_export)
        second = create_backend("openvino", BackendConfig(**config))
    assert second.cache_dir == first.cache_dir and sorted(second.cache_dir.iterdir()) == blobs  # reused
    np.testing.assert_array_equal(first.infer(x), second.infer(x))

    # A user's .onnx rewritten in place with another model compiles afresh: the cache folder follows its content.
    user = tmp_path / "user" / "model.onnx"
    user.parent.mkdir()
    shutil.copy(first.onnx_path, user)
    trained = create_backend(
        "openvino",
        BackendConfig(weights=str(user), resolution=(64, 128), num_threads=1, engine_cache_dir=str(tmp_path)),
    )
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        random = create_backend(
            "onnxruntime", BackendConfig(weights="random", resolution=(64, 128), engine_cache_dir=str(tmp_path))
        )
    shutil.copy(random.onnx_path, user)
    rewritten = create_backend(
        "openvino",
        BackendConfig(weights=str(user), resolution=(64, 128), num_threads=1, engine_cache_dir=str(tmp_path)),
    )
    assert rewritten.cache_dir != trained.cache_dir
    np.testing.assert_allclose(rewritten.infer(x), random.infer(x), atol=1e-4)
    assert not np.allclose(rewritten.infer(x), trained.infer(x), atol=1e-2)


def _independent_agreement(onnx: Path, frames: list[np.ndarray], hint) -> float:
    """Label agreement of OpenVINO at `hint` with f32, straight through the OpenVINO API (not the backend)."""
    import openvino.properties.hint as hints

    core = ov.Core()
    reduced = core.compile_model(str(onnx), "CPU", {hints.inference_precision: hint})
    full = core.compile_model(str(onnx), "CPU", {hints.inference_precision: ov.Type.f32})
    agree = total = 0
    for x in frames:
        a = reduced(x)[0].argmax(1)
        b = full(x)[0].argmax(1)
        agree += int((a == b).sum())
        total += b.size
    return agree / total


def test_reduced_precision_gate_refuses_what_fails_it(b0_onnx: Path, shared_data: Path) -> None:
    folder = shared_data / "cityscapes" / "fullres_unlabeled"
    files = sorted(folder.glob("*.png"))[:4]
    frames = [preprocess(cv2.imread(str(f), cv2.IMREAD_COLOR), RES, order="bgr") for f in files]
    measured = _independent_agreement(b0_onnx, frames, ov.Type.bf16)
    if measured == 1.0:
        pytest.skip("this CPU runs the bf16 hint without changing any label (no bf16 arithmetic here)")
    base = dict(weights=str(b0_onnx), resolution=RES, num_threads=2, precision="bf16")
    gate = {"gate_images": str(folder), "gate_frames": len(files)}
    # A minimum just above what bf16 reaches on these frames is refused, with the measured agreement.
    with pytest.raises(ValueError, match="failed the accuracy gate") as refused:
        create_backend(
            "openvino", BackendConfig(**base, options={**gate, "min_label_agreement": min(1.0, measured + 1e-3)})
        )
    reported = float(str(refused.value).split("label agreement ")[1].split("%")[0]) / 100
    assert reported == pytest.approx(measured, abs=1e-4)
    # Just below it, the same configuration is accepted.
    accepted = create_backend(
        "openvino", BackendConfig(**base, options={**gate, "min_label_agreement": measured - 1e-3})
    )
    assert accepted.gate is not None and accepted.gate.passed
    assert accepted.gate.label_agreement == pytest.approx(measured, abs=1e-4)
    assert "bfloat16" in accepted.describe()["inference_precision"]


def test_openvino_rejects_what_it_cannot_run(b0_onnx: Path) -> None:
    with pytest.raises(ValueError, match="int8"):
        create_backend("openvino", BackendConfig(weights=str(b0_onnx), resolution=RES, precision="int8"))
    with pytest.raises(ValueError, match="CUDA"):
        create_backend("openvino", BackendConfig(weights=str(b0_onnx), resolution=RES, device="cuda"))
    if "NPU" not in ov.Core().available_devices:
        with pytest.raises(ValueError, match="not available"):
            create_backend("openvino", BackendConfig(weights=str(b0_onnx), resolution=RES, device="npu"))
    with pytest.raises(ValueError, match="512x1024|resolution"):
        create_backend("openvino", BackendConfig(weights=str(b0_onnx), resolution=(256, 512)))
    with pytest.raises(FileNotFoundError):
        create_backend("openvino", BackendConfig(weights=str(b0_onnx.parent / "missing.onnx"), resolution=RES))


@needs_torch
def test_openvino_rejects_a_labels_head_onnx(tmp_path: Path) -> None:
    from evit_ros.cli.main import main

    labels = tmp_path / "labels.onnx"
    args = ["export", "--weights", "random", "--resolution", "64x128", "--head", "labels", "--no-parity"]
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        assert main([*args, str(labels)]) == 0
    with pytest.raises(ValueError, match="outputs labels; the openvino backend needs a logits model"):
        create_backend("openvino", BackendConfig(weights=str(labels), resolution=(64, 128)))


def test_auto_backend_on_cpu_prefers_openvino() -> None:
    from evit_ros.runtime import resolve_backend_name

    if torch is not None and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert resolve_backend_name("auto") == "openvino"


@needs_torch
def test_bench_compare_openvino_onnxruntime_torch(capsys) -> None:
    from evit_ros.cli.main import main

    args = ["bench", "--weights", "random", "--resolution", "64x128", "--iterations", "3", "--warmup", "1"]
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        rc = main([*args, "--num-threads", "1", "--compare", "openvino,onnxruntime,torch", "--block", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "backends take turns in blocks, each turn after one untimed run" in out
    rows: dict[str, list[str]] = {}
    for line in out.splitlines():
        if line.split():
            rows.setdefault(line.split()[0], line.split())  # the table comes before the ratio lines
    assert rows["openvino"][1:3] == ["fp32", "CPU"] and rows["onnxruntime"][1:3] == ["fp32", "cpu"]
    p50 = {name: float(rows[name][3]) for name in ("openvino", "onnxruntime", "torch")}
    ratio = [line for line in out.splitlines() if line.startswith("openvino / onnxruntime: p50 latency x")]
    assert len(ratio) == 1
    # The printed p50s are rounded to 0.01 ms (sub-millisecond here), so the check allows for that rounding.
    assert float(ratio[0].rsplit("x", 1)[1]) == pytest.approx(p50["openvino"] / p50["onnxruntime"], rel=0.1, abs=0.02)


def test_bench_turns_split_the_timed_runs() -> None:
    from evit_ros.cli.bench import _turns
    from evit_ros.cli.main import main

    assert _turns(25, 10) == [10, 10, 5] and _turns(3, 10) == [3] and _turns(4, 1) == [1, 1, 1, 1]
    assert sum(_turns(50, 7)) == 50
    assert main(["bench", "--weights", "random", "--block", "0"]) == 2
