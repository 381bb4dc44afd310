"""The shipped Fast DDS profile reaches other computers; the demo and tests run on a loopback-only copy of it."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from evit_ros.cli.demo import LOOPBACK, loopback_profile, ros_env

SHIPPED = REPO_ROOT / "config" / "fastdds_shm.xml"
NS = {"f": "http://www.eprosima.com"}


def _descriptors(path: Path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()
    return {d.findtext("f:type", "", NS).strip(): d for d in root.iterfind(".//f:transport_descriptor", NS)}


def _allowed(descriptor: ET.Element) -> list[str]:
    return [a.text.strip() for a in descriptor.iterfind("f:interfaceWhiteList/f:address", NS)]


def test_shipped_profile_does_not_restrict_udp_to_loopback() -> None:
    found = _descriptors(SHIPPED)
    assert set(found) == {"SHM", "UDPv4"}
    assert int(found["SHM"].findtext("f:segment_size", "", NS)) == 64 * 2**20
    for descriptor in found.values():  # no interface restriction in any form
        assert descriptor.find("f:interfaceWhiteList", NS) is None and descriptor.find("f:interfaces", NS) is None
    participant = ET.parse(SHIPPED).getroot().find(".//f:participant", NS)
    assert participant.get("is_default_profile") == "true"
    used = [t.text.strip() for t in participant.iterfind("f:rtps/f:userTransports/f:transport_id", NS)]
    ids = {d.findtext("f:transport_id", "", NS).strip() for d in found.values()}
    assert set(used) == ids
    assert participant.findtext("f:rtps/f:useBuiltinTransports", "", NS).strip() == "false"


def test_loopback_copy_keeps_shm_and_allows_only_loopback(tmp_path: Path) -> None:
    copy = loopback_profile(SHIPPED, tmp_path)
    shipped, local = _descriptors(SHIPPED), _descriptors(copy)
    assert set(local) == set(shipped)
    assert _allowed(local["UDPv4"]) == [LOOPBACK]
    assert ET.tostring(local["SHM"]) == ET.tostring(shipped["SHM"])
    env = ros_env()
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    profile = Path(env["FASTDDS_DEFAULT_PROFILES_FILE"])
    assert profile != SHIPPED and _allowed(_descriptors(profile)["UDPv4"]) == [LOOPBACK]


_PUBLISH = """
import time, rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy, DurabilityPolicy
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node("profile_pub")
qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
pub = node.create_publisher(Image, "profile_check", qos)
msg = Image(height=1080, width=1920, encoding="bgr8", step=1920 * 3, data=bytes(1920 * 1080 * 3))
deadline = time.monotonic() + 40
while time.monotonic() < deadline:
    pub.publish(msg)
    rclpy.spin_once(node, timeout_sec=0.2)
"""

_SUBSCRIBE = """
import time, rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy, DurabilityPolicy
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node("profile_sub")
got = []
qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
node.create_subscription(Image, "profile_check", got.append, qos)
deadline = time.monotonic() + 40
while not got and time.monotonic() < deadline:
    rclpy.spin_once(node, timeout_sec=0.2)
print("RECEIVED", len(got[0].data) if got else 0)
"""


def test_full_hd_frame_crosses_processes_on_the_loopback_copy(tmp_path: Path) -> None:
    pytest.importorskip("rclpy", reason="rclpy is not installed")
    env = dict(os.environ)  # conftest's private domain and LOCALHOST discovery
    if not env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp").startswith("rmw_fastrtps"):
        pytest.skip("the profile is for Fast DDS")
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(loopback_profile(SHIPPED, tmp_path))
    pub = subprocess.Popen([sys.executable, "-c", _PUBLISH], env=env, stderr=subprocess.PIPE, text=True)
    try:
        sub = subprocess.run(
            [sys.executable, "-c", _SUBSCRIBE], env=env, capture_output=True, text=True, timeout=90, check=False
        )
    finally:
        pub.kill()
        _, pub_err = pub.communicate(timeout=30)
    assert f"RECEIVED {1920 * 1080 * 3}" in sub.stdout, sub.stdout + sub.stderr
    for err in (sub.stderr, pub_err):  # Fast DDS reports a profile it cannot parse, then runs on defaults
        assert "XMLPARSER" not in err and "Error" not in err, err
