"""The measuring tools' own parts: the recorder that reads only the headers of serialized outputs, and the
image publish path comparison."""

from __future__ import annotations

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from evit_ros.cli.demo import Recorder, spin_until  # noqa: E402
from evit_ros.ros.conversions import array_to_cdr  # noqa: E402


@pytest.mark.parametrize("serialized", [True, False])
def test_recorder_latency_comes_from_the_stamp(serialized: bool) -> None:
    """Outputs stamped 90, 60 and 30 s in the past arrive that late plus transport, read from the header whether
    the recorder takes messages or serialized bytes (only the header parsed); ``last=1`` adds the newest's alone."""
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("recorder_test", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        recorder = Recorder(node, "/rec_test", ("labels",), serialized=serialized)
        pub = node.create_publisher(
            Image, "/rec_test/segmentation/labels", QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        )
        assert spin_until(executor, lambda: recorder.ready() and pub.get_subscription_count() > 0, 20)
        labels = np.arange(48 * 64, dtype=np.uint8).reshape(48, 64)
        for count, age_s in enumerate((90, 60, 30), start=1):  # stamps far enough apart for any transport delay
            stamp_ns = time.time_ns() - age_s * 1_000_000_000
            header = Header(stamp=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000), frame_id="cam")
            pub.publish(array_to_cdr(labels, "mono8", header))
            assert spin_until(executor, lambda n=count: recorder.summary("labels")["frames_received"] == n, 20)
        summary = recorder.summary("labels", last=1)
        latency = summary["latency_ms"]
        assert 60_000.0 <= latency["p50"] < 90_000.0, latency  # read from the stamp, not from garbage
        last = summary["latency_last_ms"]  # the newest output alone
        assert 30_000.0 <= last["p50"] == last["p99"] < 60_000.0, last
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def test_publish_paths_all_deliver_and_are_timed(tmp_path) -> None:
    """measure_node --publish-paths: every image publish path delivers the frame to another process, and the
    figures it prints come from those frames."""
    import json
    import os

    from evit_ros.cli.measure_node import DIRECT_TAKE, main
    from evit_ros.ros.image_publisher import PUBLISH_PATHS

    before = dict(os.environ)
    out = tmp_path / "paths.json"
    assert main(["--publish-paths", "--rate", "10", "--seconds", "1.5", "--warmup", "0.5", "--json", str(out)]) == 0
    assert dict(os.environ) == before  # the private graph's settings do not leak into this process
    result = json.loads(out.read_text())
    assert sorted(result) == sorted([*PUBLISH_PATHS, DIRECT_TAKE])
    for path, r in result.items():
        assert r["frames_received"] >= 3, (path, r)
        assert r["publish_call_ms"]["p50"] > 0 and 0 < r["latency_ms"]["p50"] < 60_000, (path, r)


def test_direct_rcl_ab_feeds_both_nodes(tmp_path, b0_checkpoint) -> None:
    """measure_node --direct-rcl-ab: the node with rcl's paths and the node with EVIT_ROS_DIRECT_RCL=0 both run,
    get frames in turn and deliver labels and overlays."""
    import json

    from evit_ros.cli.measure_node import NAMESPACE, main

    out = tmp_path / "ab.json"
    args = ["--direct-rcl-ab", "--rate", "4", "--seconds", "4", "--alternate-s", "1", "--warmup", "2"]
    assert main([*args, "--weights", str(b0_checkpoint), "--resolution", "256x512", "--json", str(out)]) == 0
    nodes = json.loads(out.read_text())["nodes"]
    assert sorted(nodes) == [f"{NAMESPACE}_rcl", f"{NAMESPACE}_rclpy"]
    for entry in nodes.values():
        assert entry["node_exit_status"] == 0
        for output in ("labels", "overlay"):
            assert entry["cameras"][""][output]["frames_received"] >= 2, (output, entry)


def test_node_overhead_run_feeds_node_and_relay_in_turn(tmp_path, b0_checkpoint, capsys) -> None:
    """measure_node (one camera, shipped profile): the node and the transport-floor relay are fed in turn by one
    camera; the node's outputs, its in-node Segmenter timing and the relay's labels are all recorded, and the
    overhead figures are derived from them."""
    import json

    from evit_ros.cli.measure_node import main

    out = tmp_path / "overhead.json"
    args = ["--rate", "4", "--seconds", "4", "--alternate-s", "1", "--warmup", "2", "--repeats", "2"]
    args += ["--skip-no-profile", "--weights", str(b0_checkpoint), "--resolution", "256x512", "--json", str(out)]
    assert main(args) == 0
    r = json.loads(out.read_text())["node"]["shipped_profile"]
    assert r["node_exit_status"] == 0
    assert r["labels"]["frames_received"] >= 2 and r["overlay"]["frames_received"] >= 2
    assert r["transport_floor"]["frames_received"] >= 2, "the relay got no frames in its turns"
    assert r["labels"]["output_fps"] > 0 and r["transport_floor"]["output_fps"] > 0  # over the time each was fed
    node = r["labels"]["node"]
    assert float(node["postprocess_ms"]) > 0 and float(node["segment_ms_p50"]) > 0
    # the in-node Segmenter covers the node's last 30 frames, and so does the latency it is judged against; this
    # short run has fewer, so both windows hold all of them
    assert r["labels"]["frames_received"] < 30 and r["labels"]["latency_last_ms"] == r["labels"]["latency_ms"]
    latency = r["labels"]["latency_last_ms"]["p50"]
    assert r["node_overhead_ms"] == pytest.approx(latency - float(node["segment_ms_p50"]), abs=0.02)
    floor_last, floor = r["transport_floor"]["latency_last_ms"]["p50"], r["transport_floor"]["latency_ms"]["p50"]
    assert r["node_own_work_ms"] == pytest.approx(r["node_overhead_ms"] - floor_last, abs=0.02)
    assert r["node_own_work_vs_paced_ms"] == pytest.approx(r["node_overhead_vs_paced_ms"] - floor, abs=0.02)
    assert "node overhead (shipped_profile)" in capsys.readouterr().out
