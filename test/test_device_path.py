"""The device frame path (evit_ros.pipeline.device) against the host path, run with torch on the CPU: the same
functions a GPU runs, with CPU tensors. Also precision auto and frame_path resolution per backend."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import require

from evit_ros.network.classes import class_table
from evit_ros.pipeline import processing
from evit_ros.runtime import check_frame_path, resolve_frame_path, resolve_precision

torch = require("torch")

from evit_ros.pipeline.device import CLASS_CHUNK, DevicePipeline, resize_cubic_u8  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZES = ((1080, 1920), (720, 960), (1024, 2048))  # output sizes the labels are compared at
MIN_AGREEMENT = 0.9999


@pytest.fixture
def opencv_kernel():
    """OpenCV's own INTER_CUBIC (the fixed-point kernel the device path reproduces) instead of Intel IPP's, whose
    rounding differs by 1 grey level on ~1 % of the values (x86 wheels; a Jetson's OpenCV has no IPP)."""
    before = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)
    yield
    cv2.ipp.setUseIPP(before)


def _frames(real_frames: list[Path], size: tuple[int, int]) -> list[np.ndarray]:
    """The real frames (BGR) at `size`, as a camera of that size would deliver them."""
    return [cv2.resize(cv2.imread(str(p)), size[::-1], interpolation=cv2.INTER_AREA) for p in real_frames]


def _segmenter(weights, model: str = "b0-cityscapes", resolution: str = "512x1024", frame_path: str = "host"):
    from evit_ros.pipeline.segmenter import Segmenter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RANDOM WEIGHTS, where asked for
        return Segmenter(model, weights, resolution, backend="torch", device="cpu", frame_path=frame_path,
                         allow_random_weights=str(weights) == "random")  # fmt: skip


def test_cubic_resize_equals_opencv_kernel(real_frames, opencv_kernel) -> None:
    for path in real_frames:
        image = cv2.imread(str(path))
        for size in ((512, 1024), (360, 480), (1080, 1920), (720, 960)):
            ref = cv2.resize(image, size[::-1], interpolation=cv2.INTER_CUBIC)
            got = resize_cubic_u8(torch.from_numpy(image), size).numpy()
            diff = np.abs(ref.astype(np.int16) - got)
            assert diff.max() <= 1
            assert np.count_nonzero(diff) <= 1e-5 * diff.size  # float rounding of a rare half-way value


def test_cubic_resize_within_one_grey_level_of_default_opencv(real_frames) -> None:
    image = cv2.imread(str(real_frames[0]))
    ref = cv2.resize(image, (1024, 512), interpolation=cv2.INTER_CUBIC)
    got = resize_cubic_u8(torch.from_numpy(image), (512, 1024)).numpy()
    assert np.abs(ref.astype(np.int16) - got).max() <= 1


def test_device_preprocess_matches_host_preprocess(real_frames, opencv_kernel) -> None:
    palette = class_table("cityscapes")[1]
    pipe = DevicePipeline("cpu", (512, 1024), palette, len(palette))
    for image in _frames(real_frames, (1080, 1920)):
        for order in ("bgr", "rgb"):
            host = processing.preprocess(image, (512, 1024), order=order)[0]
            out = pipe.input_buffer((3, 512, 1024))
            pipe.preprocess(pipe.upload(image), order, out)
            diff = np.abs(out.numpy() - host)
            # float rounding everywhere but a rare half-way value of the resize, one grey level (1 / (255 std))
            assert np.count_nonzero(diff > 1e-5) <= 1e-5 * diff.size
            assert diff.max() <= 1.0 / (255.0 * min(processing.IMAGENET_STD)) + 1e-5


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_device_labels_equal_host_exact_b0(b0_checkpoint, real_frames, opencv_kernel, size) -> None:
    host = _segmenter(b0_checkpoint, frame_path="host")
    device = _segmenter(b0_checkpoint, frame_path="device")
    assert (host.frame_path, device.frame_path) == ("host", "device")
    palette = host.palette
    for image in _frames(real_frames, size):
        ref = host.segment(image, "bgr", return_confidence=True)
        got = device.segment(image, "bgr", return_confidence=True)
        assert got.labels.dtype == ref.labels.dtype and got.labels.shape == size
        assert np.mean(got.labels == ref.labels) >= MIN_AGREEMENT
        same = got.labels == ref.labels
        assert np.abs(got.confidence - ref.confidence)[same].max() < 1e-3
        # colours and overlay from the device labels, against the host's from the same labels
        pipe = device.device_pipeline
        labels = torch.from_numpy(ref.labels)
        assert np.array_equal(pipe.download(pipe.colorize(labels)), processing.colorize(ref.labels, palette))
        blend = pipe.download(pipe.overlay(torch.from_numpy(image), labels, "bgr", 0.5))
        host_blend = processing.overlay(image, ref.labels, np.ascontiguousarray(palette[:, ::-1]), 0.5)
        assert np.abs(blend.astype(np.int16) - host_blend).max() <= 1


