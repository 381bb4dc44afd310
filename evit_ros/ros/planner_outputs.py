"""What planners on another computer read: image_transport ``compressed`` topics, class-group masks and
``vision_msgs/LabelInfo``.

* ``segmentation/{labels,color,overlay}/compressed`` (sensor_msgs/CompressedImage): what ROS 2's
  ``compressed_image_transport`` would publish beside each raw topic, so ``ros2 run image_transport republish
  compressed raw`` (or any image_transport subscriber with ``compressed`` transport) restores the raw image.
  Labels (mono8 / mono16) and colours are lossless PNG; the overlay is JPEG at ``jpeg_quality``.
  :func:`evit_ros.io.encodings.transport_format` cites the plugin's format string.
* ``segmentation/mask/<name>`` (mono8, 0 or 255) and its ``/compressed`` (PNG): one mask per group of classes
  named by the ``class_masks`` parameter (:func:`evit_ros.network.classes.parse_class_masks`), a table look-up
  over the label map (no second pass over the logits), at the labels' size: ``segmentation/camera_info``
  describes them.
* ``segmentation/label_info`` (vision_msgs/LabelInfo, transient local) where vision_msgs is importable: the class
  table nav2's semantic_segmentation_layer and vision_msgs users read.

Everything here is lazy: a topic nobody subscribes to costs one subscription count per frame. Compressed images
are encoded by the node's worker after every raw output of the frame has been published.
"""

from __future__ import annotations

import array
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from evit_ros.io.encodings import encode_transport, label_dtype_encoding
from evit_ros.pipeline import processing
from evit_ros.ros.image_publisher import ImagePublisher

__all__ = [
    "COMPRESSED_OUTPUTS",
    "LABEL_INFO_TOPIC",
    "PlannerOutputs",
    "label_info_publisher",
]

COMPRESSED_OUTPUTS = ("labels", "color", "overlay")  # the raw outputs that get a /compressed twin
LABEL_INFO_TOPIC = "segmentation/label_info"
_WINDOW = 30  # encodings behind each size and time in /diagnostics


def label_info_publisher(node: Node, topic: str, class_names: Sequence[str], qos: QoSProfile) -> Publisher | None:
    """Publish the class table once as ``vision_msgs/LabelInfo`` on ``topic`` (``qos`` should be transient local);
    None where vision_msgs is not importable. Class ids are the label values; threshold 0: nothing is cut."""
    try:
        from vision_msgs.msg import LabelInfo, VisionClass
    except ImportError:
        return None
    msg = LabelInfo(threshold=0.0)
    msg.header.stamp = node.get_clock().now().to_msg()
    msg.class_map = [VisionClass(class_id=i, class_name=name) for i, name in enumerate(class_names)]
    publisher = node.create_publisher(LabelInfo, topic, qos)
    publisher.publish(msg)
    return publisher


@dataclass
class _Mask:
    name: str
    lut: np.ndarray
    image: ImagePublisher
    compressed: Publisher


@dataclass
class Wanted:
    """What one frame needs beyond the raw outputs: compressed outputs and masks (raw, compressed)."""

    compressed: tuple[str, ...]
    masks: tuple[tuple[_Mask, bool, bool], ...]

    def __bool__(self) -> bool:
        return bool(self.compressed or self.masks)


_NOTHING = Wanted((), ())


@dataclass
class _EncodeStats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    mask_frames: int = 0  # frames whose masks were computed
    compressed_frames: int = 0  # frames with at least one compressed image encoded
    mask_ms: deque = field(default_factory=lambda: deque(maxlen=_WINDOW))
    encoded: dict[str, deque] = field(default_factory=dict)  # output -> (bytes, ms) of its latest encodings


