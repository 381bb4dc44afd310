"""ROS message payloads and rosbag2 recordings as numpy, without ROS."""
