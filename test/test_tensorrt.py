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
