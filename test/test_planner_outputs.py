"""Outputs for planners (evit_ros.ros.planner_outputs) over real rclpy / Fast DDS (loopback only, private domain
from conftest): image_transport ``compressed`` topics decoded back to the raw images at 1080p, class-group masks,
laziness, the class-mask parameter's checks, vision_msgs/LabelInfo. The format strings and their source:
test_planner_encoding.py.
"""

from __future__ import annotations

import array
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import stamp as _stamped
from conftest import stamp_ns as _stamp_ns
from conftest import wait_until
from test_planner_encoding import PLUGIN_FORMATS  # the plugin's format strings, with their source

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed")
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402

from evit_ros.io.encodings import decode_transport  # noqa: E402
from evit_ros.network.classes import ADE20K_CLASSES, CITYSCAPES_CLASSES  # noqa: E402
from evit_ros.ros.image_publisher import publish_path  # noqa: E402
from evit_ros.ros.planner_outputs import PlannerOutputs  # noqa: E402
from evit_ros.ros.seg_node import SegNode  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
SIZE_1080P = (1080, 1920)
CITY_MASKS = {"drivable": ["road", "sidewalk"], "people": ["person", "rider"]}
ADE_MASKS = {"ground": ["floor", "road", "grass", "sidewalk"]}


def _yaml_map(masks: dict[str, list[str]]) -> str:
    return "{" + ", ".join(f"{name}: [{', '.join(classes)}]" for name, classes in masks.items()) + "}"


def _wait(predicate, timeout: float = 60.0, step: float = 0.02) -> bool:
    return wait_until(predicate, timeout, step)


def _pixels(msg: Image) -> np.ndarray:
    """A received sensor_msgs/Image as numpy, from its documented layout (is_bigendian honoured)."""
    dtype, channels = {"mono8": ("u1", 1), "mono16": ("u2", 1), "rgb8": ("u1", 3), "bgr8": ("u1", 3)}[msg.encoding]
    dtype = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)
    flat = rows[:, : msg.width * channels * dtype.itemsize].copy().view(dtype)
    return flat.reshape(msg.height, msg.width, channels) if channels == 3 else flat.reshape(msg.height, msg.width)


def _expected_mask(labels: np.ndarray, classes: list[str], names) -> np.ndarray:
    return np.where(np.isin(labels, [list(names).index(c) for c in classes]), 255, 0).astype(np.uint8)


