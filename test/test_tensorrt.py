"""TensorRT: engine cache key, build config, accuracy gate and engine lifecycle without TensorRT; engines only where it
runs. Tests using ``trt_callrecorder`` check call sequences against a recording stand-in: not TensorRT coverage.
"""

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
@pytest.mark.parametrize("options", [{}, {"typing": "strong"}, {"typing": "weak"}])
def test_tensorrt_fp16_engine_matches_fp32(
    b0_checkpoint: Path, real_frames: list[Path], tmp_path: Path, options
) -> None:
    import cv2
    import tensorrt as trt

    from evit_ros.deploy.tensorrt_build import parse_version
    from evit_ros.runtime import BackendConfig, create_backend

    major = parse_version(trt.__version__)[0]
    if (options.get("typing") == "weak" and major >= 11) or (options.get("typing") == "strong" and major < 10):
        pytest.skip(f"typing {options['typing']} is not available on TensorRT {trt.__version__}")
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


# --------------------------------------------------------------------------------------------
# Issue 10: what can be checked without TensorRT.


def test_dla_is_validated_up_front() -> None:
    from evit_ros.runtime import BackendConfig, create_backend

    assert EngineBuildConfig(precision="fp16", dla_core=0).dla_core == 0
    with pytest.raises(ValueError, match="DLA runs fp16 and int8 only"):
        EngineBuildConfig(precision="fp32", dla_core=0)
    with pytest.raises(ValueError, match="GPU fallback"):
        EngineBuildConfig(precision="fp16", dla_core=0, gpu_fallback=False)
    with pytest.raises(ValueError, match=">= 0"):
        EngineBuildConfig(precision="fp16", dla_core=-2)
    with pytest.raises(ValueError, match="0..5"):
        EngineBuildConfig(builder_optimization_level=6)
    # The backend refuses before it needs TensorRT, so the error is the same on every machine.
    with pytest.raises(ValueError, match="DLA runs fp16 and int8 only"):
        create_backend("tensorrt", BackendConfig(weights="random", precision="fp32", options={"dla_core": 0}))


def test_build_engine_cli_rejects_fp32_on_dla(capsys) -> None:
    from evit_ros.cli.main import main

    args = ["build-engine", "--weights", "random", "--resolution", "64x128", "--dla-core", "0", "--precision", "fp32"]
    rc = main(args)
    assert rc == 1 and "DLA runs fp16 and int8 only" in capsys.readouterr().err


def _write_images(folder: Path, seeds: list[int]) -> None:
    import cv2

    folder.mkdir(parents=True)
    for i, seed in enumerate(seeds):
        img = np.random.default_rng(seed).integers(0, 256, (16, 32, 3), dtype=np.uint8)
        assert cv2.imwrite(str(folder / f"img{i}.png"), img)


def test_calibration_key_hashes_image_contents(tmp_path: Path) -> None:
    import shutil

    _write_images(tmp_path / "a", [1, 2, 3])
    shutil.copytree(tmp_path / "a", tmp_path / "moved")
    _write_images(tmp_path / "edited", [1, 2, 4])

    def key(folder: str, count: int = 64) -> str:
        build = EngineBuildConfig(precision="int8", calibration_dir=str(tmp_path / folder), calibration_images=count)
        return engine_cache_key(**{**BASE, "build": build})

    assert key("a") == key("moved")  # same images elsewhere: same engine
    assert key("a") != key("edited")  # same folder layout, one image changed
    assert key("a") != key("a", count=2)  # fewer images used
    assert key("a", count=3) == key("a", count=64)  # only the images actually used count


def _trt_graph() -> list:
    """The 10.x parser's layers around a LiteMLA epsilon add: constant -> ONNXTRT_Broadcast shuffle -> Add."""
    from evit_ros.deploy.tensorrt_build import LayerNode

    scope = "/model/backbone/stages.3/op_list.1/context_module/main"
    return [
        LayerNode(f"{scope}/qkv/conv/Conv", "CONVOLUTION", ("x",), ("qkv",), (True,)),
        LayerNode(f"{scope}/linear_attention/ReduceSum", "REDUCE", ("qkv",), ("sum",), (True,)),
        LayerNode("(Unnamed Layer* 7) [Constant]", "CONSTANT", (), ("eps",), (True,)),
        LayerNode("shape_concat", "CONCATENATION", (), ("dims",), (False,)),  # int64 shape tensor
        LayerNode("ONNXTRT_Broadcast_12", "SHUFFLE", ("eps", "dims"), ("eps4d",), (True,)),
        LayerNode(f"{scope}/linear_attention/Add", "ELEMENTWISE", ("sum", "eps4d"), ("den",), (True,)),
        LayerNode(f"{scope}/linear_attention/Constant_3", "CONSTANT", (), ("c3",), (True,)),
        LayerNode("/head/Resize", "RESIZE", ("den",), ("out",), (True,)),
    ]


