"""``seg_node``: real-time EfficientViT semantic segmentation of a camera stream.

    ros2 run evit_ros seg_node --ros-args -r image:=/camera/image_raw -p resolution:=512x1024
    python -m evit_ros.ros.seg_node --ros-args -p model:=b0-cityscapes -p backend:=torch
    ros2 run evit_ros seg_node --ros-args -p "cameras:=[front, left, rear]"

Topics (all relative, so a namespace or remapping places them):

* in  ``image`` (sensor_msgs/Image) or ``image/compressed`` (sensor_msgs/CompressedImage) when
  ``input_transport:=compressed``; ``camera_info`` (sensor_msgs/CameraInfo, optional).
* out ``segmentation/labels`` (mono8 class ids, mono16 above 256 classes), ``segmentation/color`` (rgb8),
  ``segmentation/overlay`` (bgr8), ``segmentation/confidence`` (32FC1 probability in [0, 1], or mono8
  ``round(255 * p)``), ``segmentation/camera_info`` (the input camera_info rescaled to the output size),
  ``segmentation/class_table`` (std_msgs/String, JSON, transient local, published once), ``/diagnostics``.
* for planners (:mod:`evit_ros.ros.planner_outputs`): ``segmentation/{labels,color,overlay}/compressed`` in
  image_transport's ``compressed`` format (PNG, lossless; the overlay JPEG), ``segmentation/mask/<name>`` (+
  ``/compressed``) per class group of ``class_masks``, ``segmentation/label_info`` (vision_msgs/LabelInfo, where
  vision_msgs is installed).

Every output carries the input header unchanged. An output nobody subscribes to is not computed, and with no
subscriber at all the network does not run.

Several cameras (``cameras:=[front, left]``; empty = the single camera above): every topic above but
``/diagnostics`` exists per camera under ``<camera>/`` (``front/image`` -> ``front/segmentation/labels``), one
network serves them all, and ``/diagnostics`` has one status per camera plus one for the network.

Real time: the input subscription keeps one message (depth ``qos_depth``, default 1); the callback only
drops the message into its camera's one-frame slot. One worker thread takes the newest frame of every camera
that has one, in round-robin order, up to ``batch_size`` of them (default: every camera on a GPU backend, one on
the CPU, where batching gains nothing), and runs them through the network as one batch; so a camera faster than
the network makes the node skip frames (counted as ``dropped``) instead of queueing them and falling behind, and
every camera gets its turn. Raw frames are taken serialized through rcl into a buffer of their own
(:mod:`evit_ros.ros.rcl_serialized`), rgb8/bgr8 read in place from it and kept in their own channel order through
pre-processing and the overlay; output images are written once into their publisher's serialized buffer and
handed to rcl (:mod:`evit_ros.ros.image_publisher`).

Frame path (``frame_path``, read-only): ``device`` resizes, normalises, upsamples the logits, takes the argmax and
draws the colours and the overlay in torch on the network's device (TensorRT, torch), so the frame goes up once as
uint8 and only the uint8 outputs come back; ``host`` does it with numpy/OpenCV; ``auto`` (default) is device on
CUDA backends, host otherwise. ``precision`` ``auto`` (default) is fp16 on TensorRT and torch on CUDA, fp32 on the
CPU backends.

Exit status: 0 after SIGINT/SIGTERM, a finished ``build_only`` run or ``seg_node --help`` (the parameters); 2 for
an invalid parameter value or an unknown ROS argument; 1 when the model cannot be loaded (missing checkpoint,
unavailable backend, ...).
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.exceptions import ParameterException, ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String

from evit_ros.io.encodings import label_dtype_encoding
from evit_ros.network.classes import class_table, parse_class_masks
from evit_ros.network.variants import DEFAULT_MODEL, VARIANTS, get_variant, parse_resolution
from evit_ros.pipeline import processing
from evit_ros.pipeline.allocation import retain_freed_memory
from evit_ros.pipeline.processing import POSTPROCESS_MODES
from evit_ros.ros import rcl_serialized
from evit_ros.ros.conversions import compressed_to_image, image_from_cdr, msg_to_image
from evit_ros.ros.image_publisher import ImagePublisher, publish_path
from evit_ros.ros.planner_outputs import LABEL_INFO_TOPIC, PlannerOutputs, label_info_publisher
from evit_ros.ros.rcl_serialized import SerializedSubscription
from evit_ros.ros.scheduler import FrameSlot, RoundRobinSlots
from evit_ros.runtime import FRAME_PATHS, batching_pays, check_frame_path, resolve_backend_name
from evit_ros.runtime.base import BACKENDS, PRECISIONS
from evit_ros.runtime.options import BACKEND_OPTIONS, normalise_options

__all__ = [
    "CLASS_TABLE_FORMAT",
    "ConfigError",
    "FrameSlot",
    "SegNode",
    "check_cameras",
    "class_table_json",
    "main",
    "scale_camera_info",
]

CLASS_TABLE_FORMAT = "evit_ros/class_table/1"
DIAGNOSTICS_PERIOD_S = 1.0
DIAGNOSTICS_WINDOW = 30  # frames behind each timing figure of /diagnostics (means, p50s)
ERROR_THROTTLE_S = 5.0

CHOICES: dict[str, tuple[str, ...]] = {
    "mask_resolution": ("input", "network"),
    "postprocess_mode": POSTPROCESS_MODES,
    "confidence_encoding": ("32FC1", "mono8"),
    "qos_reliability": ("best_effort", "reliable"),
    "input_transport": ("raw", "compressed"),
    "precision": PRECISIONS,
    "backend": BACKENDS,
    "frame_path": FRAME_PATHS,
}

RUNTIME_PARAMETERS = frozenset(
    {
        "overlay_alpha",
        "mask_resolution",
        "postprocess_mode",
        "confidence_encoding",
        "publish_labels",
        "publish_color",
        "publish_overlay",
        "publish_confidence",
        "jpeg_quality",
    }
)


class ConfigError(ValueError):
    """An invalid parameter value at startup."""


@dataclass
class _Param:
    default: object
    description: str
    read_only: bool
    int_range: tuple[int, int] | None = None
    float_range: tuple[float, float] | None = None


def _parameter_table() -> dict[str, _Param]:
    """Name -> declaration; the order is the one ``ros2 param list`` shows."""
    return {
        "model": _Param(DEFAULT_MODEL, f"official variant: {', '.join(sorted(VARIANTS))}", True),
        "weights": _Param(
            "", "checkpoint .pt / .onnx, or '' for the cache then the Hugging Face Hub ('random': smoke tests)", True
        ),
        "resolution": _Param("", "network input HxW, multiples of 32 ('' = the variant's evaluation size)", True),
        "backend": _Param("auto", " | ".join(BACKENDS), True),
        "precision": _Param(
            "auto",
            f"{' | '.join(PRECISIONS)} (what the backend supports; auto: fp16 on TensorRT and torch on CUDA, "
            "fp32 on the CPU backends)",
            True,
        ),
        "frame_path": _Param(
            "auto",
            "where pre- and post-processing run: device (torch on the network's device: torch or tensorrt "
            "backend), host (numpy/OpenCV) or auto (device on CUDA backends, else host)",
            True,
        ),
        "engine_cache_dir": _Param(
            "", "where ONNX files, TensorRT engines and OpenVINO models are cached ('' = default cache)", True
        ),
        "device": _Param("", "cpu, cuda, cuda:N; any OpenVINO device for openvino ('' = the backend's choice)", True),
        "num_threads": _Param(
            0, "CPU threads for torch / ONNX Runtime / OpenVINO (0 = library default)", True, (0, 256)
        ),
        "build_only": _Param(False, "load the model, build the engine / ONNX file, then exit 0", True),
        "input_transport": _Param("raw", "raw: sensor_msgs/Image on 'image'; compressed: 'image/compressed'", True),
        "qos_reliability": _Param("best_effort", "input reliability: best_effort (REP-2003) | reliable", True),
        "qos_depth": _Param(1, "history depth of the input subscription and of the outputs", True, (1, 100)),
        "mask_resolution": _Param("input", "output size: input (the camera's) | network (the model's HxW)", False),
        "postprocess_mode": _Param(
            "refined",
            "refined: the official labels, computed only near class boundaries; exact: bicubic logits upsampling "
            "then argmax (the official protocol); fast: argmax then nearest",
            False,
        ),
        "overlay_alpha": _Param(0.5, "weight of the class colours in segmentation/overlay", False, None, (0.0, 1.0)),
        "publish_labels": _Param(True, "publish segmentation/labels", False),
        "publish_color": _Param(True, "publish segmentation/color", False),
        "publish_overlay": _Param(True, "publish segmentation/overlay", False),
        "publish_confidence": _Param(False, "publish segmentation/confidence", False),
        "confidence_encoding": _Param("32FC1", "32FC1 (probability 0..1) | mono8 (round(255 * probability))", False),
        "cameras": _Param(
            [], "camera namespaces served by one network, e.g. [front, left] ([]: one camera on 'image')", True
        ),
        "batch_size": _Param(
            0,
            "most frames per network call (0 = auto: one per camera on GPU backends, 1 on CPU backends; "
            "1 = cameras one after another)",
            True,
            (0, 64),
        ),
        "batch_wait_ms": _Param(
            0.0, "longest wait for more cameras' frames to fill a batch (0 = never wait)", True, None, (0.0, 1000.0)
        ),
        **_planner_parameters(),
    }


def _planner_parameters() -> dict[str, _Param]:
    """The parameters of :mod:`evit_ros.ros.planner_outputs`."""
    return {
        "class_masks": _Param(
            "",
            "YAML map of mask names to class names, e.g. '{drivable: [road, sidewalk], people: [person, rider]}': "
            "one mono8 0/255 mask each on segmentation/mask/<name> ('' = none)",
            True,
        ),
        "jpeg_quality": _Param(80, "JPEG quality of segmentation/overlay/compressed", False, (1, 100)),
    }


_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
          list: ParameterType.PARAMETER_STRING_ARRAY}  # fmt: skip
# A ROS topic namespace relative to the node: tokens of letters, digits and '_', not starting with a digit.
_CAMERA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*")


def _declared_value(spec: _Param):
    # rclpy types a declared [] as a byte array: an empty string array is declared by its type.
    return Parameter.Type.STRING_ARRAY if isinstance(spec.default, list) else spec.default


def _descriptor(name: str, spec: _Param) -> ParameterDescriptor:
    desc = ParameterDescriptor(
        name=name,
        type=_TYPES[type(spec.default)],
        description=spec.description + ("" if spec.read_only else " (changeable at runtime)"),
        read_only=spec.read_only,
    )
    if name in CHOICES:
        desc.additional_constraints = "one of: " + ", ".join(CHOICES[name])
    if spec.int_range is not None:
        desc.integer_range = [IntegerRange(from_value=spec.int_range[0], to_value=spec.int_range[1], step=1)]
    if spec.float_range is not None:
        desc.floating_point_range = [
            FloatingPointRange(from_value=spec.float_range[0], to_value=spec.float_range[1], step=0.0)
        ]
    return desc


def declare_backend_options(node: Node) -> dict:
    """Declare every engine-affecting backend option (runtime/options.py) as a read-only parameter of the same
    name; return their values as BackendConfig.options. ConfigError for a wrong type or value."""
    values = {}
    try:
        for opt in BACKEND_OPTIONS:
            desc = ParameterDescriptor(
                name=opt.name,
                type=_TYPES[opt.type],
                description=f"{opt.description} [{'/'.join(opt.backends)}]",
                read_only=True,
            )
            if opt.choices:
                desc.additional_constraints = "one of: " + ", ".join(opt.choices)
            values[opt.name] = node.declare_parameter(opt.name, opt.default, desc).value
        return normalise_options(values)
    except (ParameterException, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def check_choice(name: str, value: object) -> str | None:
    """The reason ``value`` is invalid for ``name``, or None."""
    if name in CHOICES and value not in CHOICES[name]:
        return f"{name} must be one of {', '.join(CHOICES[name])}, got {value!r}"
    return None


def check_cameras(names: Sequence[str]) -> str | None:
    """The reason a ``cameras`` list is invalid, or None."""
    for name in names:
        if not _CAMERA_NAME.fullmatch(name):
            return (
                f"camera {name!r} is not a relative topic namespace (letters, digits, '_' and '/', e.g. front or "
                "cam0/color; no leading '/', '~' or substitutions)"
            )
    duplicates = sorted({n for n in names if list(names).count(n) > 1})
    if duplicates:
        return f"cameras listed twice: {', '.join(duplicates)}"
    return None


def class_table_json(model: str, class_names: Sequence[str], palette: np.ndarray, label_encoding: str) -> str:
    """The class table published on ``segmentation/class_table`` (JSON, hence also valid YAML)."""
    variant = get_variant(model)
    table = {
        "format": CLASS_TABLE_FORMAT,
        "model": variant.name,
        "dataset": variant.dataset,
        "num_classes": len(class_names),
        "label_encoding": label_encoding,
        "color_encoding": "rgb8",
        "classes": [
            {"id": i, "name": name, "color": [int(c) for c in palette[i]]} for i, name in enumerate(class_names)
        ],
    }
    return json.dumps(table, indent=None, separators=(",", ":"))


def scale_camera_info(info: CameraInfo, in_size: tuple[int, int], out_size: tuple[int, int], header) -> CameraInfo:
    """``info`` for an image rescaled from ``in_size`` (H, W) to ``out_size``: K, P, size and ROI scaled."""
    sy, sx = out_size[0] / in_size[0], out_size[1] / in_size[1]
    out = CameraInfo()
    out.header = header
    out.distortion_model = info.distortion_model
    out.d = info.d
    out.r = info.r
    k = list(info.k)
    k[0], k[2], k[4], k[5] = k[0] * sx, k[2] * sx, k[4] * sy, k[5] * sy
    out.k = k
    p = list(info.p)
    p[0], p[2], p[3], p[5], p[6], p[7] = p[0] * sx, p[2] * sx, p[3] * sx, p[5] * sy, p[6] * sy, p[7] * sy
    out.p = p
    full_w = info.width if info.width else in_size[1]
    full_h = info.height if info.height else in_size[0]
    out.width, out.height = round(full_w * sx), round(full_h * sy)
    out.binning_x, out.binning_y = info.binning_x, info.binning_y
    out.roi.x_offset = round(info.roi.x_offset * sx)
    out.roi.y_offset = round(info.roi.y_offset * sy)
    out.roi.width = round(info.roi.width * sx)
    out.roi.height = round(info.roi.height * sy)
    out.roi.do_rectify = info.roi.do_rectify
    return out


class _Stats:
    """Counters and a rolling window of timings, shared by the callbacks, the worker and diagnostics."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.frames_in = 0
        self.frames_out = 0
        self.bad = 0
        self.nan = 0
        self.idle = 0  # frames taken while no output had a subscriber
        self.infer_ms: deque[float] = deque(maxlen=200)
        self.post_ms: deque[float] = deque(maxlen=200)
        self.segment_ms: deque[float] = deque(maxlen=200)  # the Segmenter's frame -> labels: network + post
        self.latency_ms: deque[float] = deque(maxlen=200)
        self.last_error = ""
        self._mark = (time.monotonic(), 0, 0)

    def rates(self) -> tuple[float, float]:
        now = time.monotonic()
        with self.lock:
            t0, n_in, n_out = self._mark
            self._mark = (now, self.frames_in, self.frames_out)
            dt = max(now - t0, 1e-6)
            return (self.frames_in - n_in) / dt, (self.frames_out - n_out) / dt


