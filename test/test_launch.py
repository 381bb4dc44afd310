"""launch_testing test of launch/seg.launch.py: the node comes up under a namespace with the shipped params
file and (a loopback-only copy of) the DDS profile, segments a frame published on the remapped image topic, and
exits cleanly.

Needs launch, launch_ros and launch_testing (a sourced ROS 2 install with evit_ros built); skipped elsewhere.
Run with ``launch_test test/test_launch.py`` or pytest (the launch_testing pytest plugin collects it).
"""

from __future__ import annotations

import array
import os
import sys
import tempfile
import time
import unittest
from pathlib import Path

import pytest

launch_testing = pytest.importorskip("launch_testing.actions", reason="launch_testing is not installed")
pytest.importorskip("launch_testing.asserts", reason="launch_testing is not installed")
launch = pytest.importorskip("launch", reason="launch is not installed")
pytest.importorskip("launch_ros", reason="launch_ros is not installed")
launch_testing = sys.modules["launch_testing"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EVIT_ROS_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))
WEIGHTS = DATA / "weights" / "efficientvit_seg_b0_cityscapes.pt"
NAMESPACE = "launch_cam"


@pytest.mark.launch_test
def generate_test_description():
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    if not WEIGHTS.is_file():
        pytest.skip(f"official B0 checkpoint not found at {WEIGHTS}")
    from evit_ros.cli.demo import loopback_profile

    folder = Path(tempfile.mkdtemp(prefix="evit_ros_launch_"))
    params = folder / "params.yaml"
    params.write_text(
        f"/**:\n  ros__parameters:\n    weights: '{WEIGHTS}'\n    num_threads: 1\n    publish_color: false\n"
    )
    seg = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(REPO_ROOT / "launch" / "seg.launch.py")),
        launch_arguments={
            "model": "b0-cityscapes",
            "resolution": "256x512",
            "backend": "torch",
            "image": f"/{NAMESPACE}/camera/image_raw",
            "namespace": NAMESPACE,
            "params_file": str(params),
            "class_masks": "{flat: [road, sidewalk], people: person}",  # a YAML mapping, kept a string
            # The shipped profile lets UDP use every interface; the test keeps to loopback.
            "dds_profile": str(loopback_profile(REPO_ROOT / "config" / "fastdds_shm.xml", folder)),
        }.items(),
    )
    return launch.LaunchDescription([seg, launch_testing.actions.ReadyToTest()])


class TestSegLaunch(unittest.TestCase):
    def test_segments_a_frame(self, proc_output):
        import numpy as np
        import rclpy
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        rclpy.init()
        node = rclpy.create_node("launch_tester")
        try:
            qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
            pub = node.create_publisher(Image, f"/{NAMESPACE}/camera/image_raw", qos)
            got = []
            node.create_subscription(Image, f"/{NAMESPACE}/segmentation/labels", got.append, qos)
            frame = Image(height=360, width=480, encoding="bgr8", step=480 * 3)
            frame.data = array.array("B", np.full((360, 480, 3), 90, dtype=np.uint8).tobytes())
            frame.header.frame_id = "camera"
            deadline = time.monotonic() + 90
            while not got and time.monotonic() < deadline:
                frame.header.stamp = node.get_clock().now().to_msg()
                pub.publish(frame)
                rclpy.spin_once(node, timeout_sec=0.2)
            self.assertTrue(got, "no labels from the launched node")
            self.assertEqual(got[0].encoding, "mono8")
            self.assertEqual((got[0].height, got[0].width), (360, 480))
            self.assertEqual(got[0].header.frame_id, "camera")
            proc_output.assertWaitFor("segmenting", timeout=5)
            topics = dict(node.get_topic_names_and_types())
            for mask in ("flat", "people"):
                self.assertIn(f"/{NAMESPACE}/segmentation/mask/{mask}", topics)
                self.assertIn(f"/{NAMESPACE}/segmentation/mask/{mask}/compressed", topics)
        finally:
            node.destroy_node()
            rclpy.shutdown()


@launch_testing.post_shutdown_test()
class TestSegLaunchShutdown(unittest.TestCase):
    def test_exit_code(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0, -2, -15])