def test_fp32_pins_follow_connectivity_to_the_epsilon() -> None:
    from evit_ros.deploy.tensorrt_build import select_fp32_layers

    scope = "/model/backbone/stages.3/op_list.1/context_module/main/linear_attention"
    selected = select_fp32_layers(_trt_graph(), frozenset({f"{scope}/Add", f"{scope}/ReduceSum"}))
    assert selected == [
        f"{scope}/ReduceSum",
        "(Unnamed Layer* 7) [Constant]",
        "ONNXTRT_Broadcast_12",
        f"{scope}/Add",
    ]
    # Not the convolution feeding the core, not the shape arithmetic, not a constant nothing pinned consumes.


def test_fp32_pins_select_the_epsilon_of_the_exported_graph(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("torch")
    from onnx import numpy_helper

    from evit_ros.deploy.onnx_export import export_onnx
    from evit_ros.deploy.onnx_graph import fp32_pin_nodes, layer_graph
    from evit_ros.deploy.tensorrt_build import select_fp32_layers
    from evit_ros.network.variants import get_variant
    from evit_ros.network.weights import load_model

    variant = get_variant("b0-cityscapes")
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        model, _ = load_model(variant, "random")
    path = export_onnx(model, variant, (64, 128), tmp_path / "b0.onnx", parity=False).path
    proto = onnx.load(str(path))
    selected = set(select_fp32_layers(layer_graph(proto), frozenset(fp32_pin_nodes(proto))))
    producer = {out: node for node in proto.graph.node for out in node.output}
    adds = [n for n in proto.graph.node if n.op_type == "Add" and "/linear_attention/" in n.name]
    assert adds, "no attention-core Add in the exported graph"
    epsilons = []
    for add in adds:
        for name in add.input:
            node = producer.get(name)
            if node is not None and node.op_type == "Constant":
                value = numpy_helper.to_array(node.attribute[0].t)
                if value.size == 1 and float(value) == pytest.approx(1e-15, rel=1e-3):
                    epsilons.append(node.name)
    assert len(epsilons) == len(adds)  # one epsilon per attention core
    assert set(epsilons) <= selected and {a.name for a in adds} <= selected
    assert not any(n.op_type == "Conv" and n.name in selected for n in proto.graph.node)


@pytest.mark.parametrize(
    ("version", "precision", "typing", "strong", "warns"),
    [
        ("8.6.1", "fp16", "auto", False, False),
        ("9.3.0", "fp16", "auto", False, False),
        ("10.0.1", "fp16", "auto", True, False),
        ("10.3.0", "fp16", "auto", True, False),
        ("10.3.0", "fp16", "weak", False, False),
        ("10.12.0", "fp16", "weak", False, True),
        ("11.0.0", "fp16", "auto", True, False),
        ("10.3.0", "int8", "auto", False, True),
        ("8.6.1", "int8", "auto", False, False),
        ("8.6.1", "fp32", "auto", False, False),
        ("11.1.0", "fp32", "auto", False, False),
    ],
)
def test_precision_route_by_version(version, precision, typing, strong, warns) -> None:
    import sys

    from evit_ros.deploy.tensorrt_build import select_precision_route

    route = select_precision_route(version, precision, typing)
    assert route.strongly_typed is strong
    assert route.weak_flags is (precision != "fp32" and not strong)
    assert bool(route.warnings) is warns
    if not _trt_available():
        assert "tensorrt" not in sys.modules  # decided from the version string alone


@pytest.mark.parametrize(
    ("version", "precision", "typing", "match"),
    [
        ("11.0.0", "int8", "auto", "Q/DQ"),
        ("11.0.0", "fp16", "weak", "removed in TensorRT 11"),
        ("9.3.0", "fp16", "strong", "TensorRT >= 10"),
        ("8.5.3", "fp16", "auto", "8.6 or newer"),
        ("ten", "fp16", "auto", "unrecognised"),
    ],
)
def test_precision_route_refusals(version, precision, typing, match) -> None:
    from evit_ros.deploy.tensorrt_build import select_precision_route

    with pytest.raises(ValueError, match=match):
        select_precision_route(version, precision, typing)


def test_logger_threshold_follows_python_logging() -> None:
    import logging

    from evit_ros.deploy.tensorrt_build import SEVERITY_RANK, min_trt_severity

    assert min_trt_severity(logging.DEBUG) == "INFO"
    assert min_trt_severity(logging.DEBUG, verbose=True) == "VERBOSE"
    assert min_trt_severity(logging.INFO) == "WARNING"
    assert min_trt_severity(logging.ERROR) == "ERROR"
    assert sorted(SEVERITY_RANK, key=SEVERITY_RANK.get) == ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"]


def test_engine_dtypes_map_to_torch_or_fail_clearly() -> None:
    torch = pytest.importorskip("torch")
    from evit_ros.deploy.tensorrt_build import TORCH_DTYPE_OF_TRT, torch_dtype_name

    expected = {"INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8, "BF16": torch.bfloat16}
    for trt_name, dtype in expected.items():
        assert getattr(torch, torch_dtype_name(trt_name)) is dtype
    assert all(isinstance(getattr(torch, name), torch.dtype) for name in TORCH_DTYPE_OF_TRT.values())
    with pytest.raises(ValueError, match="FP8.*cannot bind"):
        torch_dtype_name("FP8", "logits")


def test_optimization_profile_shape() -> None:
    from evit_ros.deploy.tensorrt_build import profile_shape

    assert profile_shape("input", (-1, 3, 512, 1024), (2, 3, 512, 1024)) == (2, 3, 512, 1024)
    assert profile_shape("input", (1, 3, 512, 1024), (1, 3, 512, 1024)) is None  # static: no profile
    with pytest.raises(ValueError, match="does not fit"):
        profile_shape("input", (-1, 3, 512, 1024), (1, 3, 1024, 2048))


def test_labels_head_onnx_is_rejected_where_logits_are_needed(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    from evit_ros.deploy.onnx_export import export_onnx
    from evit_ros.network.variants import get_variant
    from evit_ros.network.weights import load_model
    from evit_ros.runtime import BackendConfig, create_backend

    variant = get_variant("b0-cityscapes")
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        model, _ = load_model(variant, "random")
    labels = export_onnx(model, variant, (64, 128), tmp_path / "labels.onnx", head="labels", parity=False).path
    for backend in ("tensorrt", "onnxruntime"):
        config = BackendConfig(weights=str(labels), resolution=(64, 128), precision="fp32")
        with pytest.raises(ValueError, match="outputs labels.*logits"):
            create_backend(backend, config)


def test_device_strings() -> None:
    from evit_ros.runtime.devices import parse_device

    assert parse_device(None) == ("", None) and parse_device("") == ("", None)
    assert parse_device("cpu") == ("cpu", None)
    assert parse_device("cuda") == ("cuda", None) and parse_device("CUDA:1") == ("cuda", 1)
    for bad in ("gpu", "cuda:x", "cpu:0", "cuda:-1"):
        with pytest.raises(ValueError, match="cpu, cuda or cuda:N"):
            parse_device(bad)


def test_indexless_cuda_device_gets_the_current_index() -> None:
    torch = pytest.importorskip("torch")
    from evit_ros.runtime.devices import torch_device

    assert torch_device(None, "cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            torch_device("cuda")
        return
    device = torch_device("cuda")
    assert device.index == torch.cuda.current_device()
    torch.cuda.set_device(device)  # what raised "Expected a torch.device with a specified index"
    with pytest.raises(ValueError, match="requested"):
        torch_device(f"cuda:{torch.cuda.device_count()}")


def test_torch_backend_on_indexless_cuda() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from evit_ros.runtime import BackendConfig, create_backend

    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        backend = create_backend("torch", BackendConfig(weights="random", resolution=(64, 128), device="cuda"))
    assert backend.config.device == f"cuda:{torch.cuda.current_device()}"
    assert np.isfinite(backend.infer(np.zeros(backend.input_shape, dtype=np.float32))).all()


def test_enum_names_from_either_binding_style() -> None:
    import enum

    from evit_ros.deploy.tensorrt_build import enum_name

    class LayerType(enum.Enum):  # an object with .name, as pybind11 enums have
        CONSTANT = 1

    class Printed:  # only str(), "LayerType.SHUFFLE" as pybind11 prints members
        def __str__(self) -> str:
            return "LayerType.SHUFFLE"

    assert enum_name(LayerType.CONSTANT) == "CONSTANT" and enum_name(Printed()) == "SHUFFLE"


def test_random_weights_are_the_same_network_on_every_load() -> None:
    """The TensorRT backend loads random weights twice (FP32 reference, fp16-strong graph); its gate compares them."""
    torch = pytest.importorskip("torch")
    from evit_ros.network.variants import get_variant
    from evit_ros.network.weights import load_model

    variant = get_variant("b0-cityscapes")
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        first, _ = load_model(variant, "random")
        second, _ = load_model(variant, "random")
    state = second.state_dict()
    assert all(torch.equal(value, state[name]) for name, value in first.state_dict().items())


# --------------------------------------------------------------------------------------------
# Issue 22: the engine lifecycle. The `trt_callrecorder` stand-in checks call sequences only (see its docstring);
# it is not TensorRT coverage.

RES = (64, 128)


def _recorder(version: str = "10.3.0", dynamic: bool = True, **kwargs):
    from trt_callrecorder import CallRecorder

    layers = [(n.name, n.type, n.inputs, n.outputs, n.float_outputs) for n in _trt_graph()]
    shape = (-1 if dynamic else 2, 3, *RES)
    return CallRecorder(version, layers=layers, inputs={"x": shape}, **kwargs)


SCOPE = "/model/backbone/stages.3/op_list.1/context_module/main/linear_attention"
PINS = (f"{SCOPE}/ReduceSum", f"{SCOPE}/Add")


def _pinned_layers() -> list[str]:
    from evit_ros.deploy.tensorrt_build import select_fp32_layers

    return select_fp32_layers(_trt_graph(), frozenset(PINS))


def _build(rec, tmp_path: Path, batch: int = 2, **build):
    from evit_ros.deploy.tensorrt_build import build_serialized_engine

    pins = PINS
    if build.get("precision", "fp16") == "fp32" or build.get("strongly_typed"):
        pins = ()
    config = EngineBuildConfig(**{"fp32_pins": pins, **build})
    return build_serialized_engine(
        rec.module,
        tmp_path / "model.onnx",
        config,
        tmp_path / "timing.cache",
        tmp_path / "calibration.cache",
        RES,
        batch,
        calibration_device="cpu",
    )


@pytest.fixture
def calibration_dir(real_frames: list[Path], tmp_path: Path) -> Path:
    folder = tmp_path / "calibration"
    folder.mkdir()
    for f in real_frames:
        (folder / f.name).symlink_to(f)
    return folder


def _preprocessed(path: Path) -> np.ndarray:
    import cv2

    from evit_ros.pipeline.processing import preprocess

    return preprocess(cv2.imread(str(path), cv2.IMREAD_COLOR), RES, order="bgr")[0]


def test_frame_batches_stream_into_one_buffer(real_frames: list[Path]) -> None:
    from evit_ros.deploy.accuracy_gate import FrameBatches

    frames = FrameBatches(real_frames[:3], RES, 2)
    assert frames.frames_read == 0 and frames.buffer is None  # nothing read before iteration
    seen = []
    for i, batch in enumerate(frames):
        assert frames.frames_read == min(2 * (i + 1), 3)  # one batch at a time, not the whole set
        assert batch is frames.buffer and batch.shape == (2, 3, *RES)
        seen.append(batch.copy())
    assert len(seen) == 2
    np.testing.assert_array_equal(seen[0][0], _preprocessed(real_frames[0]))
    np.testing.assert_array_equal(seen[0][1], _preprocessed(real_frames[1]))
    np.testing.assert_array_equal(seen[1][0], _preprocessed(real_frames[2]))
    np.testing.assert_array_equal(seen[1][1], seen[1][0])  # a partial batch is padded with its own frames


def test_calibrator_streams_batches_and_reads_nothing_with_a_cache(real_frames: list[Path], tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from evit_ros.deploy.accuracy_gate import FrameBatches
    from evit_ros.deploy.tensorrt_build import make_calibrator

    trt = _recorder().module
    cache = tmp_path / "calibration.cache"
    frames = FrameBatches(real_frames, RES, 2)
    calibrator = make_calibrator(trt, frames, cache, device="cpu")
    assert calibrator.get_batch_size() == 2
    assert calibrator.read_calibration_cache() is None
    assert frames.frames_read == 0 and calibrator.device_input is None  # nothing read or allocated yet
    pointers = []
    for expected_read in (2, 4):
        pointers.append(calibrator.get_batch(["x"]))
        assert frames.frames_read == expected_read
        first = real_frames[expected_read - 2]
        np.testing.assert_array_equal(calibrator.device_input[0].numpy(), _preprocessed(first))
    assert pointers[0] == pointers[1]  # one reusable device buffer
    assert calibrator.get_batch(["x"]) is None and calibrator.device_input is None
    calibrator.write_calibration_cache(b"table")

    again = FrameBatches(real_frames, RES, 2)
    cached = make_calibrator(trt, again, cache, device="cpu")
    assert cached.read_calibration_cache() == b"table"
    assert again.frames_read == 0 and cached.device_input is None


def test_int8_build_streams_calibration_then_uses_the_cache(calibration_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    first = _recorder("8.6.1")
    _build(first, tmp_path, precision="int8", calibration_dir=str(calibration_dir), calibration_images=4)
    batches = first.of("calibrator.get_batch")
    assert len(batches) == 2 and batches[0] == batches[1]  # 4 frames, batch 2, one buffer
    assert (tmp_path / "calibration.cache").read_bytes() == b"calibration table"
    assert "config.set_calibration_profile" in first.names()  # a dynamic input calibrates within its profile

    second = _recorder("8.6.1")
    _build(second, tmp_path, precision="int8", calibration_dir=str(calibration_dir), calibration_images=4)
    assert not second.of("calibrator.get_batch")


def test_int8_build_raises_the_calibration_data_error(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    folder = tmp_path / "calibration"
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        (folder / name).write_bytes(b"not an image")
    rec = _recorder("8.6.1")
    with pytest.raises(FileNotFoundError, match="no readable images among 2 files"):
        _build(rec, tmp_path, precision="int8", calibration_dir=str(folder), calibration_images=4)
    assert "Builder.build_serialized_network" in rec.names() and not rec.of("calibrator.get_batch")
    assert not (tmp_path / "calibration.cache").exists()


@pytest.mark.parametrize("version", ["10.3.0", "10.13.3", "11.1.0"])
def test_call_sequence_strongly_typed_sets_no_precision(tmp_path: Path, version: str) -> None:
    from trt_callrecorder import Recorded

    rec = _recorder(version)
    assert _build(rec, tmp_path, precision="fp16", strongly_typed=True) == b"serialized engine"
    got = Recorded.of(rec)
    assert got.creation_flags == 1 << int(rec.module.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert not {"FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"} & set(got.set_flags)
    assert got.precision_layers == [] and got.output_type_layers == []
    assert got.cleared_flags == ["TF32"]


@pytest.mark.parametrize(
    ("version", "precision", "flags"),
    [
        ("8.6.1", "fp16", ["FP16", "OBEY_PRECISION_CONSTRAINTS"]),
        ("10.3.0", "fp16", ["FP16", "OBEY_PRECISION_CONSTRAINTS"]),
        ("10.3.0", "fp32", []),
    ],
)
def test_call_sequence_weak_routes(tmp_path: Path, version: str, precision: str, flags: list[str]) -> None:
    from trt_callrecorder import Recorded

    rec = _recorder(version)
    _build(rec, tmp_path, precision=precision)
    got = Recorded.of(rec)
    explicit_batch = 1 << 0 if version.startswith("8.") else 0
    assert got.creation_flags == explicit_batch  # never STRONGLY_TYPED on the weak route
    assert got.set_flags == flags
    if precision == "fp32":
        assert got.precision_layers == []
        return
    pinned = _pinned_layers()
    assert got.precision_layers == pinned and got.output_type_layers == sorted(pinned)
    assert all(value is rec.module.float32 for _, value in rec.of("layer.precision"))


def test_one_tensorrt_logger_per_process(tmp_path: Path) -> None:
    from evit_ros.deploy.tensorrt_build import trt_logger

    rec = _recorder()
    _build(rec, tmp_path, precision="fp32")
    _build(rec, tmp_path, precision="fp16", strongly_typed=True)
    rec.module.Runtime(trt_logger(rec.module))  # as the backend makes its runtime
    loggers = [args[0] for name in ("Builder", "OnnxParser", "Runtime") for args in rec.of(name)]
    assert len(loggers) == 5 and all(logger is loggers[0] for logger in loggers)
    assert isinstance(loggers[0], rec.module.ILogger)


@pytest.mark.parametrize("dynamic", [True, False])
def test_call_sequence_profile_shapes(tmp_path: Path, dynamic: bool) -> None:
    rec = _recorder(dynamic=dynamic)
    _build(rec, tmp_path, batch=2, precision="fp32")
    if dynamic:
        assert rec.of("profile.set_shape") == [("x", (2, 3, *RES), (2, 3, *RES), (2, 3, *RES))]
        assert rec.names().count("config.add_optimization_profile") == 1
    else:
        assert not rec.of("profile.set_shape") and "config.add_optimization_profile" not in rec.names()


@pytest.mark.parametrize(
    ("version", "precision", "typing", "strong"),
    [
        ("8.6.1", "fp16", "auto", False),
        ("10.3.0", "fp16", "auto", False),  # JetPack 6: GPU builds are strongly typed, DLA builds are not
        ("10.3.0", "int8", "auto", False),
        ("10.13.3", "fp16", "weak", False),
        ("11.1.0", "fp16", "auto", True),  # 11 on JetPack >= 7.2.2: strongly typed DLA networks
    ],
)
def test_dla_route_choice(version: str, precision: str, typing: str, strong: bool) -> None:
    from evit_ros.deploy.tensorrt_build import select_precision_route

    route = select_precision_route(version, precision, typing, dla=True)
    assert route.strongly_typed is strong and route.weak_flags is not strong
    assert select_precision_route("10.3.0", "fp16", "auto", dla=False).strongly_typed  # the GPU route is unchanged


def test_dla_strong_typing_refused_before_tensorrt_11() -> None:
    from evit_ros.deploy.tensorrt_build import select_precision_route

    with pytest.raises(ValueError, match="DLA builds on TensorRT 10.3.0 take their precision from the FP16 flag"):
        select_precision_route("10.3.0", "fp16", "strong", dla=True)


def test_call_sequence_dla_build_counts_dla_layers(tmp_path: Path, caplog) -> None:
    import logging

    conv = "/model/backbone/stages.3/op_list.1/context_module/main/qkv/conv/Conv"
    rec = _recorder(num_dla_cores=2, dla_layers=frozenset({conv}))
    with caplog.at_level(logging.INFO, logger="evit_ros.deploy.tensorrt_build"):
        _build(rec, tmp_path, precision="fp16", dla_core=1)
    assert "1 of 8 layers placed on the DLA" in caplog.text
    assert [v.name for (v,) in rec.of("config.default_device_type")] == ["DLA"] and rec.of("config.DLA_core") == [(1,)]
    assert {"FP16", "GPU_FALLBACK"} <= {flag for (flag,) in rec.of("config.set_flag")}  # weak route on 10.x

    none = _recorder(num_dla_cores=2)  # nothing the DLA can run: the engine would silently be all GPU
    with pytest.raises(RuntimeError, match="no layer of this network can run on DLA core 0"):
        _build(none, tmp_path, precision="fp16", dla_core=0)
    assert "Builder.build_serialized_network" not in none.names()

    pinned_only = _recorder(num_dla_cores=2, dla_layers=frozenset(_pinned_layers()))  # FP32 layers stay on the GPU
    with pytest.raises(RuntimeError, match="no layer of this network can run on DLA core 0"):
        _build(pinned_only, tmp_path, precision="fp16", dla_core=0)


def test_timing_cache_written_from_the_host_memory_blob(tmp_path: Path) -> None:
    from trt_callrecorder import TIMING_CACHE_MAGIC, HostMemory

    with pytest.raises(TypeError):
        len(HostMemory(b"x"))  # as IHostMemory: serialize() results have nbytes but no len()
    _build(_recorder(), tmp_path, precision="fp32")
    assert (tmp_path / "timing.cache").read_bytes() == TIMING_CACHE_MAGIC + b" timings"


def test_timing_cache_round_trip_and_corrupt_cache_discarded(tmp_path: Path, caplog) -> None:
    from trt_callrecorder import TIMING_CACHE_MAGIC

    timing = tmp_path / "timing.cache"
    _build(_recorder(), tmp_path, precision="fp32")
    saved = timing.read_bytes()
    assert saved.startswith(TIMING_CACHE_MAGIC)
    reuse = _recorder()
    _build(reuse, tmp_path, precision="fp32")
    assert reuse.of("config.create_timing_cache") == [(saved,)]  # the saved cache is loaded, not a new one

    timing.write_bytes(b"\x00garbage")  # create_timing_cache returns null for it
    corrupt = _recorder()
    _build(corrupt, tmp_path, precision="fp32")
    assert corrupt.of("config.create_timing_cache") == [(b"\x00garbage",), (b"",)]
    assert "corrupt or from another TensorRT/GPU" in caplog.text
    assert timing.read_bytes().startswith(TIMING_CACHE_MAGIC)  # replaced by the new build's cache

    caplog.clear()
    other_gpu = _recorder(timing_cache_matches_device=False)  # set_timing_cache returns False
    _build(other_gpu, tmp_path, precision="fp32")
    assert [c[0] for c in other_gpu.of("config.create_timing_cache")][-1] == b""
    assert "corrupt or from another TensorRT/GPU" in caplog.text


@pytest.mark.parametrize("outcome", [KeyboardInterrupt(), None])
def test_timing_cache_saved_when_the_build_is_interrupted(tmp_path: Path, outcome) -> None:
    timing = tmp_path / "timing.cache"
    rec = _recorder(build_result=outcome)
    with pytest.raises(KeyboardInterrupt if outcome is not None else RuntimeError):
        _build(rec, tmp_path, precision="fp32")
    assert timing.is_file()  # the tactic timings gathered so far are kept


LOCK_WORKER = r"""
import sys, time
from pathlib import Path
from evit_ros.deploy.tensorrt_build import load_or_build

engine, role = Path(sys.argv[1]), sys.argv[2]
marks = engine.parent

def load():
    return engine.read_bytes() if engine.is_file() else None

def build():
    (marks / f"built-by-{role}").touch()
    deadline = time.monotonic() + 120  # deadlock guard only: the other process normally arrives at once
    while not (marks / "waiting").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    engine.write_bytes(f"engine from {role}".encode())
    return engine.read_bytes()

def on_wait():
    (marks / "waiting").write_text(role)

sys.stdout.write(load_or_build(engine, load, build, on_wait=on_wait).decode())
"""


def test_build_lock_two_processes_build_once(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    from conftest import REPO_ROOT

    engine = tmp_path / "model.engine"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}

    def start(role: str) -> subprocess.Popen:
        args = [sys.executable, "-c", LOCK_WORKER, str(engine), role]
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    first = start("A")
    deadline = time.monotonic() + 120
    while not (tmp_path / "built-by-A").exists():  # A holds the lock and is building
        assert first.poll() is None and time.monotonic() < deadline, first.stderr and first.stderr.read()
        time.sleep(0.02)
    second = start("B")
    out_a, err_a = first.communicate(timeout=300)
    out_b, err_b = second.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, err_a + err_b
    assert (tmp_path / "waiting").read_text() == "B"  # B found the lock taken and waited
    assert not (tmp_path / "built-by-B").exists()  # ... and then loaded A's engine instead of building
    assert out_a == out_b == "engine from A"
    assert (tmp_path / "model.engine.lock").exists()


def _onnx_model(path: Path, in_type: int, out_type: int, inputs: int = 1) -> Path:
    """A one-node ONNX with the given I/O element types, marked as a logits model (so only the dtypes are wrong)."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    ins = [helper.make_tensor_value_info(f"in{i}", in_type, [1, 3, 8, 16]) for i in range(inputs)]
    out = helper.make_tensor_value_info("logits", out_type, [1, 3, 8, 16])
    node = helper.make_node("Cast", ["in0"], ["logits"], to=out_type)
    model = helper.make_model(helper.make_graph([node], "g", ins, [out]))
    helper.set_model_props(model, {"output": "logits"})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("in_type", "out_type", "inputs", "match"),
    [
        ("UINT8", "FLOAT", 1, "input 'in0' is UINT8; the normalised image input must be FLOAT"),
        ("FLOAT16", "FLOAT16", 1, "input 'in0' is FLOAT16"),
        ("FLOAT", "INT64", 1, "output 'logits' is INT64; logits must be FLOAT or FLOAT16"),
        ("FLOAT", "FLOAT", 2, "has 2 inputs and 1 outputs"),
    ],
)
def test_user_onnx_io_dtypes_checked_before_tensorrt(tmp_path: Path, in_type, out_type, inputs, match) -> None:
    import sys

    from onnx import TensorProto

    from evit_ros.runtime import BackendConfig, create_backend

    path = _onnx_model(tmp_path / "user.onnx", getattr(TensorProto, in_type), getattr(TensorProto, out_type), inputs)
    config = BackendConfig(weights=str(path), resolution=(8, 16), precision="fp16")
    with pytest.raises(ValueError, match=match):
        create_backend("tensorrt", config)
    if not _trt_available():
        assert "tensorrt" not in sys.modules  # refused from the ONNX alone, the same on every machine


def test_user_onnx_with_float_io_passes_the_early_check(tmp_path: Path) -> None:
    from onnx import TensorProto

    from evit_ros.deploy.onnx_graph import require_float_io

    require_float_io(_onnx_model(tmp_path / "ok.onnx", TensorProto.FLOAT, TensorProto.FLOAT))
    require_float_io(_onnx_model(tmp_path / "half.onnx", TensorProto.FLOAT, TensorProto.FLOAT16))


def test_nan_check_runs_without_a_reference(real_frames: list[Path], tmp_path: Path) -> None:
    from evit_ros.deploy.accuracy_gate import gate_batches

    folder = tmp_path / "gate"
    folder.mkdir()
    for f in real_frames:
        (folder / f.name).symlink_to(f)
    batches = gate_batches(folder, RES, 1, 2)

    def overflowing(x: np.ndarray) -> np.ndarray:  # an all-FP16 attention normaliser: 65504 overflows to inf
        return np.where(x > 2.0, np.inf, x)

    bad = accuracy_gate(overflowing, None, batches, 0.99)
    assert not bad.passed and bad.nonfinite == sum(int((b > 2.0).sum()) for b in batches) > 0
    assert bad.label_agreement is None and "NaN/Inf check only" in bad.describe()
    good = accuracy_gate(lambda x: x * 1.001, None, batches, 0.99)
    assert good.passed and good.nonfinite == 0


def test_failed_gate_is_remembered_until_inputs_change(tmp_path: Path) -> None:
    from evit_ros.deploy.accuracy_gate import GateResult
    from evit_ros.deploy.tensorrt_build import gate_failure_path, record_gate_failure, stored_gate_failure

    engine = tmp_path / "b0_fp16_abc.engine"
    key, gate = "k" * 64, {"frames": "f" * 64, "gate_frames": 4, "reference_onnx": "r" * 64}
    result = GateResult(nonfinite=0, label_agreement=0.9, max_abs_diff=3.0, passed=False)
    assert stored_gate_failure(engine, key, gate, 0.99) is None  # nothing stored yet
    path = record_gate_failure(engine, key, gate, result, 0.99, "failed the accuracy gate (label agreement 90%)")
    assert path == gate_failure_path(engine) and path.parent == engine.parent and not engine.exists()
    reason = stored_gate_failure(engine, key, gate, 0.99)
    assert reason is not None and "label agreement 90%" in reason and str(path) in reason
    assert stored_gate_failure(engine, "j" * 64, gate, 0.99) is None  # other ONNX/TensorRT/GPU/precision
    assert stored_gate_failure(engine, key, {**gate, "frames": "g" * 64}, 0.99) is None  # other gate frames
    assert stored_gate_failure(engine, key, gate, 0.85) is None  # a minimum the measurement now meets

    nan = GateResult(nonfinite=12, label_agreement=None, max_abs_diff=None, passed=False)
    record_gate_failure(engine, key, gate, nan, 0.0, "NaN/Inf")
    assert stored_gate_failure(engine, key, gate, 0.0) is not None  # NaN fails at any minimum


def test_static_batch_refuses_a_wrong_batch_size() -> None:
    from evit_ros.runtime.base import Backend, BackendConfig

    class Static(Backend):
        name = "static"

        def infer(self, batch: np.ndarray) -> np.ndarray:
            self._check_batch(batch)
            return batch

    backend = Static(BackendConfig(resolution=(8, 16), batch_size=2))
    backend.infer(np.zeros((2, 3, 8, 16), np.float32))
    with pytest.raises(ValueError, match="static batch of 2 frames, got 1"):
        backend.infer(np.zeros((1, 3, 8, 16), np.float32))  # was broadcast into both slots
    backend.dynamic_batch = True
    backend.infer(np.zeros((1, 3, 8, 16), np.float32))


@pytest.mark.parametrize(
    ("arch_list", "capability", "covered", "text"),
    [
        (["sm_80", "sm_86", "sm_87", "sm_90"], (8, 7), True, "sm_87 built"),
        (["sm_80", "sm_90"], (8, 7), True, "sm_80 cubins run on sm_87"),
        (["sm_90a", "compute_80"], (8, 7), True, "PTX JIT (compute_80)"),
        (["sm_90a"], (9, 0), True, "sm_90a built"),  # arch-specific cubins run on exactly their device
        (["sm_90a", "compute_90a"], (10, 0), False, "none runs on sm_100"),
        (["sm_90", "sm_100"], (8, 7), False, "NO"),
        ([], (8, 7), False, "no CUDA arch"),
    ],
)
def test_doctor_arch_list_coverage(arch_list, capability, covered, text) -> None:
    from evit_ros.cli.doctor import arch_list_covers

    got, how = arch_list_covers(arch_list, capability)
    assert got is covered and text in how


def test_doctor_fast_fp16_by_capability() -> None:
    from evit_ros.cli.doctor import fast_fp16

    assert fast_fp16((8, 7)) and fast_fp16((5, 3)) and fast_fp16((6, 0)) and fast_fp16((12, 0))
    assert not fast_fp16((6, 1)) and not fast_fp16((5, 2))


def _device_backend(context_factory, device: str = "cuda"):
    """A TensorRTBackend around a stand-in execution context (no engine): the device frame path's binding and
    stream handling only."""
    import torch

    from evit_ros.runtime.tensorrt_backend import TensorRTBackend

    backend = TensorRTBackend.__new__(TensorRTBackend)
    backend.device = torch.device(device)
    backend.input_name, backend.output_name = "input", "output"
    backend.buffers = {name: torch.zeros((1, 3, 8, 16), device=device) for name in ("input", "output")}
    backend.context = context_factory({t.data_ptr(): t for t in backend.buffers.values()})
    if backend.device.type == "cuda":
        backend.stream = torch.cuda.Stream(device=backend.device)
        for name, tensor in backend.buffers.items():
            backend._bind(name, tensor)
    return backend


def test_tensor_addresses_must_be_aligned_and_accepted() -> None:
    torch = pytest.importorskip("torch")
    from trt_callrecorder import RecordingContext

    from evit_ros.runtime.tensorrt_backend import TENSOR_ALIGNMENT, bindable

    base = torch.zeros(4096)
    start = next(k for k in range(4096) if (base.data_ptr() + 4 * k) % TENSOR_ALIGNMENT == 0)
    assert bindable(base[start : start + 64])
    assert not bindable(base[start + 1 : start + 65])  # 4 bytes off: TensorRT may refuse or misread it
    assert not bindable(base[start : start + 128 : 2])  # strided

    backend = _device_backend(lambda tensors: RecordingContext(tensors, accept_address=False), device="cpu")
    with pytest.raises(RuntimeError, match="TensorRT refused the address .* for tensor input"):
        backend._bind("input", backend.buffers["input"])


def _cuda_available() -> bool:
    try:
        import torch
    except Exception:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA device (not TensorRT)")
def test_device_path_runs_on_the_backend_stream_in_order() -> None:
    import torch
    from trt_callrecorder import RecordingContext

    backend = _device_backend(RecordingContext)
    context = backend.context
    own_in, out = backend.buffers["input"], backend.buffers["output"]
    current = torch.cuda.current_stream(backend.device)
    assert backend.stream.cuda_stream != current.cuda_stream
    for round_ in range(2):
        torch.cuda._sleep(50_000_000)  # slow pre-processing on the current stream: the engine must wait for it
        batch = torch.full(own_in.shape, 1.0 + round_, device=backend.device)
        context.tensors[batch.data_ptr()] = batch
        result = backend.infer_device(batch)
        labels = result + 0  # post-processing on the current stream: must see the engine's output
        torch.cuda.synchronize()
        assert result is out and torch.equal(labels, torch.full_like(out, 2.0 + 2 * round_))
        assert context.streams[-1] == backend.stream.cuda_stream  # never the current (legacy default) stream
        assert context.bound[-2:] == [("input", batch.data_ptr()), ("input", own_in.data_ptr())]

    storage = torch.zeros(own_in.numel() + 1, device=backend.device)
    misaligned = storage[1:].view(own_in.shape).fill_(5.0)  # 4 bytes past an aligned block
    bound = len(context.bound)
    labels = backend.infer_device(misaligned) + 0
    torch.cuda.synchronize()
    assert len(context.bound) == bound  # copied into the engine's own input buffer, not bound
    assert torch.equal(own_in, misaligned) and torch.equal(labels, torch.full_like(out, 10.0))