class _NetworkStats:
    """The shared network's batches, for the network status in /diagnostics."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches = 0
        self.frames = 0
        self.recent: deque[tuple[int, float]] = deque(maxlen=50)  # (frames, ms) of the latest batches

    def add(self, frames: int, ms: float) -> None:
        with self.lock:
            self.batches += 1
            self.frames += frames
            self.recent.append((frames, ms))

    def snapshot(self) -> dict:
        with self.lock:
            recent = list(self.recent)
            batches, frames = self.batches, self.frames
        n = sum(f for f, _ in recent)
        total_ms = sum(ms for _, ms in recent)
        return {
            "batches": batches,
            "frames": frames,
            "frames_per_batch": n / len(recent) if recent else float("nan"),
            "batch_ms": total_ms / len(recent) if recent else float("nan"),
            "frame_ms": total_ms / n if n else float("nan"),
        }


def _percentile(values, q: float) -> float:
    return float(np.percentile(np.fromiter(values, dtype=np.float64), q)) if values else float("nan")


class _Camera:
    """One camera's topics, latest-frame slot, counters and last camera_info."""

    def __init__(self, name: str, slot: FrameSlot) -> None:
        self.name = name  # '' for the single-camera node
        self.slot = slot
        self.stats = _Stats()
        self.camera_info: CameraInfo | None = None
        self.images: dict[str, ImagePublisher] = {}  # output name -> its image publisher

    def topic(self, relative: str) -> str:
        return f"{self.name}/{relative}" if self.name else relative


