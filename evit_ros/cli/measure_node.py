"""Measure seg_node end to end against the bare backend: one camera (node overhead), or N cameras on one node.

    python -m evit_ros.cli.measure_node [--resolution 512x1024] [--backend auto] [--rate 30] [--seconds 20]
    python -m evit_ros.cli.measure_node --cameras 4 [--rate 30] [--seconds 15]

One camera (default):

1. Backend only (in this process): ``Segmenter.logits`` (pre-processing + network) and the full
   ``Segmenter.segment`` (+ upsampling and argmax at the camera size) on a 1920x1080 bgr8 frame.
2. For each DDS configuration (the shipped ``config/fastdds_shm.xml``, then Fast DDS defaults): ``seg_node`` in
   a subprocess, and a camera + recorder in another subprocess (each process loads its DDS profile once, so
   every configuration gets fresh processes) publishing 1920x1080 bgr8 frames at ``--rate`` Hz (reliable,
   depth 1, stamped at publish time) and subscribing to ``segmentation/labels`` and ``segmentation/overlay``.
   End-to-end latency = receive time of the output minus the frame's stamp.
3. Node overhead = the node's labels latency p50 minus the Segmenter's own frame -> labels p50 (step 1), both
   from this run.

``--cameras N`` (shipped DDS profile; labels subscribed on every camera):

1. In this process: N frames through ``Segmenter.logits_batch`` as one batch vs the same N frames one at a time.
2. A single-camera node fed by one camera, then an N-camera node (``batch_size`` 0: one batch of up to N) and the
   same N-camera node with ``batch_size:=1`` (one after another), each fed by N cameras at ``--rate`` Hz. For each:
   the node's peak RSS (VmHWM), the aggregate output rate, each camera's output rate and their spread.

Prints a table and writes JSON (``--json``). Camera frames are real Cityscapes images from the test data resized
to 1920x1080 (a synthetic gradient when the data is absent).
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


def camera_frame_bgr(index: int = 0) -> np.ndarray:
    """Camera ``index``'s 1920x1080 BGR frame: the index-th real Cityscapes frame, else a shifted gradient."""
    import cv2

    root = data_dir()
    folder = root / "cityscapes" / "fullres_unlabeled" if root else None
    paths = sorted(folder.glob("*.png")) if folder is not None and folder.is_dir() else []
    if paths:
        image = cv2.imread(str(paths[index % len(paths)]), cv2.IMREAD_COLOR)
        return cv2.resize(image, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.stack([(x + 40 * index) % 256, y % 256, (x + y) % 256], axis=2).astype(np.uint8)


def camera_names(count: int) -> list[str]:
    return [f"cam{i}" for i in range(count)]


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


def measure_batching(args: argparse.Namespace, count: int, repeats: int) -> dict:
    """The same ``count`` 1080p frames through the network as one batch and one at a time, alternating."""
    from evit_ros.pipeline.segmenter import Segmenter

    seg = Segmenter(
        args.model,
        args.weights,
        args.resolution,
        backend=args.backend,
        num_threads=args.num_threads or None,
        batch_size=count,
    )
    frames = [camera_frame_bgr(i) for i in range(count)]
    seg.logits_batch(frames, "bgr")
    batched_ms, sequential_ms = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        seg.logits_batch(frames, "bgr")
        batched_ms.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        for frame in frames:
            seg.logits(frame, "bgr")
        sequential_ms.append((time.perf_counter() - t0) * 1e3)
    info = seg.describe()
    info["max_batch"] = seg.max_batch
    seg.close()
    b, q = percentiles(batched_ms), percentiles(sequential_ms)
    return {
        "describe": info,
        "frames": count,
        "batched_ms": b,
        "one_at_a_time_ms": q,
        "speedup": round(q["p50"] / b["p50"], 3) if b["p50"] else None,
    }


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
    names = args.camera_names.split(",") if args.camera_names else [""]
    outputs = tuple(args.outputs.split(","))
    spaces = {name: f"{NAMESPACE}/{name}" if name else NAMESPACE for name in names}
    recorders = {name: Recorder(node, spaces[name], outputs) for name in names}
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    pubs = {name: node.create_publisher(Image, f"{spaces[name]}/image", qos) for name in names}
    msgs = {}
    for i, name in enumerate(names):
        msgs[name] = image_to_msg(camera_frame_bgr(i)[:, :, ::-1], "bgr8")
        msgs[name].header.frame_id = name or "camera"

    def matched() -> bool:
        return all(r.ready() for r in recorders.values()) and all(p.get_subscription_count() > 0 for p in pubs.values())

    if not spin_until(executor, matched, args.startup_timeout):
        print(json.dumps({"error": "seg_node did not match in time"}))
        return 1
    published = [0]

    def publish() -> None:
        for name, pub in pubs.items():
            msgs[name].header.stamp = node.get_clock().now().to_msg()
            pub.publish(msgs[name])
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
        "window_s": round(elapsed, 2),
    }
    if names == [""]:
        result.update({o: recorders[""].summary(o, since=t_measure) for o in outputs})
    else:
        result["cameras"] = {name: {o: recorders[name].summary(o, since=t_measure) for o in outputs} for name in names}
    print("RESULT " + json.dumps(result), flush=True)
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown(context=context)
    return 0


def peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident set size (VmHWM) in MiB; None where /proc does not say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def measure_config(
    args: argparse.Namespace,
    with_profile: bool,
    cameras: Sequence[str] = (),
    node_params: Sequence[str] = (),
    outputs: str = "labels,overlay",
) -> dict:
    env = ros_env(dds_profile=with_profile)
    extra = list(node_params)
    if cameras:
        extra.append(f"cameras:=[{','.join(cameras)}]")
    node_cmd = node_command(NAMESPACE, args.model, args.weights, args.resolution, args.backend, args.num_threads, extra)
    node_proc = subprocess.Popen(node_cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    child_cmd = [sys.executable, "-m", "evit_ros.cli.measure_node", "--camera", *_forward(args)]
    child_cmd += ["--outputs", outputs] + (["--camera-names", ",".join(cameras)] if cameras else [])
    rss = None
    try:
        out = subprocess.run(
            child_cmd,
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=args.startup_timeout + args.seconds + 120,
        )
        rss = peak_rss_mib(node_proc.pid)
    finally:
        code = stop_process(node_proc)
        node_err = node_proc.stderr.read() if node_proc.stderr else ""
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return {"error": (out.stdout + out.stderr + node_err)[-2000:]}
    result = json.loads(line[len("RESULT ") :])
    result["dds_profile"] = env.get("FASTDDS_DEFAULT_PROFILES_FILE", "none (Fast DDS defaults)")
    result["node_exit_status"] = code
    result["node_peak_rss_mib"] = rss
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
    parser.add_argument(
        "--cameras", type=int, default=0, help="N > 0: measure one node serving N 1080p cameras (memory, batching)"
    )
    parser.add_argument("--camera", action="store_true", help=argparse.SUPPRESS)  # internal: the child process
    parser.add_argument("--camera-names", default="", help=argparse.SUPPRESS)
    parser.add_argument("--outputs", default="labels,overlay", help=argparse.SUPPRESS)
    return parser


def _fmt(p: dict) -> str:
    return f"p50 {p['p50']} / p90 {p['p90']} / p99 {p['p99']} ms" if p["p50"] is not None else "no frames"


def _rates(result: dict) -> dict:
    """Per-camera output rates of a multi-camera run, their sum and spread ((max - min) / max)."""
    rates = {name: r["labels"]["frames_received"] / result["window_s"] for name, r in result["cameras"].items()}
    top = max(rates.values())
    return {
        "per_camera_hz": {k: round(v, 2) for k, v in rates.items()},
        "aggregate_hz": round(sum(rates.values()), 2),
        "spread": round((top - min(rates.values())) / top, 3) if top else None,
    }


def main_multi(args: argparse.Namespace) -> int:
    count = args.cameras
    names = camera_names(count)
    print(f"{count} cameras, 1920x1080 bgr8 @ {args.rate} Hz each: {args.model} {args.resolution} {args.backend}")
    print(f"in-process: {count} frames as one batch vs one at a time ...", flush=True)
    batching = measure_batching(args, count, max(3, args.repeats // 4))
    print(f"  {batching['describe']}")
    print(f"  one batch of {count}: {_fmt(batching['batched_ms'])}")
    print(f"  one at a time      : {_fmt(batching['one_at_a_time_ms'])}  -> batching speed-up {batching['speedup']}")
    results = {"in_process_batching": batching, "camera": f"{WIDTH}x{HEIGHT} bgr8 @ {args.rate} Hz", "node": {}}
    runs = [
        ("single_camera", (), ()),
        (f"{count}_cameras_batched", names, ()),
        (f"{count}_cameras_one_at_a_time", names, ("batch_size:=1",)),
    ]
    for label, cams, params in runs:
        print(f"node, {label} ...", flush=True)
        r = measure_config(args, True, cams, params, outputs="labels")
        results["node"][label] = r
        if "error" in r:
            print(f"  failed: {r['error']}")
            continue
        print(f"  peak RSS {r['node_peak_rss_mib']} MiB")
        if cams:
            r["rates"] = _rates(r)
            rates = r["rates"]
            print(f"  aggregate output {rates['aggregate_hz']} Hz; per camera {rates['per_camera_hz']}; spread "
                  f"{rates['spread']}")  # fmt: skip
        else:
            print(f"  output {r['labels']['output_fps']} FPS, latency {_fmt(r['labels']['latency_ms'])}")
    node = results["node"]
    single, batched = node.get("single_camera", {}), node.get(f"{count}_cameras_batched", {})
    sequential = node.get(f"{count}_cameras_one_at_a_time", {})
    summary = {}
    if single.get("node_peak_rss_mib") and batched.get("node_peak_rss_mib"):
        summary["rss_ratio"] = round(batched["node_peak_rss_mib"] / single["node_peak_rss_mib"], 3)
    if "rates" in batched and "rates" in sequential and sequential["rates"]["aggregate_hz"]:
        summary["aggregate_rate_ratio_batched_vs_one_at_a_time"] = round(
            batched["rates"]["aggregate_hz"] / sequential["rates"]["aggregate_hz"], 3
        )
    results["summary"] = summary
    print("summary:")
    if "rss_ratio" in summary:
        print(f"  peak RSS, {count} cameras / 1 camera: {summary['rss_ratio']} (goal <= 1.3)")
    if "aggregate_rate_ratio_batched_vs_one_at_a_time" in summary:
        ratio = summary["aggregate_rate_ratio_batched_vs_one_at_a_time"]
        print(f"  aggregate output rate, batched / one at a time: {ratio}")
    for label in (f"{count}_cameras_batched", f"{count}_cameras_one_at_a_time"):
        if "rates" in node.get(label, {}):
            print(f"  {label}: per-camera spread {node[label]['rates']['spread']} (goal <= 0.10)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.camera:
        return run_camera(args)
    args.weights = args.weights or default_weights()
    if args.cameras > 0:
        return main_multi(args)
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
        if lab["latency_ms"]["p50"] is not None:
            overhead = round(lab["latency_ms"]["p50"] - backend["segment_1080p_ms"]["p50"], 2)
            r["node_overhead_ms"] = overhead
            print(f"  node overhead: labels latency p50 - Segmenter frame->labels p50 = {overhead} ms (goal <= 10)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