def test_device_labels_equal_host_exact_150_classes(real_frames, opencv_kernel) -> None:
    """ADE20K's 150 classes (random weights: the comparison, not the accuracy, is tested), chunked on the device."""
    host = _segmenter("random", "b1-ade20k", "512x928", "host")
    device = _segmenter("random", "b1-ade20k", "512x928", "device")
    device.backend.model = host.backend.model  # one set of random weights for both
    assert host.num_classes == 150 > CLASS_CHUNK
    for size in SIZES:
        for image in _frames(real_frames[:2], size):
            ref = host.segment(image, "bgr")
            got = device.segment(image, "bgr")
            assert np.mean(got.labels == ref.labels) >= MIN_AGREEMENT


def test_running_argmax_and_softmax_are_exact_on_negative_logits() -> None:
    """All logits below 0: a running max started from 0 instead of the first chunk would give class 0 everywhere."""
    palette = class_table("ade20k")[1]
    pipe = DevicePipeline("cpu", (64, 64), palette, 150)
    logits = np.random.default_rng(0).normal(-20.0, 3.0, (150, 12, 20)).astype(np.float32)
    for size in ((96, 160), (12, 20)):
        labels, conf = pipe.postprocess(torch.from_numpy(logits), size, "exact", return_confidence=True)
        ref_labels, ref_conf = processing.postprocess(logits, size, "exact", return_confidence=True)
        assert np.mean(labels.numpy() == ref_labels) >= MIN_AGREEMENT
        assert np.abs(conf.numpy() - ref_conf).max() < 1e-4
        assert len(np.unique(labels.numpy())) > 10


def test_fast_mode_matches_host_fast() -> None:
    palette = class_table("cityscapes")[1]
    pipe = DevicePipeline("cpu", (64, 64), palette, 19)
    logits = np.random.default_rng(1).normal(0.0, 3.0, (19, 45, 60)).astype(np.float32)
    labels, conf = pipe.postprocess(torch.from_numpy(logits), (1080, 1920), "fast", return_confidence=True)
    ref_labels, ref_conf = processing.postprocess(logits, (1080, 1920), "fast", return_confidence=True)
    assert np.array_equal(labels.numpy(), ref_labels)
    assert np.abs(conf.numpy() - ref_conf).max() < 1e-4


_PEAK_SCRIPT = """
import json, sys
import numpy as np, torch
torch.set_num_threads(1)
import evit_ros.pipeline.device as device
device.CLASS_CHUNK = int(sys.argv[1])
from evit_ros.network.classes import class_table

def status_kib(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

palette = class_table("ade20k")[1]
pipe = device.DevicePipeline("cpu", (512, 928), palette, 150)
logits = torch.from_numpy(np.random.default_rng(0).normal(0, 3, (150, 64, 116)).astype(np.float32))
pipe.postprocess(logits, (64, 128), "exact", True)  # torch's own one-off allocations, before the baseline
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak resident set (VmHWM) to the current one (Linux >= 4.0)
before = status_kib("VmRSS")
labels, conf = pipe.postprocess(logits, (1080, 1920), "exact", bool(int(sys.argv[2])))
peak = status_kib("VmHWM")
print(json.dumps({"peak_bytes": (peak - before) * 1024, "classes": len(np.unique(labels.numpy()))}))
"""


def _peak(chunk: int, confidence: bool) -> int:
    env_cmd = [sys.executable, "-c", _PEAK_SCRIPT, str(chunk), str(int(confidence))]
    out = subprocess.run(env_cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=600).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["classes"] > 100  # the labels really span the classes
    return result["peak_bytes"]


@pytest.mark.parametrize("confidence", [False, True], ids=["labels", "labels+confidence"])
def test_150_class_postprocess_peak_memory_at_1080p(confidence: bool) -> None:
    """Peak memory growth (the kernel's peak resident set, reset just before, in a fresh process) of the chunked
    post-processing of 150 classes at 1080p: under 16 upsampled float32 channels (all 150 would be 1.2 GB)."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak resident set")
    channel = 1080 * 1920 * 4
    assert _peak(CLASS_CHUNK, confidence) < 16 * channel


def test_peak_memory_measure_sees_unchunked_upsampling() -> None:
    """The measure above is not blind: with 40 classes per chunk it sees more than 16 channels."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak resident set")
    assert _peak(40, False) > 16 * 1080 * 1920 * 4


# ---------------------------------------------------------------- precision auto, frame_path


