"""``seg_node``: real-time EfficientViT semantic segmentation of a camera stream.

    ros2 run evit_ros seg_node --ros-args -r image:=/camera/image_raw -p resolution:=512x1024
    python -m evit_ros.ros.seg_node --ros-args -p model:=b0-cityscapes -p backend:=torch

Topics (all relative, so a namespace or remapping places them):

* in  ``image`` (sensor_msgs/Image) or ``image/compressed`` (sensor_msgs/CompressedImage) when
  ``input_transport:=compressed``; ``camera_info`` (sensor_msgs/CameraInfo, optional).
* out ``segmentation/labels`` (mono8 class ids, mono16 above 256 classes), ``segmentation/color`` (rgb8),
  ``segmentation/overlay`` (bgr8), ``segmentation/confidence`` (32FC1 probability in [0, 1], or mono8
  ``round(255 * p)``), ``segmentation/camera_info`` (the input camera_info rescaled to the output size),
  ``segmentation/class_table`` (std_msgs/String, JSON, transient local, published once), ``/diagnostics``.

Every output carries the input header unchanged. An output nobody subscribes to is not computed, and with no
subscriber at all the network does not run.

Real time: the input subscription keeps one message (depth ``qos_depth``, default 1); the callback only
drops the message into a one-frame slot. A worker thread takes the newest frame and runs inference, so a
camera faster than the network makes the node skip frames (counted as ``dropped``) instead of queueing them
and falling behind.

Exit status: 0 after SIGINT/SIGTERM or a finished ``build_only`` run; 2 for an invalid parameter value; 1 when
the model cannot be loaded (missing checkpoint, unavailable backend, ...).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
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
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String

from evit_ros.io.encodings import encode_labels
from evit_ros.network.variants import DEFAULT_MODEL, VARIANTS, get_variant, parse_resolution
from evit_ros.pipeline import processing
from evit_ros.ros.conversions import compressed_to_rgb, image_to_msg, msg_to_rgb
from evit_ros.runtime.options import BACKEND_OPTIONS, normalise_options

__all__ = ["CLASS_TABLE_FORMAT", "ConfigError", "FrameSlot", "SegNode", "class_table_json", "main", "scale_camera_info"]

CLASS_TABLE_FORMAT = "evit_ros/class_table/1"
DIAGNOSTICS_PERIOD_S = 1.0
ERROR_THROTTLE_S = 5.0

CHOICES: dict[str, tuple[str, ...]] = {
    "mask_resolution": ("input", "network"),
    "postprocess_mode": ("exact", "fast"),
    "confidence_encoding": ("32FC1", "mono8"),
    "qos_reliability": ("best_effort", "reliable"),
    "input_transport": ("raw", "compressed"),
    "precision": ("fp32", "fp16", "int8"),
    "backend": ("auto", "tensorrt", "torch", "onnxruntime"),
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
        "backend": _Param("auto", "auto | tensorrt | torch | onnxruntime", True),
        "precision": _Param("fp32", "fp32 | fp16 | int8 (what the backend supports)", True),
        "engine_cache_dir": _Param("", "where ONNX files / TensorRT engines are cached ('' = default cache)", True),
        "device": _Param("", "cpu, cuda, cuda:N ('' = the backend's choice)", True),
        "num_threads": _Param(0, "CPU threads for torch / ONNX Runtime (0 = library default)", True, (0, 256)),
        "build_only": _Param(False, "load the model, build the engine / ONNX file, then exit 0", True),
        "input_transport": _Param("raw", "raw: sensor_msgs/Image on 'image'; compressed: 'image/compressed'", True),
        "qos_reliability": _Param("best_effort", "input reliability: best_effort (REP-2003) | reliable", True),
        "qos_depth": _Param(1, "history depth of the input subscription and of the outputs", True, (1, 100)),
        "mask_resolution": _Param("input", "output size: input (the camera's) | network (the model's HxW)", False),
        "postprocess_mode": _Param(
            "exact", "exact: bicubic logits upsampling then argmax (official); fast: argmax then nearest", False
        ),
        "overlay_alpha": _Param(0.5, "weight of the class colours in segmentation/overlay", False, None, (0.0, 1.0)),
        "publish_labels": _Param(True, "publish segmentation/labels", False),
        "publish_color": _Param(True, "publish segmentation/color", False),
        "publish_overlay": _Param(True, "publish segmentation/overlay", False),
        "publish_confidence": _Param(False, "publish segmentation/confidence", False),
        "confidence_encoding": _Param("32FC1", "32FC1 (probability 0..1) | mono8 (round(255 * probability))", False),
    }


_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}  # fmt: skip


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


class FrameSlot:
    """A one-frame mailbox: ``put`` replaces an untaken frame (counted as dropped), ``take`` waits for one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item = None
        self.dropped = 0
        self._closed = False

    def put(self, item) -> bool:
        """Store ``item``; True when it replaced a frame the worker never took."""
        with self._cond:
            replaced = self._item is not None
            if replaced:
                self.dropped += 1
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float):
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


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


