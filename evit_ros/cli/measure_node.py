"""Measure seg_node end to end against the bare backend, with and without the shipped Fast DDS profile.

    python -m evit_ros.cli.measure_node [--resolution 512x1024] [--backend auto] [--rate 30] [--seconds 20]

1. Backend only (in this process): ``Segmenter.logits`` (pre-processing + network) and the full
   ``Segmenter.segment`` (+ bicubic upsampling and argmax at the camera size) on a 1920x1080 frame.
2. For each DDS configuration (the shipped ``config/fastdds_shm.xml`` as its loopback-only copy, then Fast DDS
   defaults): ``seg_node`` in a subprocess, and a camera + recorder in another subprocess (each process loads
   its DDS profile once, so every configuration gets fresh processes) publishing 1920x1080 bgr8 frames at
   ``--rate`` Hz (reliable, depth 1, stamped at publish time) and subscribing to ``segmentation/labels`` and
   ``segmentation/overlay``.
   End-to-end latency = receive time of the output minus the frame's stamp.

Prints a table and writes JSON (``--json``). The frame is a real Cityscapes image from the test data resized to
1920x1080 (a synthetic gradient when the data is absent).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from evit_ros.cli.demo import (
    Recorder,
    data_dir,
    default_weights,
    node_command,
    percentiles,
    ros_env,
    spin_until,
    stop_process,
)
from evit_ros.network.variants import DEFAULT_MODEL

NAMESPACE = "/measure"
WIDTH, HEIGHT = 1920, 1080


def camera_frame_bgr() -> np.ndarray:
    import cv2

    root = data_dir()
    path = root / "cityscapes" / "fullres_unlabeled" / "frankfurt_000000_000294_leftImg8bit.png" if root else None
    if path is not None and path.is_file():
        return cv2.resize(cv2.imread(str(path), cv2.IMREAD_COLOR), (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.stack([x % 256, y % 256, (x + y) % 256], axis=2).astype(np.uint8)


def measure_backend(args: argparse.Namespace, repeats: int) -> dict:
    from evit_ros.pipeline.segmenter import Segmenter

    seg = Segmenter(
        args.model, args.weights, args.resolution, backend=args.backend, num_threads=args.num_threads or None
    )
    frame = camera_frame_bgr()
    for _ in range(2):
        seg.segment(frame, order="bgr")
    logits_ms, segment_ms = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        seg.logits(frame, order="bgr")
        logits_ms.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        seg.segment(frame, order="bgr")
        segment_ms.append((time.perf_counter() - t0) * 1e3)
    info = seg.describe()
    seg.close()
    return {"describe": info, "logits_ms": percentiles(logits_ms), "segment_1080p_ms": percentiles(segment_ms)}


def run_camera(args: argparse.Namespace) -> int:
    """Child process: publish 1080p frames at args.rate for args.seconds, record outputs, print JSON."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from evit_ros.ros.conversions import image_to_msg

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("measure_camera", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    recorder = Recorder(node, NAMESPACE, ("labels", "overlay"))
    pub = node.create_publisher(
        Image, f"{NAMESPACE}/image", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    )
    msg = image_to_msg(camera_frame_bgr()[:, :, ::-1], "bgr8")
    msg.header.frame_id = "camera"
    ok = spin_until(executor, lambda: recorder.ready() and pub.get_subscription_count() > 0, args.startup_timeout)
    if not ok:
        print(json.dumps({"error": "seg_node did not match in time"}))
        return 1
    published = [0]

    def publish() -> None:
        msg.header.stamp = node.get_clock().now().to_msg()
        pub.publish(msg)
        published[0] += 1

    node.create_timer(1.0 / args.rate, publish)
    t_start = time.monotonic()
    spin_until(executor, lambda: False, args.warmup)
    t_measure = time.monotonic()
    n0 = published[0]
    spin_until(executor, lambda: False, args.seconds)
    n1 = published[0]
    elapsed = time.monotonic() - t_measure
    spin_until(executor, lambda: False, 1.5)  # let the node's diagnostics catch up
    result = {
        "published": n1 - n0,
        "publish_rate_hz": round((n1 - n0) / elapsed, 2),
        "warmup_s": round(t_measure - t_start, 1),
        "labels": recorder.summary("labels", since=t_measure),
        "overlay": recorder.summary("overlay", since=t_measure),
    }
    print("RESULT " + json.dumps(result), flush=True)
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown(context=context)
    return 0


def measure_config(args: argparse.Namespace, with_profile: bool) -> dict:
    env = ros_env(dds_profile=with_profile)
    node_cmd = node_command(NAMESPACE, args.model, args.weights, args.resolution, args.backend, args.num_threads)
    node_proc = subprocess.Popen(node_cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    child_cmd = [sys.executable, "-m", "evit_ros.cli.measure_node", "--camera", *_forward(args)]
    try:
        out = subprocess.run(
            child_cmd,
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=args.startup_timeout + args.seconds + 120,
        )
    finally:
        code = stop_process(node_proc)
        node_err = node_proc.stderr.read() if node_proc.stderr else ""
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return {"error": (out.stdout + out.stderr + node_err)[-2000:]}
    result = json.loads(line[len("RESULT ") :])
    result["dds_profile"] = env.get("FASTDDS_DEFAULT_PROFILES_FILE", "none (Fast DDS defaults)")
    result["node_exit_status"] = code
    return result


def _forward(args: argparse.Namespace) -> list[str]:
    return ["--rate", str(args.rate), "--seconds", str(args.seconds), "--warmup", str(args.warmup),
            "--startup-timeout", str(args.startup_timeout)]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evit_ros.cli.measure_node", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--weights", default=None, help="default: the test data's B0 checkpoint, else cache/Hub")
    parser.add_argument("--resolution", default="512x1024")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--num-threads", type=int, default=0)
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate in Hz")
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement window per configuration")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds of frames before measuring")
    parser.add_argument("--repeats", type=int, default=20, help="backend-only iterations")
    parser.add_argument("--startup-timeout", type=float, default=180.0)
    parser.add_argument("--skip-no-profile", action="store_true", help="measure with the shipped profile only")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--camera", action="store_true", help=argparse.SUPPRESS)  # internal: the child process
    return parser