def test_precision_auto_by_backend() -> None:
    assert resolve_precision("auto", "tensorrt") == "fp16"  # pure: no TensorRT needed to resolve it
    assert resolve_precision("auto", "torch", "cuda", cuda_available=True) == "fp16"
    assert resolve_precision("auto", "torch", "cuda:1") == "fp16"
    assert resolve_precision("auto", "torch", None, cuda_available=True) == "fp16"
    assert resolve_precision("auto", "torch", None, cuda_available=False) == "fp32"
    assert resolve_precision("auto", "torch", "cpu", cuda_available=True) == "fp32"
    assert resolve_precision("auto", "openvino", "GPU") == "fp32"
    assert resolve_precision("auto", "onnxruntime") == "fp32"
    for explicit in ("fp32", "fp16", "bf16", "int8"):
        assert resolve_precision(explicit, "tensorrt") == explicit
        assert resolve_precision(explicit, "onnxruntime") == explicit
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("fp8", "torch")


def test_precision_auto_on_created_backends(tmp_path) -> None:
    from evit_ros.runtime import BackendConfig, create_backend

    torch_backend = create_backend("torch", BackendConfig(weights="random", resolution=(64, 128), device="cpu"))
    assert torch_backend.config.precision == "fp32"
    require("onnxruntime")
    ort = create_backend(
        "onnxruntime", BackendConfig(weights="random", resolution=(64, 128), engine_cache_dir=str(tmp_path))
    )
    assert ort.config.precision == "fp32"
    require("openvino")
    ov = create_backend(
        "openvino", BackendConfig(weights="random", resolution=(64, 128), engine_cache_dir=str(tmp_path))
    )
    assert ov.config.precision == "fp32"


def test_frame_path_validation() -> None:
    for backend in ("openvino", "onnxruntime"):
        reason = check_frame_path("device", backend)
        assert reason is not None and backend in reason and "host" in reason
        assert check_frame_path("auto", backend) is None and check_frame_path("host", backend) is None
    for backend in ("torch", "tensorrt"):
        assert check_frame_path("device", backend) is None
    assert "frame_path must be one of" in check_frame_path("gpu", "torch")
    from evit_ros.pipeline.segmenter import Segmenter

    with pytest.raises(ValueError, match="frame_path device needs"):
        Segmenter("b0-cityscapes", "random", "64x128", backend="onnxruntime", frame_path="device",
                  allow_random_weights=True)  # fmt: skip


def test_predict_refuses_device_frame_path_with_onnxruntime(tmp_path, real_frames, capsys) -> None:
    require("onnxruntime")
    from evit_ros.cli.main import main

    args = ["predict", "--weights", "random", "--backend", "onnxruntime", "--resolution", "64x128"]
    assert main([*args, "--frame-path", "device", str(real_frames[0].parent), str(tmp_path)]) == 2
    assert "frame_path device needs" in capsys.readouterr().err


def test_frame_path_auto_is_host_on_cpu_torch() -> None:
    seg = _segmenter("random", resolution="64x128", frame_path="auto")
    assert seg.frame_path == "host" and seg.device_pipeline is None
    assert resolve_frame_path("device", seg.backend) == "device"


def test_device_batch_of_cameras_with_different_sizes(real_frames, opencv_kernel) -> None:
    """Several cameras of different sizes in one network call: each frame pre- and post-processed at its own
    size on the device, the same labels as one at a time on the host."""
    host = _segmenter("random", resolution="128x256", frame_path="host")
    from evit_ros.pipeline.segmenter import Segmenter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        device = Segmenter("b0-cityscapes", "random", "128x256", backend="torch", device="cpu", batch_size=3,
                           frame_path="device", allow_random_weights=True)  # fmt: skip
    device.backend.model = host.backend.model
    images = [
        cv2.resize(cv2.imread(str(p)), s[::-1], interpolation=cv2.INTER_AREA)
        for p, s in zip(real_frames[:3], ((360, 480), (720, 1280), (540, 960)), strict=True)
    ]
    batch = device.segment_batch(images, ["bgr", "rgb", "bgr"])
    for image, order, got in zip(images, ["bgr", "rgb", "bgr"], batch, strict=True):
        ref = host.segment(image, order)
        assert got.labels.shape == image.shape[:2]
        assert np.mean(got.labels == ref.labels) >= MIN_AGREEMENT


def test_cuda_graph_device_batch_must_fill_the_captured_input() -> None:
    # The captured-graph branch on the CPU: a bare backend with a placeholder graph and static input, so the check
    # runs before anything CUDA is touched.
    from evit_ros.runtime.base import BackendConfig
    from evit_ros.runtime.torch_backend import TorchBackend

    backend = TorchBackend.__new__(TorchBackend)
    backend.config = BackendConfig(resolution=(8, 16), batch_size=2)
    backend.device, backend._graph = torch.device("cpu"), object()
    backend._static_in = torch.zeros(backend.input_shape)
    with pytest.raises(ValueError, match=r"static batch of 2 frames \(a captured CUDA graph\), got 1"):
        backend.infer_device(torch.ones((1, 3, 8, 16)))
    assert not backend._static_in.any()  # nothing was broadcast into it