@dataclass
class _Job:
    camera: _Camera
    msg: object
    image: np.ndarray
    order: str
    want: dict[str, bool]
    frame: object = None  # the frame as uploaded (a torch tensor) on the device frame path


class SegNode(Node):
    """Semantic segmentation node; see the module docstring for topics and parameters."""

    def __init__(self, node_name: str = "seg_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self.slots: RoundRobinSlots | None = None
        self.segmenter = None
        self._specs = _parameter_table()
        try:
            for name, spec in self._specs.items():
                self.declare_parameter(name, _declared_value(spec), _descriptor(name, spec))
        except ParameterException as exc:  # wrong type or out of range, from --ros-args / a params file
            raise ConfigError(str(exc)) from exc
        p = {name: self._parameter_value(name) for name in self._specs}
        self._validate_startup(p)
        self.build_only = bool(p["build_only"])
        backend_options = declare_backend_options(self)
        names = list(p["cameras"])
        self.multi_camera = bool(names)
        batch_size = int(p["batch_size"])
        if batch_size == 0:  # auto: one batch of all cameras where that pays (GPUs), else one after another
            batch_size = len(names) if names and batching_pays(p["backend"], p["device"] or None) else 1

        from evit_ros.pipeline.segmenter import Segmenter  # heavy: torch / onnxruntime

        weights = p["weights"] or None
        self.segmenter = Segmenter(
            model=p["model"],
            weights=weights,
            resolution=p["resolution"] or None,
            backend=p["backend"],
            precision=p["precision"],
            device=p["device"] or None,
            num_threads=p["num_threads"] or None,
            engine_cache_dir=p["engine_cache_dir"] or None,
            allow_random_weights=weights == "random",
            backend_options=backend_options,
            batch_size=batch_size,
            frame_path=p["frame_path"],
        )
        self.device_pipeline = self.segmenter.device_pipeline  # None on the host frame path
        self.info = self.segmenter.describe()
        if self.multi_camera:
            self.info["batch_size"] = str(self.segmenter.max_batch)
        self.get_logger().info("model ready: " + ", ".join(f"{k}={v}" for k, v in self.info.items()))
        self.palette_bgr = np.ascontiguousarray(self.segmenter.palette[:, ::-1])
        self._runtime = {name: p[name] for name in RUNTIME_PARAMETERS}
        self.batch_wait_s = float(p["batch_wait_ms"]) / 1e3
        self.slots = RoundRobinSlots(max(1, len(names)))
        self.cameras = [_Camera(name, slot) for name, slot in zip(names or [""], self.slots.slots, strict=True)]
        self.network = _NetworkStats()
        if self.build_only:
            return

        depth = int(p["qos_depth"])
        reliability = (
            ReliabilityPolicy.RELIABLE if p["qos_reliability"] == "reliable" else ReliabilityPolicy.BEST_EFFORT
        )
        in_qos = QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=reliability)
        out_qos = QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
        )
        self.compressed = p["input_transport"] == "compressed"
        # Output images are written once into a reused serialized buffer and handed to rcl where that works here
        # (see image_publisher), else the next cheapest path.
        self.publish_path = publish_path()
        self.direct_take = rcl_serialized.available()
        self.label_dtype = processing.label_dtype(self.segmenter.num_classes)
        self.label_encoding = label_dtype_encoding(self.label_dtype)
        table = String(
            data=class_table_json(p["model"], self.segmenter.class_names, self.segmenter.palette, self.label_encoding)
        )
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        for cam in self.cameras:
            cam.pub_labels = self.create_publisher(Image, cam.topic("segmentation/labels"), out_qos)
            cam.pub_color = self.create_publisher(Image, cam.topic("segmentation/color"), out_qos)
            cam.pub_overlay = self.create_publisher(Image, cam.topic("segmentation/overlay"), out_qos)
            cam.pub_confidence = self.create_publisher(Image, cam.topic("segmentation/confidence"), out_qos)
            cam.pub_info = self.create_publisher(CameraInfo, cam.topic("segmentation/camera_info"), out_qos)
            cam.pub_table = self.create_publisher(String, cam.topic("segmentation/class_table"), latched)
            cam.images = {
                output: ImagePublisher(publisher, self.publish_path)
                for output, publisher in (("labels", cam.pub_labels), ("color", cam.pub_color),
                                          ("overlay", cam.pub_overlay), ("confidence", cam.pub_confidence))
            }  # fmt: skip
            cam.pub_table.publish(table)
            cam.planner = PlannerOutputs(
                self, cam.topic, out_qos, self._class_masks, self.label_dtype, self.publish_path
            )
            cam.pub_label_info = label_info_publisher(
                self, cam.topic(LABEL_INFO_TOPIC), self.segmenter.class_names, latched
            )
        self.add_on_set_parameters_callback(self._on_set_parameters)

        for cam in self.cameras:
            if self.compressed:
                cam.sub_image = self.create_subscription(
                    CompressedImage, cam.topic("image/compressed"), self._image_callback(cam), in_qos
                )
            elif self.direct_take:
                # raw: taken serialized into a buffer of its own, no Python bytes in between (rcl_serialized); the
                # worker reads the pixels in place from it (image_from_cdr)
                cam.sub_image = SerializedSubscription(
                    self, Image, cam.topic("image"), self._image_callback(cam), in_qos
                )
            else:
                cam.sub_image = self.create_subscription(
                    Image, cam.topic("image"), self._image_callback(cam), in_qos, raw=True
                )
            cam.sub_info = self.create_subscription(
                CameraInfo, cam.topic("camera_info"), self._info_callback(cam), in_qos
            )
        # The single camera's objects under their historical names.
        first = self.cameras[0]
        self.slot, self.stats, self.sub_image = first.slot, first.stats, first.sub_image
        self.pub_labels, self.pub_color, self.pub_overlay = first.pub_labels, first.pub_color, first.pub_overlay
        self.pub_confidence, self.pub_info, self.pub_table = first.pub_confidence, first.pub_info, first.pub_table
        self.diag_timer = self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._work, name="seg_worker", daemon=True)
        self._worker.start()
        topics = ", ".join(f"'{cam.sub_image.topic_name}'" for cam in self.cameras)
        self.get_logger().info(
            f"segmenting {topics} ({p['input_transport']}, {p['qos_reliability']}, depth {depth}, "
            f"outputs published through {self.publish_path}"
            + (f", batches of up to {self.segmenter.max_batch})" if self.multi_camera else ")")
        )

    @property
    def _camera_info(self) -> CameraInfo | None:
        return self.cameras[0].camera_info

    # ---------------------------------------------------------------- parameters
    def _parameter_value(self, name: str):
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:  # an empty list in a params file has no type: 'cameras: []'
            return self._specs[name].default

    def _validate_startup(self, p: dict) -> None:
        for name, value in p.items():
            reason = check_choice(name, value)
            if reason:
                raise ConfigError(reason)
        try:
            get_variant(p["model"])
            if p["resolution"]:
                parse_resolution(p["resolution"])
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        reason = check_cameras(p["cameras"])
        if reason:
            raise ConfigError(reason)
        # An unquoted mapping in a params file arrives as parameters named class_masks.<mask>, which nothing declares.
        nested = sorted(name for name in self._parameter_overrides if name.startswith("class_masks."))
        if nested:
            raise ConfigError(
                f"class_masks must be one string holding a YAML mapping, quoted in a params file (class_masks: "
                f"'{{drivable: [road, sidewalk]}}'), got the parameters {', '.join(nested)}"
            )
        try:  # checked before the model loads: the class names are the variant's dataset's
            self._class_masks = parse_class_masks(p["class_masks"], class_table(get_variant(p["model"]).dataset)[0])
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if p["frame_path"] == "device":  # refused before any model is loaded
            try:
                reason = check_frame_path(p["frame_path"], resolve_backend_name(p["backend"]))
            except ValueError as exc:
                reason = str(exc)
            if reason:
                raise ConfigError(reason)

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        updates = {}
        for param in params:
            if param.name not in RUNTIME_PARAMETERS:
                if param.name in self._specs:
                    return SetParametersResult(successful=False, reason=f"{param.name} is read-only (restart the node)")
                continue  # parameters this node does not own (use_sim_time, ...)
            value = param.value
            reason = check_choice(param.name, value)
            if param.name == "overlay_alpha" and not (isinstance(value, float) and 0.0 <= value <= 1.0):
                reason = f"overlay_alpha must be a float within [0, 1], got {value!r}"
            low, high = self._specs[param.name].int_range or (None, None)
            if low is not None and not (isinstance(value, int) and low <= value <= high):
                reason = f"{param.name} must be an integer within [{low}, {high}], got {value!r}"
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            updates[param.name] = value
        self._runtime.update(updates)  # dict.update of a few keys: atomic enough for the worker's reads
        return SetParametersResult(successful=True)

    # ---------------------------------------------------------------- callbacks
    def _image_callback(self, cam: _Camera):
        def on_image(msg) -> None:
            with cam.stats.lock:
                cam.stats.frames_in += 1
            cam.slot.put(msg)

        return on_image

    def _info_callback(self, cam: _Camera):
        def on_camera_info(msg: CameraInfo) -> None:
            cam.camera_info = msg

        return on_camera_info

    # ---------------------------------------------------------------- worker
    def _work(self) -> None:
        while not self._stop.is_set():
            taken = self.slots.take(self.segmenter.max_batch, self.batch_wait_s, timeout=0.1)
            if not taken:
                continue
            try:
                self._process([(self.cameras[i], msg) for i, msg in taken])
            except Exception as exc:  # noqa: BLE001 - the node must survive a failed network call
                if self._stop.is_set() or not self.context.ok():
                    break
                for i, _ in taken:
                    self._bad_frame(self.cameras[i], f"{type(exc).__name__}: {exc}")

    def _bad_frame(self, cam: _Camera, reason: str) -> None:
        with cam.stats.lock:
            cam.stats.bad += 1
            cam.stats.last_error = reason
        where = f" from camera '{cam.name}'" if cam.name else ""
        self.get_logger().error(f"skipping input frame{where}: {reason}", throttle_duration_sec=ERROR_THROTTLE_S)

    def _wanted(self, cam: _Camera, rt: dict) -> dict[str, bool]:
        return {
            "labels": rt["publish_labels"] and cam.pub_labels.get_subscription_count() > 0,
            "color": rt["publish_color"] and cam.pub_color.get_subscription_count() > 0,
            "overlay": rt["publish_overlay"] and cam.pub_overlay.get_subscription_count() > 0,
            "confidence": rt["publish_confidence"] and cam.pub_confidence.get_subscription_count() > 0,
            "camera_info": cam.camera_info is not None and cam.pub_info.get_subscription_count() > 0,
            "planner": cam.planner.wanted(rt),
        }

    def _process(self, frames: list[tuple[_Camera, object]]) -> None:
        """Decode every frame (a bad one is counted for its camera and left out), run the good ones through the
        network together, then post-process and publish each camera's outputs."""
        rt = dict(self._runtime)
        jobs = []
        for cam, msg in frames:
            want = self._wanted(cam, rt)
            if not any(want.values()):
                with cam.stats.lock:
                    cam.stats.idle += 1
                continue
            try:
                if self.compressed:
                    image, order = compressed_to_image(msg)
                else:
                    msg = image_from_cdr(msg)
                    image, order = msg_to_image(msg)
                processing.check_image(image)
            except ValueError as exc:
                self._bad_frame(cam, str(exc))
                continue
            jobs.append(_Job(cam, msg, image, order, want))
        if not jobs:
            return
        t0 = time.perf_counter()
        images, orders = [job.image for job in jobs], [job.order for job in jobs]
        if self.device_pipeline is None:
            logits = self.segmenter.logits_batch(images, orders)
        else:
            # On the device: a CUDA out-of-memory error raised here counts every frame of the batch as bad (_work)
            batch = self.segmenter.device_logits_batch(images, orders)
            logits = batch.logits
            for job, frame in zip(jobs, batch.frames, strict=True):
                job.frame = frame
        infer_ms = (time.perf_counter() - t0) * 1e3
        self.network.add(len(jobs), infer_ms)
        compress = []  # every camera's raw outputs go out before any image is compressed
        for job, one in zip(jobs, logits, strict=True):
            try:
                compress.append((job, self._publish(job, one, rt, infer_ms)))
            except Exception as exc:  # noqa: BLE001 - one camera's failure must not cost the others their outputs
                if self._stop.is_set() or not self.context.ok():
                    raise
                self._bad_frame(job.camera, f"{type(exc).__name__}: {exc}")
        for job, pending in compress:
            try:
                pending()
            except Exception as exc:  # noqa: BLE001 - as above
                if self._stop.is_set() or not self.context.ok():
                    raise
                self._bad_frame(job.camera, f"compressed outputs: {type(exc).__name__}: {exc}")

    def _publish(self, job: _Job, logits: np.ndarray, rt: dict, infer_ms: float) -> Callable[[], None]:
        """Publish the frame's raw outputs; returns what publishes its compressed ones."""
        cam, want, image, header = job.camera, job.want, job.image, job.msg.header
        in_size = image.shape[:2]
        out_size = tuple(self.segmenter.resolution) if rt["mask_resolution"] == "network" else in_size
        mode = rt["postprocess_mode"]
        # Labels are computed straight into their message's pixels: their only copy before the middleware's. The
        # loaned array stays valid for the outputs below (this publisher's buffer is reused at its next frame).
        labels_loan = (
            cam.images["labels"].loan(out_size, self.label_dtype, self.label_encoding, header)
            if want["labels"]
            else contextlib.nullcontext()
        )
        pipe = self.device_pipeline
        with labels_loan as into:
            t0 = time.perf_counter()
            if pipe is None:
                labels, conf = processing.postprocess(logits, out_size, mode, want["confidence"], out=into)
            else:  # labels stay on the device for the colours and the overlay; only uint8 comes back
                device_labels, conf = pipe.postprocess(logits, out_size, mode, want["confidence"])
                labels = pipe.download(device_labels, into)
                conf = None if conf is None else pipe.download(conf)
            post_ms = (time.perf_counter() - t0) * 1e3
        overlay = None
        if pipe is not None:
            overlay = self._publish_device_images(job, device_labels, rt)
        elif want["color"]:
            colours = processing.colorize(labels, self.segmenter.palette)
            cam.images["color"].publish(colours, "rgb8", header)
        if want["overlay"] and pipe is None:
            with cam.images["overlay"].loan((*out_size, 3), np.uint8, "bgr8", header) as into:
                overlay = self._overlay_bgr(job, labels, out_size, rt, into)
        if want["confidence"]:
            if rt["confidence_encoding"] == "mono8":
                conf8 = np.clip(np.rint(np.nan_to_num(conf) * 255.0), 0, 255).astype(np.uint8)
                cam.images["confidence"].publish(conf8, "mono8", header)
            else:
                cam.images["confidence"].publish(np.asarray(conf, dtype="<f4"), "32FC1", header)
        if want["camera_info"]:
            cam.pub_info.publish(scale_camera_info(cam.camera_info, in_size, out_size, header))
        masks = cam.planner.publish_masks(want["planner"], labels, header)

        now_ns = self.get_clock().now().nanoseconds
        stamp_ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        # checked once the outputs are out: it only counts and warns
        finite = processing.all_finite(logits) if pipe is None else pipe.all_finite(logits)
        with cam.stats.lock:
            cam.stats.frames_out += 1
            cam.stats.infer_ms.append(infer_ms)
            cam.stats.post_ms.append(post_ms)
            cam.stats.segment_ms.append(infer_ms + post_ms)
            if not finite:
                cam.stats.nan += 1
            if stamp_ns > 0:
                cam.stats.latency_ms.append((now_ns - stamp_ns) / 1e6)
        if not finite:
            self.get_logger().warn("network output has NaN/Inf values", throttle_duration_sec=ERROR_THROTTLE_S)

        def compress() -> None:
            # The loaned label and overlay buffers stay readable until their publishers' next frame.
            cam.planner.publish_compressed(
                want["planner"],
                masks,
                labels,
                lambda: processing.colorize(labels, self.palette_bgr),
                lambda: overlay if overlay is not None else self._overlay_bgr(job, labels, out_size, rt),
                header,
                int(rt["jpeg_quality"]),
            )

        return compress

    def _overlay_bgr(
        self, job: _Job, labels: np.ndarray, out_size: tuple[int, int], rt: dict, out: np.ndarray | None = None
    ) -> np.ndarray:
        """The overlay in BGR order (into ``out`` when given)."""
        # Blended in the camera's own channel order: bgr8 input needs no swap on the way in, nor on the way out,
        # where the blend is written straight into the message.
        image = job.image
        base = image if out_size == image.shape[:2] else cv2.resize(image, out_size[::-1], interpolation=cv2.INTER_AREA)
        palette = self.palette_bgr if job.order == "bgr" else self.segmenter.palette
        alpha = float(rt["overlay_alpha"])
        if job.order == "bgr":
            return processing.overlay(base, labels, palette, alpha, out=out)
        return cv2.cvtColor(processing.overlay(base, labels, palette, alpha), cv2.COLOR_RGB2BGR, dst=out)

    def _publish_device_images(self, job: _Job, labels, rt: dict) -> np.ndarray | None:
        """Colours and overlay of the device frame path: computed on the device, only their uint8 pixels come
        back, the overlay's straight into its message (returned, for its compressed twin)."""
        pipe, cam, header = self.device_pipeline, job.camera, job.msg.header
        if job.want["color"]:
            cam.images["color"].publish(pipe.download(pipe.colorize(labels, "rgb")), "rgb8", header)
        if job.want["overlay"]:
            blend = pipe.overlay(job.frame, labels, job.order, float(rt["overlay_alpha"]), out_order="bgr")
            with cam.images["overlay"].loan(tuple(blend.shape), np.uint8, "bgr8", header) as into:
                pipe.download(blend, into)
            return into
        return None

    # ---------------------------------------------------------------- diagnostics
    def diagnostics_status(self, cam: _Camera | None = None) -> DiagnosticStatus:
        """The status of one camera (default: the first); with one camera it also carries the network's facts."""
        cam = cam if cam is not None else self.cameras[0]
        rate_in, rate_out = cam.stats.rates()
        s = cam.stats
        with s.lock:
            infer = list(s.infer_ms)[-DIAGNOSTICS_WINDOW:]
            post = list(s.post_ms)[-DIAGNOSTICS_WINDOW:]
            segment = list(s.segment_ms)[-DIAGNOSTICS_WINDOW:]
            latency = list(s.latency_ms)[-DIAGNOSTICS_WINDOW:]
            counters = {
                "frames_in": s.frames_in,
                "frames_out": s.frames_out,
                "dropped_frames": cam.slot.dropped,
                "bad_frames": s.bad,
                "nan_frames": s.nan,
                "idle_frames": s.idle,
            }
            last_error = s.last_error
        values = {
            "input_rate_hz": f"{rate_in:.2f}",
            "output_rate_hz": f"{rate_out:.2f}",
            "inference_ms": f"{np.mean(infer):.2f}" if infer else "nan",
            "inference_ms_max": f"{max(infer):.2f}" if infer else "nan",
            "postprocess_ms": f"{np.mean(post):.2f}" if post else "nan",
            "segment_ms_p50": f"{_percentile(segment, 50):.2f}" if segment else "nan",
            "latency_ms": f"{np.mean(latency):.2f}" if latency else "nan",
            "latency_ms_p90": f"{_percentile(latency, 90):.2f}" if latency else "nan",
            **{k: str(v) for k, v in counters.items()},
            **cam.planner.diagnostics(),
        }
        fqn = self.get_fully_qualified_name()
        if self.multi_camera:
            status = DiagnosticStatus(name=f"{fqn}: camera {cam.name}")
            values["camera"] = cam.name
            values["image_topic"] = cam.sub_image.topic_name
        else:
            status = DiagnosticStatus(name=f"{fqn}: segmentation")
            values.update(self.info)
        values["last_error"] = last_error
        status.hardware_id = f"{self.info.get('backend', '')}/{self.info.get('device', '')}"
        status.level, status.message = DiagnosticStatus.OK, "ok"
        if counters["nan_frames"]:
            status.level, status.message = DiagnosticStatus.ERROR, "network produced NaN/Inf"
        elif counters["frames_in"] == 0:
            status.level, status.message = DiagnosticStatus.WARN, "no input frames yet"
        elif counters["bad_frames"]:
            status.level, status.message = DiagnosticStatus.WARN, f"bad input frames: {last_error}"
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        return status

    def network_status(self) -> DiagnosticStatus:
        """The shared network: batches run, frames per batch, time per batch and per frame, backend facts."""
        snap = self.network.snapshot()
        values = {
            "cameras": str(len(self.cameras)),
            "batches": str(snap["batches"]),
            "frames": str(snap["frames"]),
            "frames_per_batch": f"{snap['frames_per_batch']:.2f}",
            "batch_ms": f"{snap['batch_ms']:.2f}",
            "frame_ms": f"{snap['frame_ms']:.2f}",
            "batch_wait_ms": f"{self.batch_wait_s * 1e3:.1f}",
            **self.info,
        }
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: network")
        status.hardware_id = f"{self.info.get('backend', '')}/{self.info.get('device', '')}"
        status.level, status.message = DiagnosticStatus.OK, "ok"
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        return status

    def _publish_diagnostics(self) -> None:
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        if self.multi_camera:
            array.status = [*(self.diagnostics_status(cam) for cam in self.cameras), self.network_status()]
        else:
            array.status = [self.diagnostics_status()]
        self.pub_diag.publish(array)

    # ---------------------------------------------------------------- shutdown
    def stop(self, timeout: float = 1.5) -> None:
        """Stop the worker thread (waits for the frames in progress, at most ``timeout`` s)."""
        self._stop.set()
        if self.slots is not None:
            self.slots.close()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout)

    def destroy_node(self) -> None:
        self.stop()
        rcl_serialized.destroy_serialized_subscriptions(self)  # not destroyed with the node
        super().destroy_node()
        if self.segmenter is not None:
            self.segmenter.close()