def _percentile(values, q: float) -> float:
    return float(np.percentile(np.fromiter(values, dtype=np.float64), q)) if values else float("nan")


class SegNode(Node):
    """Semantic segmentation node; see the module docstring for topics and parameters."""

    def __init__(self, node_name: str = "seg_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self._specs = _parameter_table()
        try:
            for name, spec in self._specs.items():
                self.declare_parameter(name, spec.default, _descriptor(name, spec))
        except ParameterException as exc:  # wrong type or out of range, from --ros-args / a params file
            raise ConfigError(str(exc)) from exc
        p = {name: self.get_parameter(name).value for name in self._specs}
        self._validate_startup(p)
        self.build_only = bool(p["build_only"])
        backend_options = declare_backend_options(self)

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
        )
        self.info = self.segmenter.describe()
        self.get_logger().info("model ready: " + ", ".join(f"{k}={v}" for k, v in self.info.items()))
        self._runtime = {name: p[name] for name in RUNTIME_PARAMETERS}
        self.stats = _Stats()
        self.slot = FrameSlot()
        self._stop = threading.Event()
        self._camera_info: CameraInfo | None = None
        self._worker: threading.Thread | None = None
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
        self.pub_labels = self.create_publisher(Image, "segmentation/labels", out_qos)
        self.pub_color = self.create_publisher(Image, "segmentation/color", out_qos)
        self.pub_overlay = self.create_publisher(Image, "segmentation/overlay", out_qos)
        self.pub_confidence = self.create_publisher(Image, "segmentation/confidence", out_qos)
        self.pub_info = self.create_publisher(CameraInfo, "segmentation/camera_info", out_qos)
        self.pub_table = self.create_publisher(String, "segmentation/class_table", latched)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        label_encoding = "mono8" if processing.label_dtype(self.segmenter.num_classes) == np.uint8 else "mono16"
        self.pub_table.publish(
            String(
                data=class_table_json(p["model"], self.segmenter.class_names, self.segmenter.palette, label_encoding)
            )
        )
        self.add_on_set_parameters_callback(self._on_set_parameters)

        if self.compressed:
            self.sub_image = self.create_subscription(CompressedImage, "image/compressed", self._on_image, in_qos)
        else:
            self.sub_image = self.create_subscription(Image, "image", self._on_image, in_qos)
        self.sub_info = self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, in_qos)
        self.diag_timer = self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._work, name="seg_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"segmenting '{self.sub_image.topic_name}' ({p['input_transport']}, {p['qos_reliability']}, depth {depth})"
        )

    # ---------------------------------------------------------------- parameters
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
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            updates[param.name] = value
        self._runtime.update(updates)  # dict.update of a few keys: atomic enough for the worker's reads
        return SetParametersResult(successful=True)

    # ---------------------------------------------------------------- callbacks
    def _on_image(self, msg) -> None:
        with self.stats.lock:
            self.stats.frames_in += 1
        self.slot.put(msg)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    # ---------------------------------------------------------------- worker
    def _work(self) -> None:
        while not self._stop.is_set():
            msg = self.slot.take(timeout=0.1)
            if msg is None:
                continue
            try:
                self._process(msg)
            except ValueError as exc:  # bad input frame
                self._bad_frame(str(exc))
            except Exception as exc:  # noqa: BLE001 - the node must survive one bad frame
                if self._stop.is_set() or not self.context.ok():
                    break
                self._bad_frame(f"{type(exc).__name__}: {exc}")

    def _bad_frame(self, reason: str) -> None:
        with self.stats.lock:
            self.stats.bad += 1
            self.stats.last_error = reason
        self.get_logger().error(f"skipping input frame: {reason}", throttle_duration_sec=ERROR_THROTTLE_S)

    def _process(self, msg) -> None:
        rt = dict(self._runtime)
        want_labels = rt["publish_labels"] and self.pub_labels.get_subscription_count() > 0
        want_color = rt["publish_color"] and self.pub_color.get_subscription_count() > 0
        want_overlay = rt["publish_overlay"] and self.pub_overlay.get_subscription_count() > 0
        want_conf = rt["publish_confidence"] and self.pub_confidence.get_subscription_count() > 0
        want_info = self._camera_info is not None and self.pub_info.get_subscription_count() > 0
        if not (want_labels or want_color or want_overlay or want_conf or want_info):
            with self.stats.lock:
                self.stats.idle += 1
            return

        image = compressed_to_rgb(msg) if self.compressed else msg_to_rgb(msg)
        header = msg.header
        in_size = image.shape[:2]
        out_size = tuple(self.segmenter.resolution) if rt["mask_resolution"] == "network" else in_size

        t0 = time.perf_counter()
        logits = self.segmenter.logits(image)
        infer_ms = (time.perf_counter() - t0) * 1e3
        finite = bool(np.isfinite(logits).all())
        labels, conf = processing.postprocess(logits, out_size, rt["postprocess_mode"], want_conf)

        if want_labels:
            encoding, step, data = encode_labels(labels)
            self.pub_labels.publish(_raw_image(header, labels.shape, encoding, step, data))
        if want_color:
            self.pub_color.publish(image_to_msg(processing.colorize(labels, self.segmenter.palette), "rgb8", header))
        if want_overlay:
            base = image if out_size == in_size else cv2.resize(image, out_size[::-1], interpolation=cv2.INTER_AREA)
            blended = processing.overlay(base, labels, self.segmenter.palette, float(rt["overlay_alpha"]))
            self.pub_overlay.publish(image_to_msg(blended, "bgr8", header))
        if want_conf:
            if rt["confidence_encoding"] == "mono8":
                conf8 = np.clip(np.rint(np.nan_to_num(conf) * 255.0), 0, 255).astype(np.uint8)
                self.pub_confidence.publish(_raw_image(header, conf8.shape, "mono8", conf8.strides[0], conf8.tobytes()))
            else:
                conf32 = np.ascontiguousarray(conf, dtype="<f4")
                self.pub_confidence.publish(
                    _raw_image(header, conf32.shape, "32FC1", conf32.strides[0], conf32.tobytes())
                )
        if want_info:
            self.pub_info.publish(scale_camera_info(self._camera_info, in_size, out_size, header))

        now_ns = self.get_clock().now().nanoseconds
        stamp_ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        with self.stats.lock:
            self.stats.frames_out += 1
            self.stats.infer_ms.append(infer_ms)
            if not finite:
                self.stats.nan += 1
            if stamp_ns > 0:
                self.stats.latency_ms.append((now_ns - stamp_ns) / 1e6)
        if not finite:
            self.get_logger().warn("network output has NaN/Inf values", throttle_duration_sec=ERROR_THROTTLE_S)

    # ---------------------------------------------------------------- diagnostics
    def diagnostics_status(self) -> DiagnosticStatus:
        rate_in, rate_out = self.stats.rates()
        s = self.stats
        with s.lock:
            infer = list(s.infer_ms)[-30:]
            latency = list(s.latency_ms)[-30:]
            counters = {
                "frames_in": s.frames_in,
                "frames_out": s.frames_out,
                "dropped_frames": self.slot.dropped,
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
            "latency_ms": f"{np.mean(latency):.2f}" if latency else "nan",
            "latency_ms_p90": f"{_percentile(latency, 90):.2f}" if latency else "nan",
            **{k: str(v) for k, v in counters.items()},
            **{k: str(v) for k, v in self.info.items()},
            "last_error": last_error,
        }
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: segmentation")
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

    def _publish_diagnostics(self) -> None:
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [self.diagnostics_status()]
        self.pub_diag.publish(array)

    # ---------------------------------------------------------------- shutdown
    def stop(self, timeout: float = 1.5) -> None:
        """Stop the worker thread (waits for the frame in progress, at most ``timeout`` s)."""
        self._stop.set()
        self.slot.close()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout)

    def destroy_node(self) -> None:
        self.stop()
        super().destroy_node()
        self.segmenter.close()


def _raw_image(header, shape: tuple[int, ...], encoding: str, step: int, data: bytes) -> Image:
    import array

    msg = Image()
    msg.header = header
    msg.height, msg.width = int(shape[0]), int(shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(step)
    buf = array.array("B")
    buf.frombytes(data)
    msg.data = buf
    return msg


def main(args: Sequence[str] | None = None) -> int:
    """Run the node until SIGINT/SIGTERM; returns the process exit status (see the module docstring)."""
    rclpy.init(args=args)
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