class Harness:
    """Three seg nodes (the official 19-class B0 twice: "lazy" is subscribed to by the laziness test alone, so no
    test depends on another's subscriptions; a 150-class ADE20K B1 with random weights) and a tester node."""

    def __init__(self, weights: Path, ade_weights: Path) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        common = {"backend": "torch", "num_threads": 1, "publish_confidence": False}
        city = {"model": "b0-cityscapes", "weights": str(weights), "resolution": "256x512",
                "class_masks": _yaml_map(CITY_MASKS), **common}  # fmt: skip
        # "fast": 150 channels of bicubic logits at 1080p would need over a gigabyte.
        ade = {"model": "b1-ade20k", "weights": str(ade_weights), "resolution": "128x128", "postprocess_mode": "fast",
               "class_masks": _yaml_map(ADE_MASKS), **common}  # fmt: skip
        self.nodes = {
            ns: SegNode(context=self.context, namespace=f"/{ns}",
                        parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
            for ns, values in (("city", city), ("lazy", city), ("ade", ade))
        }  # fmt: skip
        self.tester = rclpy.create_node("planner_tester", context=self.context)
        self.lock = threading.Lock()
        self.received: dict[str, list] = {}
        self.pubs = {ns: self.tester.create_publisher(Image, f"/{ns}/image", RELIABLE) for ns in self.nodes}
        self.executor = MultiThreadedExecutor(num_threads=3, context=self.context)
        for node in (*self.nodes.values(), self.tester):
            self.executor.add_node(node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        assert _wait(lambda: all(p.get_subscription_count() for p in self.pubs.values()), 20), "no DDS discovery"

    def subscribe(self, msg_type, topic: str, qos: QoSProfile = RELIABLE) -> None:
        """Record ``topic`` from now on (subscriptions stay until the harness closes: destroying one while the
        executor waits on it kills the executor's thread)."""
        if topic in self.received:
            return
        self.received[topic] = []

        def callback(msg, topic=topic):
            with self.lock:
                self.received[topic].append(msg)

        self.tester.create_subscription(msg_type, topic, callback, qos)

    def wait_for(self, topic: str, stamp_ns: int, timeout: float = 120.0):
        found = []

        def check():
            with self.lock:
                found[:] = [m for m in self.received[topic] if _stamp_ns(m.header) == stamp_ns]
            return bool(found)

        assert _wait(check, timeout), f"no message on {topic} for stamp {stamp_ns}"
        return found[0]

    def send(self, ns: str, bgr: np.ndarray) -> tuple[Image, int]:
        msg = Image(height=bgr.shape[0], width=bgr.shape[1], encoding="bgr8", step=bgr.shape[1] * 3)
        msg.data = array.array("B", bgr.tobytes())
        stamp = _stamped(msg)
        self.pubs[ns].publish(msg)
        return msg, stamp

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2)
        for node in self.nodes.values():
            node.destroy_node()
        self.tester.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def ade_random_weights(real_frames, tmp_path_factory) -> Path:
    """Random B1-ADE20K weights (seeded) whose labels vary over a street scene: a freshly initialised network's
    features barely change across the image, so each classifier row is made orthogonal to the mean feature of a
    real frame (and the biases zeroed), leaving the argmax to what does vary."""
    torch = pytest.importorskip("torch")
    from evit_ros.network.variants import get_variant
    from evit_ros.network.weights import RANDOM_WEIGHTS, load_model

    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        model, _ = load_model(get_variant("b1-ade20k"), RANDOM_WEIGHTS)
    classifier = model.head.output_ops[0].op_list[0].conv
    features = []
    classifier.register_forward_hook(lambda module, inputs, output: features.append(inputs[0]))
    frame = cv2.resize(cv2.imread(str(real_frames[0]), cv2.IMREAD_COLOR), (256, 256))
    with torch.no_grad():
        model(torch.from_numpy(frame.transpose(2, 0, 1)[None].astype(np.float32) / 255.0))
        mean = features[0][0].mean(dim=(1, 2))
        weight = classifier.weight[:, :, 0, 0]
        weight -= torch.outer(weight @ mean, mean) / (mean @ mean)
        classifier.bias.zero_()
    path = tmp_path_factory.mktemp("ade") / "b1_ade20k_random_varied.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def harness(b0_checkpoint, ade_random_weights):
    h = Harness(b0_checkpoint, ade_random_weights)
    yield h
    h.close()


@pytest.fixture(scope="module")
def frames_1080p(real_frames) -> list[np.ndarray]:
    """The real Cityscapes frames (2048x1024) resized to 1920x1080."""
    city = [p for p in real_frames if "frankfurt" in p.name]
    return [cv2.resize(cv2.imread(str(p), cv2.IMREAD_COLOR), SIZE_1080P[::-1], interpolation=cv2.INTER_AREA)
            for p in city]  # fmt: skip


# ------------------------------------------------------------------------------------------------- over DDS


def test_masks_and_compressed_topics_cost_nothing_until_subscribed(harness, frames_1080p):
    h, node = harness, harness.nodes["lazy"]
    h.subscribe(Image, "/lazy/segmentation/labels")
    assert _wait(lambda: node.pub_labels.get_subscription_count() > 0, 20)
    _, stamp = h.send("lazy", frames_1080p[0])
    h.wait_for("/lazy/segmentation/labels", stamp)
    values = {kv.key: kv.value for kv in node.diagnostics_status().values}
    assert values["mask_frames"] == "0" and values["compressed_frames"] == "0"
    assert values["labels_compressed_bytes"] == "nan" and values["mask_drivable_compressed_bytes"] == "nan"

    # a raw mask subscriber: masks are computed, nothing is compressed
    h.subscribe(Image, "/lazy/segmentation/mask/people")
    planner = node.cameras[0].planner
    assert _wait(lambda: planner.wanted(node._runtime).masks, 20)
    msg, stamp = h.send("lazy", frames_1080p[0])
    labels = _pixels(h.wait_for("/lazy/segmentation/labels", stamp))
    mask = h.wait_for("/lazy/segmentation/mask/people", stamp)
    assert mask.header == msg.header and mask.encoding == "mono8" and (mask.height, mask.width) == SIZE_1080P
    assert np.array_equal(_pixels(mask), _expected_mask(labels, CITY_MASKS["people"], CITYSCAPES_CLASSES))
    values = {kv.key: kv.value for kv in node.diagnostics_status().values}
    assert int(values["mask_frames"]) >= 1 and values["compressed_frames"] == "0"
    assert float(values["mask_ms"]) > 0


def _round_trip(h: Harness, ns: str, frame: np.ndarray, masks: dict[str, list[str]], class_names) -> dict:
    """Send one 1080p frame to node ``ns`` and compare every compressed output with its raw twin."""
    outputs = ("labels", "color", "overlay", *(f"mask/{m}" for m in masks))
    for out in outputs:
        h.subscribe(Image, f"/{ns}/segmentation/{out}")
        h.subscribe(CompressedImage, f"/{ns}/segmentation/{out}/compressed")
    node = h.nodes[ns]
    planner = node.cameras[0].planner
    wanted = len(masks)

    def all_matched() -> bool:
        want = planner.wanted(node._runtime)
        return len(want.compressed) == 3 and sum(raw and packed for _, raw, packed in want.masks) == wanted

    assert _wait(all_matched, 20), "compressed / mask subscriptions not matched"
    msg, stamp = h.send(ns, frame)
    raw = {out: h.wait_for(f"/{ns}/segmentation/{out}", stamp) for out in outputs}
    packed = {out: h.wait_for(f"/{ns}/segmentation/{out}/compressed", stamp) for out in outputs}
    for out in outputs:
        assert packed[out].header == msg.header, out  # stamp and frame_id of the input
    labels = _pixels(raw["labels"])
    assert labels.shape == SIZE_1080P and raw["labels"].encoding == "mono8"
    for out in ("labels", "color", *(f"mask/{m}" for m in masks)):
        codec = "png"
        assert packed[out].format == PLUGIN_FORMATS[raw[out].encoding, codec], out
        pixels, encoding = decode_transport(packed[out].format, packed[out].data)
        assert encoding == raw[out].encoding, out
        assert pixels.dtype == _pixels(raw[out]).dtype and np.array_equal(pixels, _pixels(raw[out])), out
        assert len(packed[out].data) < raw[out].step * raw[out].height, out
    for name, classes in masks.items():
        assert np.array_equal(_pixels(raw[f"mask/{name}"]), _expected_mask(labels, classes, class_names)), name
    # the overlay is JPEG: close to the raw one, not equal
    assert packed["overlay"].format == PLUGIN_FORMATS["bgr8", "jpeg"]
    pixels, encoding = decode_transport(packed["overlay"].format, packed["overlay"].data)
    overlay = _pixels(raw["overlay"])
    assert encoding == "bgr8" and pixels.shape == overlay.shape
    mse = np.mean((pixels.astype(np.float64) - overlay) ** 2)
    assert 10 * np.log10(255**2 / max(mse, 1e-12)) > 30.0  # PSNR in dB at jpeg_quality 80
    values = {kv.key: kv.value for kv in node.diagnostics_status().values}
    for out in ("labels", "color", "overlay", *(f"mask_{m}" for m in masks)):
        assert int(values[f"{out}_compressed_bytes"]) > 0 and float(values[f"{out}_compressed_ms"]) > 0, out
    return {"labels": labels, "stamp": stamp, "header": msg.header}


def test_round_trip_1080p_19_classes_official_b0(harness, frames_1080p):
    h, node = harness, harness.nodes["city"]
    # the masks' camera_info: the camera's, at the labels' size (the input size here) and with the frame's stamp
    info = CameraInfo(width=1920, height=1080, distortion_model="plumb_bob")
    info.k = [2121.1, 0.0, 1028.4, 0.0, 2389.4, 541.2, 0.0, 0.0, 1.0]
    publisher = h.tester.create_publisher(CameraInfo, "/city/camera_info", RELIABLE)
    h.subscribe(CameraInfo, "/city/segmentation/camera_info")
    assert _wait(lambda: publisher.get_subscription_count() > 0, 20)
    _stamped(info)
    publisher.publish(info)
    assert _wait(lambda: node.cameras[0].camera_info is not None, 20)
    got = _round_trip(h, "city", frames_1080p[1], CITY_MASKS, CITYSCAPES_CLASSES)
    present = set(np.unique(got["labels"]).tolist())
    assert len(present) >= 5  # a real street scene
    assert {0, 1} & present  # road or sidewalk: the drivable mask is not trivially empty
    scaled = h.wait_for("/city/segmentation/camera_info", got["stamp"])
    assert (scaled.height, scaled.width) == SIZE_1080P and scaled.header == got["header"]
    assert np.allclose(scaled.k, info.k)


def test_round_trip_1080p_150_classes(harness, frames_1080p):
    got = _round_trip(harness, "ade", frames_1080p[0], ADE_MASKS, ADE20K_CLASSES)
    present = np.unique(got["labels"])
    assert len(present) >= 5 and present.max() >= len(CITYSCAPES_CLASSES)  # ids a 19-class model never gives


def test_round_trip_mono16_labels(harness):
    """The mono16 path (models above 256 classes) with synthetic labels through the node's own encoder and mask
    code, over DDS."""
    h = harness
    ids = (300, 40000)
    publisher_node = rclpy.create_node("mono16_publisher", context=h.context)
    try:
        planner = PlannerOutputs(publisher_node, lambda t: f"/m16/{t}", RELIABLE, {"high": ids}, np.dtype(np.uint16),
                                 publish_path())  # fmt: skip
        for topic, msg_type in (
            ("segmentation/labels/compressed", CompressedImage),
            ("segmentation/mask/high", Image),
            ("segmentation/mask/high/compressed", CompressedImage),
        ):
            h.subscribe(msg_type, f"/m16/{topic}")  # fmt: skip
        rt = {"publish_labels": True, "publish_color": True, "publish_overlay": True}
        assert _wait(lambda: planner.wanted(rt).compressed == ("labels",) and planner.wanted(rt).masks, 20)
        rng = np.random.default_rng(2)
        blocks = rng.choice(np.array([0, 255, 256, 300, 1000, 40000, 65535], np.uint16), size=(27, 48))
        labels = np.kron(blocks, np.ones((40, 40), np.uint16))  # 1080 x 1920, regions as a label map has
        labels[::7, ::5] = rng.integers(0, 65536, labels[::7, ::5].shape, dtype=np.uint16)  # and every bit pattern
        carrier = Image()
        stamp = _stamped(carrier, "synthetic")
        header = carrier.header
        want = planner.wanted(rt)
        masks = planner.publish_masks(want, labels, header)
        planner.publish_compressed(want, masks, labels, _unused, _unused, header, 80)
        packed = h.wait_for("/m16/segmentation/labels/compressed", stamp)
        assert packed.format == PLUGIN_FORMATS["mono16", "png"] and packed.header == header
        pixels, encoding = decode_transport(packed.format, packed.data)
        assert encoding == "mono16" and pixels.dtype == np.uint16 and np.array_equal(pixels, labels)
        expected = np.where(np.isin(labels, ids), 255, 0).astype(np.uint8)
        assert np.array_equal(_pixels(h.wait_for("/m16/segmentation/mask/high", stamp)), expected)
        packed = h.wait_for("/m16/segmentation/mask/high/compressed", stamp)
        pixels, encoding = decode_transport(packed.format, packed.data)
        assert encoding == "mono8" and np.array_equal(pixels, expected)
    finally:
        publisher_node.destroy_node()


def _unused():
    raise AssertionError("colour and overlay are not subscribed: they must not be computed")


def test_jpeg_quality_is_checked(harness):
    node = harness.nodes["city"]
    for bad in (0, 101):
        result = node.set_parameters([Parameter("jpeg_quality", value=bad)])[0]
        assert not result.successful and "jpeg_quality" in result.reason
    assert node.set_parameters([Parameter("jpeg_quality", value=55)])[0].successful
    assert node._runtime["jpeg_quality"] == 55
    assert node.set_parameters([Parameter("jpeg_quality", value=80)])[0].successful
    assert not node.set_parameters([Parameter("class_masks", value="{a: [road]}")])[0].successful  # read-only


def test_label_info_is_latched(harness):
    pytest.importorskip("vision_msgs.msg", reason="vision_msgs is not installed (a ROS 2 install provides it)")
    from vision_msgs.msg import LabelInfo

    harness.subscribe(LabelInfo, "/city/segmentation/label_info", LATCHED)
    assert _wait(lambda: bool(harness.received["/city/segmentation/label_info"]), 20)
    info = harness.received["/city/segmentation/label_info"][0]
    assert [(c.class_id, c.class_name) for c in info.class_map] == list(enumerate(CITYSCAPES_CLASSES))


def test_label_info_absent_without_vision_msgs(harness):
    try:
        import vision_msgs.msg  # noqa: F401
    except ImportError:
        assert harness.nodes["city"].cameras[0].pub_label_info is None
        return
    pytest.skip("vision_msgs is installed: test_label_info_is_latched covers it")


def _bad_start(b0_checkpoint, *args: str) -> str:
    """Start the node with ``args`` after --ros-args; expect exit status 2 (invalid parameter); its output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "evit_ros.ros.seg_node", "--ros-args", "-r", "__ns:=/bad_masks"]
    for p in ("model:=b0-cityscapes", f"weights:={b0_checkpoint}", "backend:=torch"):
        cmd += ["-p", p]
    proc = subprocess.run([*cmd, *args], check=False, env=env, capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "invalid parameter" in out and "Traceback" not in out, out
    return out


def test_unknown_class_is_rejected_at_start_with_the_valid_ones(b0_checkpoint):
    out = _bad_start(b0_checkpoint, "-p", "class_masks:='{drivable: [road, sidwalk]}'")
    assert "sidwalk" in out and "valid classes: " + ", ".join(CITYSCAPES_CLASSES) in out, out


def test_unquoted_mapping_in_a_params_file_is_rejected(b0_checkpoint, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("/**:\n  ros__parameters:\n    class_masks: {drivable: [road, sidewalk]}\n")
    out = _bad_start(b0_checkpoint, "--params-file", str(params))
    assert "class_masks.drivable" in out and "quoted" in out, out


def test_class_masks_from_a_params_file(harness, b0_checkpoint, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        "/**:\n  ros__parameters:\n    class_masks: '{drivable: [road, sidewalk], people: [person, rider]}'\n"
    )
    overrides = {"model": "b0-cityscapes", "weights": str(b0_checkpoint), "resolution": "128x256",
                 "backend": "torch", "num_threads": 1}  # fmt: skip
    node = SegNode(
        context=harness.context,
        namespace="/params_file",
        cli_args=["--ros-args", "--params-file", str(params)],
        parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()],
    )
    try:
        masks = {mask.name: mask for mask in node.cameras[0].planner.masks}
        assert list(masks) == ["drivable", "people"]
        assert masks["people"].image.publisher.topic_name == "/params_file/segmentation/mask/people"
        assert masks["people"].compressed.topic_name == "/params_file/segmentation/mask/people/compressed"
        assert np.flatnonzero(masks["drivable"].lut).tolist() == [0, 1]  # road, sidewalk
        assert np.flatnonzero(masks["people"].lut).tolist() == [11, 12]  # person, rider
    finally:
        node.destroy_node()


def test_bench_outputs_reports_every_output(camvid_pairs, b0_checkpoint, tmp_path, capsys):
    from evit_ros.cli.bench_outputs import main

    out = tmp_path / "sizes.json"
    frame = str(camvid_pairs[0][0])
    args = [frame, "--weights", str(b0_checkpoint), "--resolution", "256x512", "--backend", "torch", "--size",
            "native", "--repeats", "1", "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    outputs = json.loads(out.read_text())[frame]["outputs"]
    assert set(outputs) >= {"labels", "color", "overlay", "mask_drivable", "mask_people"}
    labels = outputs["labels"]
    assert labels["raw_bytes"] == 360 * 480 and 0 < labels["bytes"] < labels["raw_bytes"] and labels["ms"] > 0
    assert "labels" in capsys.readouterr().out
    assert main([frame, "--masks", "{drivable: [rode]}"]) == 2  # rejected as the node rejects it


def test_masks_follow_network_resolution_with_their_camera_info(harness, frames_1080p):
    """mask_resolution: network (the low-bandwidth recipe): labels, masks and camera_info all at the network's size.
    Runs after the 19-class round trip, which subscribed to everything and sent camera_info."""
    h, node = harness, harness.nodes["city"]
    assert node.set_parameters([Parameter("mask_resolution", value="network")])[0].successful
    try:
        msg, stamp = h.send("city", frames_1080p[0])
        labels = _pixels(h.wait_for("/city/segmentation/labels", stamp))
        assert labels.shape == (256, 512)
        for name, classes in CITY_MASKS.items():
            mask = _pixels(h.wait_for(f"/city/segmentation/mask/{name}", stamp))
            assert np.array_equal(mask, _expected_mask(labels, classes, CITYSCAPES_CLASSES)), name
            packed = h.wait_for(f"/city/segmentation/mask/{name}/compressed", stamp)
            assert np.array_equal(decode_transport(packed.format, packed.data)[0], mask), name
        info = h.wait_for("/city/segmentation/camera_info", stamp)
        assert (info.height, info.width) == (256, 512) and info.header == msg.header
        assert info.k[0] == pytest.approx(2121.1 * 512 / 1920) and info.k[5] == pytest.approx(541.2 * 256 / 1080)
    finally:
        node.set_parameters([Parameter("mask_resolution", value="input")])
