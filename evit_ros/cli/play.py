"""`evit-ros play` and `evit_play`: publish a folder of images, a video file or a rosbag2 recording as a camera.

See :mod:`evit_ros.ros.play` for sources, timing and QoS.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from evit_ros.ros.play import DEFAULT_FOLDER_RATE, play


def _positive(kind: type):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _non_negative(kind: type):
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    return parse


def add_play_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="folder of images, video file, or rosbag2 recording (directory/.db3/.mcap)")
    parser.add_argument("--topic", default="image", help="image topic to publish (default: image)")
    parser.add_argument(
        "--rate",
        type=_positive(float),
        default=None,
        help=f"publish rate in Hz (default: {DEFAULT_FOLDER_RATE:g} for folders, the file's fps for videos, "
        "the recorded timing for bags)",
    )
    parser.add_argument("--speed", type=_positive(float), default=1.0, help="time scale factor (2 = twice as fast)")
    parser.add_argument("--loop", action="store_true", help="start again at the end of the source")
    parser.add_argument("--frame-id", default="camera", help="header.frame_id (default: camera)")
    parser.add_argument("--encoding", default="bgr8", choices=("bgr8", "rgb8", "mono8"), help="default: bgr8")
    parser.add_argument(
        "--qos-reliability",
        default="reliable",
        choices=("reliable", "best_effort"),
        help="publisher reliability (default: reliable, which best-effort subscribers also match)",
    )
    parser.add_argument("--max-frames", type=_non_negative(int), default=0, help="stop after N frames (0: no limit)")
    parser.add_argument("--start-delay", type=_non_negative(float), default=0.0, help="seconds to wait before starting")
    parser.add_argument(
        "--wait-subscribers", type=_non_negative(int), default=0, help="wait until N subscriptions are matched"
    )
    parser.add_argument(
        "--wait-timeout", type=_non_negative(float), default=10.0, help="longest wait for --wait-subscribers (s)"
    )
    parser.add_argument("--bag-topic", default=None, help="image topic to read from a bag (default: its only one)")


def run_play(args: argparse.Namespace, ros_args: Sequence[str] | None = None) -> int:
    """Run the player as parsed by :func:`add_play_arguments`; returns the exit status."""
    return play(
        args.source,
        topic=args.topic,
        rate=args.rate,
        speed=args.speed,
        loop=args.loop,
        frame_id=args.frame_id,
        encoding=args.encoding,
        reliability=args.qos_reliability,
        max_frames=args.max_frames,
        start_delay=args.start_delay,
        wait_subscribers=args.wait_subscribers,
        wait_timeout=args.wait_timeout,
        bag_topic=args.bag_topic,
        ros_args=ros_args,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args: list[str] = []
    if "--ros-args" in argv:  # everything from --ros-args on is for rcl (remappings, parameters, log level)
        cut = argv.index("--ros-args")
        argv, ros_args = argv[:cut], argv[cut:]
    parser = argparse.ArgumentParser(prog="evit-ros play", description=__doc__.splitlines()[0])
    add_play_arguments(parser)
    args = parser.parse_args(argv)
    return run_play(args, ros_args=[sys.argv[0], *ros_args])


if __name__ == "__main__":
    sys.exit(main())