class PlannerOutputs:
    """One camera's compressed topics and masks (see the module docstring). ``topic`` places a relative name in the
    camera's namespace."""

    def __init__(
        self,
        node: Node,
        topic: Callable[[str], str],
        qos: QoSProfile,
        masks: Mapping[str, Sequence[int]],
        label_dtype: np.dtype,
        publish_path: str,
    ) -> None:
        self.label_encoding = label_dtype_encoding(label_dtype)
        self.compressed = {
            out: node.create_publisher(CompressedImage, topic(f"segmentation/{out}/compressed"), qos)
            for out in COMPRESSED_OUTPUTS
        }
        self.masks = [
            _Mask(
                name,
                processing.class_lut(ids, label_dtype),
                ImagePublisher(node.create_publisher(Image, topic(f"segmentation/mask/{name}"), qos), publish_path),
                node.create_publisher(CompressedImage, topic(f"segmentation/mask/{name}/compressed"), qos),
            )
            for name, ids in masks.items()
        ]
        self.stats = _EncodeStats()
        for out in (*COMPRESSED_OUTPUTS, *(f"mask_{m.name}" for m in self.masks)):
            self.stats.encoded[out] = deque(maxlen=_WINDOW)

    def wanted(self, rt: Mapping[str, object]) -> Wanted:
        """Subscription counts only: the per-frame cost while nobody listens. A compressed twin follows its raw
        output's ``publish_*`` switch."""
        compressed = tuple(
            out for out in COMPRESSED_OUTPUTS if rt[f"publish_{out}"] and self.compressed[out].get_subscription_count()
        )
        masks = []
        for mask in self.masks:
            raw = mask.image.publisher.get_subscription_count() > 0
            packed = mask.compressed.get_subscription_count() > 0
            if raw or packed:
                masks.append((mask, raw, packed))
        return Wanted(compressed, tuple(masks)) if compressed or masks else _NOTHING

    def publish_masks(self, want: Wanted, labels: np.ndarray, header: Header) -> list[tuple[_Mask, np.ndarray]]:
        """Compute the wanted masks from ``labels``, publish the raw ones (each written straight into its message);
        returns the masks still to be compressed."""
        if not want.masks:
            return []
        t0 = time.perf_counter()
        pending = []
        for mask, raw, packed in want.masks:
            if raw:
                with mask.image.loan(labels.shape, np.uint8, "mono8", header) as into:
                    pixels = processing.class_mask(labels, mask.lut, out=into)
            else:
                pixels = processing.class_mask(labels, mask.lut)
            if packed:
                pending.append((mask, pixels))  # a loaned buffer stays readable until this publisher's next frame
        ms = (time.perf_counter() - t0) * 1e3
        with self.stats.lock:
            self.stats.mask_frames += 1
            self.stats.mask_ms.append(ms)
        return pending

    def publish_compressed(
        self,
        want: Wanted,
        masks: list[tuple[_Mask, np.ndarray]],
        labels: np.ndarray,
        colours_bgr: Callable[[], np.ndarray],
        overlay_bgr: Callable[[], np.ndarray],
        header: Header,
        jpeg_quality: int,
    ) -> None:
        """Encode and publish the wanted compressed images; called once every raw output of the frame is out.
        ``colours_bgr`` and ``overlay_bgr`` give those images in the codec's BGR order, computed on demand."""
        if not want.compressed and not masks:
            return
        jobs: list[tuple[str, Publisher, Callable[[], np.ndarray], str, str]] = []
        sources = {"labels": lambda: labels, "color": colours_bgr, "overlay": overlay_bgr}
        encodings = {"labels": (self.label_encoding, "png"), "color": ("rgb8", "png"), "overlay": ("bgr8", "jpeg")}
        for out in want.compressed:
            jobs.append((out, self.compressed[out], sources[out], *encodings[out]))
        for mask, pixels in masks:
            jobs.append((f"mask_{mask.name}", mask.compressed, lambda pixels=pixels: pixels, "mono8", "png"))
        sizes = []
        for out, publisher, source, encoding, codec in jobs:
            t0 = time.perf_counter()
            fmt, data = encode_transport(source(), encoding, codec, jpeg_quality)
            ms = (time.perf_counter() - t0) * 1e3
            payload = array.array("B")
            payload.frombytes(data)
            publisher.publish(CompressedImage(header=header, format=fmt, data=payload))
            sizes.append((out, data.size, ms))
        with self.stats.lock:
            self.stats.compressed_frames += 1
            for out, size, ms in sizes:
                self.stats.encoded[out].append((size, ms))

    def diagnostics(self) -> dict[str, str]:
        """Mean bytes and encoding time per frame of every compressed output (over its latest encodings; nan before
        the first), mean mask time, and how many frames had masks and compressed images made."""
        with self.stats.lock:
            values = {
                "mask_frames": str(self.stats.mask_frames),
                "compressed_frames": str(self.stats.compressed_frames),
                "mask_ms": f"{np.mean(self.stats.mask_ms):.2f}" if self.stats.mask_ms else "nan",
            }
            for out, recent in self.stats.encoded.items():
                sizes, times = zip(*recent, strict=True) if recent else ((), ())
                values[f"{out}_compressed_bytes"] = f"{np.mean(sizes):.0f}" if sizes else "nan"
                values[f"{out}_compressed_ms"] = f"{np.mean(times):.2f}" if times else "nan"
        return values