def _fmt(p: dict) -> str:
    return f"p50 {p['p50']} / p90 {p['p90']} / p99 {p['p99']} ms" if p["p50"] is not None else "no frames"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.camera:
        return run_camera(args)
    args.weights = args.weights or default_weights()
    print(f"backend only: {args.model} {args.resolution} {args.backend}, 1920x1080 input ...", flush=True)
    backend = measure_backend(args, args.repeats)
    print(f"  {backend['describe']}")
    print(f"  logits (preprocess + network): {_fmt(backend['logits_ms'])}")
    print(f"  segment to 1920x1080 (+ bicubic upsampling, argmax): {_fmt(backend['segment_1080p_ms'])}", flush=True)
    results = {"backend_only": backend, "camera": f"{WIDTH}x{HEIGHT} bgr8 @ {args.rate} Hz", "node": {}}
    configs = [("shipped_profile", True)] + ([] if args.skip_no_profile else [("fastdds_defaults", False)])
    for name, with_profile in configs:
        print(f"node, {name} ...", flush=True)
        r = measure_config(args, with_profile)
        results["node"][name] = r
        if "error" in r:
            print(f"  failed: {r['error']}")
            continue
        lab, ov, node = r["labels"], r["overlay"], r["labels"]["node"]
        print(f"  camera published {r['published']} frames at {r['publish_rate_hz']} Hz")
        print(f"  labels : {lab['frames_received']} frames, {lab['output_fps']} FPS, latency {_fmt(lab['latency_ms'])}")
        print(f"  overlay: {ov['frames_received']} frames, {ov['output_fps']} FPS, latency {_fmt(ov['latency_ms'])}")
        print(
            f"  node: in {node['input_rate_hz']} Hz, out {node['output_rate_hz']} Hz, inference {node['inference_ms']}"
            f" ms, dropped {node['dropped_frames']} of {node['frames_in']} received",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