def usage() -> str:
    """``seg_node --help``: how to start it and every parameter with its default."""
    rows = [f"  {name} ({p.default!r}{', read-only' if p.read_only else ''}): {p.description}"
            for name, p in _parameter_table().items()]  # fmt: skip
    rows += [
        f"  {o.name} ({o.default!r}, read-only): {o.description} [{'/'.join(o.backends)}]" for o in BACKEND_OPTIONS
    ]
    head = __doc__.split("\n\nTopics")[0].replace("``", "")
    return "\n".join([head, "", "Parameters (after --ros-args: -p NAME:=VALUE, or --params-file FILE):", *rows])


def main(args: Sequence[str] | None = None) -> int:
    """Run the node until SIGINT/SIGTERM; returns the process exit status (see the module docstring)."""
    argv = list(sys.argv if args is None else args)
    try:
        node_args = remove_ros_args(argv)
    except Exception as exc:  # rcl's UnknownROSArgsError: a pybind11 class, not importable under one name everywhere
        if type(exc).__name__ != "UnknownROSArgsError":
            raise
        print(f"seg_node: unknown ROS arguments {exc}; 'seg_node --help' lists the node's parameters", file=sys.stderr)
        return 2
    if any(a in ("-h", "--help") for a in node_args[1:]):
        print(usage())
        return 0
    retain_freed_memory()  # before rclpy: DDS's frame-sized buffers are reused too
    rclpy.init(args=argv)
    logger = rclpy.logging.get_logger("seg_node")
    node = None
    code = 0
    try:
        node = SegNode()
        if node.build_only:
            node.get_logger().info("build_only: model built, exiting")
        else:
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ConfigError as exc:
        logger.fatal(f"invalid parameter: {exc}")
        code = 2
    except Exception as exc:  # noqa: BLE001 - a clear one-line message instead of a traceback
        logger.fatal(f"cannot start: {type(exc).__name__}: {exc}")
        code = 1
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
