"""End-to-end demo: replay a camera, segment it with ``seg_node``, record the outputs, report latency and FPS.

    python -m evit_ros.demo [--source DIR|VIDEO|BAG] [--out demo_out] [--model b0-cityscapes]
                            [--weights PATH] [--resolution HxW] [--backend auto] [--rate HZ] [--max-frames N]

Starts ``seg_node`` and the replay tool (``evit-ros play``) as subprocesses in a private ROS domain (random
``ROS_DOMAIN_ID``, discovery limited to localhost, the shipped Fast DDS shared-memory profile with its UDP
transport restricted to loopback, see ``loopback_profile``), subscribes to
``segmentation/overlay`` and ``segmentation/labels``, writes every overlay as a PNG into ``--out``, then prints a
summary (end-to-end latency p50/p90/p99 = receive time minus the camera stamp, output FPS, frames in/out, frames
the node dropped because a newer one arrived) and writes it to ``<out>/summary.json``.

Defaults: the CamVid sequence from the test data (``$EVIT_ROS_TEST_DATA/camvid/val`` or ``../shared/data``
beside the repository), and the official B0 Cityscapes checkpoint there if present (else the cache / Hub).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from evit_ros.network.variants import DEFAULT_MODEL

REPO_ROOT = Path(__file__).resolve().parents[2]  # evit_ros/cli/demo.py -> the repository
NAMESPACE = "/demo"


# ------------------------------------------------------------------------------------------ shared helpers
def data_dir() -> Path | None:
    env = os.environ.get("EVIT_ROS_TEST_DATA")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    return path if path.is_dir() else None


def default_weights() -> str | None:
    root = data_dir()
    path = root / "weights" / "efficientvit_seg_b0_cityscapes.pt" if root else None
    return str(path) if path and path.is_file() else None


def dds_profile_path() -> Path | None:
    """The shipped Fast DDS profile: the installed share directory, else the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory("evit_ros")) / "config" / "fastdds_shm.xml"
        if installed.is_file():
            return installed
    except Exception:  # noqa: BLE001 - not installed as a ROS package
        pass
    local = REPO_ROOT / "config" / "fastdds_shm.xml"
    return local if local.is_file() else None


LOOPBACK = "127.0.0.1"
_FASTDDS_NS = "http://www.eprosima.com"


def loopback_profile(profile: Path, out_dir: str | os.PathLike | None = None) -> Path:
    """A copy of a Fast DDS profile whose UDP transports may only use the loopback interface.

    The shipped profile lets UDP use every interface (other computers must receive the outputs); the demo,
    the measurements and the tests keep all traffic on this machine, with the same shared-memory settings.
    """
    import atexit
    import shutil
    import tempfile
    import xml.etree.ElementTree as ET

    ET.register_namespace("", _FASTDDS_NS)
    tree = ET.parse(profile)
    ns = {"f": _FASTDDS_NS}
    udp = [
        d for d in tree.getroot().iterfind(".//f:transport_descriptor", ns)
        if (d.findtext("f:type", "", ns) or "").strip().startswith("UDP")
    ]  # fmt: skip
    if not udp:
        raise ValueError(f"{profile} has no UDP transport to restrict")
    for descriptor in udp:
        for old in descriptor.findall("f:interfaceWhiteList", ns):
            descriptor.remove(old)
        allow = ET.SubElement(descriptor, f"{{{_FASTDDS_NS}}}interfaceWhiteList")
        ET.SubElement(allow, f"{{{_FASTDDS_NS}}}address").text = LOOPBACK
    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix="evit_ros_dds_")
        atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
    folder = Path(out_dir)
    path = folder / f"{profile.stem}_loopback.xml"
    tree.write(path, encoding="UTF-8", xml_declaration=True)
    return path


def ros_env(dds_profile: bool = True, domain_id: int | None = None) -> dict[str, str]:
    """Environment for a private, loopback-only ROS graph (for this process's children and for itself).

    With `dds_profile`, the shipped Fast DDS profile's loopback-only copy (``loopback_profile``)."""
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(domain_id if domain_id is not None else random.SystemRandom().randint(1, 100))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_LOCALHOST_ONLY"] = "1"
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    profile = dds_profile_path() if dds_profile else None
    if profile is not None and env["RMW_IMPLEMENTATION"].startswith("rmw_fastrtps"):
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(loopback_profile(profile))
    return env


def node_command(
    namespace: str,
    model: str,
    weights: str | None,
    resolution: str | None,
    backend: str,
    num_threads: int = 0,
    extra: Sequence[str] = (),
) -> list[str]:
    params = [f"model:={model}", f"backend:={backend}", f"num_threads:={num_threads}", *extra]
    if weights:
        params.append(f"weights:={weights}")
    if resolution:
        params.append(f"resolution:={resolution}")
    cmd = [sys.executable, "-m", "evit_ros.ros.seg_node", "--ros-args", "-r", f"__ns:={namespace}"]
    for p in params:
        cmd += ["-p", p]
    return cmd


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> int:
    """SIGINT, then SIGKILL after ``timeout``; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not len(values):
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(arr, 50)), 2),
        "p90": round(float(np.percentile(arr, 90)), 2),
        "p99": round(float(np.percentile(arr, 99)), 2),
        "mean": round(float(arr.mean()), 2),
    }


class Recorder:
    """Subscribes to a node's outputs and /diagnostics; records receive times, latencies and the last status.

    ``serialized``: take the outputs as serialized bytes and read only their headers (a view of the bytes,
    :func:`~evit_ros.ros.conversions.image_from_cdr`), so the latency measures the node and the transport, not
    this recorder turning every output into a Python message."""

    def __init__(self, node, namespace: str, outputs: Sequence[str], on_message=None, serialized: bool = False) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.node = node
        self.lock = threading.Lock()
        self.arrivals: dict[str, list[tuple[float, float]]] = {o: [] for o in outputs}  # (t_rx, latency ms)
        self.diagnostics: dict[str, str] = {}
        self._diagnostics_history: list[tuple[float, dict[str, str]]] = []  # (t_rx, status)
        self._on_message = on_message
        if serialized:
            from evit_ros.ros import rcl_serialized
            from evit_ros.ros.conversions import image_from_cdr

            self._read = image_from_cdr
        else:
            self._read = None
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        topics = {o: f"{namespace}/segmentation/{o}" for o in outputs}
        if serialized and rcl_serialized.available():  # one copy per take, as a C++ subscriber's
            self.subs = [rcl_serialized.SerializedSubscription(node, Image, t, self._callback(o), qos)
                         for o, t in topics.items()]  # fmt: skip
        else:
            self.subs = [node.create_subscription(Image, t, self._callback(o), qos, raw=serialized)
                         for o, t in topics.items()]  # fmt: skip
        self._status_name = f"{namespace}/seg_node: segmentation"
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _callback(self, output: str):
        def callback(msg) -> None:
            now_ns = time.time_ns()
            if self._read is not None:
                msg = self._read(msg)
            stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            with self.lock:
                self.arrivals[output].append((time.monotonic(), (now_ns - stamp_ns) / 1e6))
            if self._on_message is not None:
                self._on_message(output, msg)

        return callback

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name == self._status_name:
                with self.lock:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}
                    self._diagnostics_history.append((time.monotonic(), self.diagnostics))

    def ready(self) -> bool:
        return all(sub.get_publisher_count() > 0 for sub in self.subs)

    def summary(self, output: str, since: float = 0.0, until: float | None = None, last: int = 0) -> dict:
        """Outputs received from ``since`` on, and the node's status as last reported. Its rates come from the
        last status reported by ``until`` (default: the latest): the node rates the frames since its previous
        status, so a status sent after the camera stopped would report 0 Hz for a run that kept up. ``last``:
        also the latency of the last ``last`` of those outputs (``latency_last_ms``), the frames behind the
        node's own timing figures."""
        with self.lock:
            rows = [r for r in self.arrivals[output] if r[0] >= since]
            earlier = [d for t, d in self._diagnostics_history if until is None or t <= until]
            diag = dict(self.diagnostics)
            if earlier:
                diag.update({k: v for k, v in earlier[-1].items() if k.endswith("_rate_hz")})
        times = [t for t, _ in rows]
        fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
        extra = {"latency_last_ms": percentiles([lat for _, lat in rows[-last:]])} if last > 0 else {}
        return {
            "frames_received": len(rows),
            "output_fps": round(fps, 2),
            "latency_ms": percentiles([lat for _, lat in rows]),
            **extra,
            "node": {
                k: diag.get(k)
                for k in (
                    "frames_in",
                    "frames_out",
                    "dropped_frames",
                    "idle_frames",
                    "bad_frames",
                    "nan_frames",
                    "inference_ms",
                    "postprocess_ms",
                    "segment_ms_p50",
                    "input_rate_hz",
                    "output_rate_hz",
                    "backend",
                    "precision",
                    "engine",
                    "device",
                    "resolution",
                )
            },  # fmt: skip
        }


def spin_until(executor, predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=0.05)
    return predicate()


# ------------------------------------------------------------------------------------------------- demo
def default_source() -> str | None:
    root = data_dir()
    path = root / "camvid" / "val" if root else None
    return str(path) if path and path.is_dir() else None


def demo_resolution(source: str, short_side: int = 384) -> str | None:
    """A network size that keeps the source's aspect ratio: a CPU can keep up with a live camera at ~384 rows,
    where the variants' evaluation sizes (1024x2048 for Cityscapes) take over a second per frame."""
    from evit_ros.pipeline.processing import fit_resolution
    from evit_ros.ros.play import open_source

    try:
        _, first = next(iter(open_source(source).iter_pass()))
    except (StopIteration, ValueError, OSError):
        return None
    return "{}x{}".format(*fit_resolution(first.shape[0], first.shape[1], short_side))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evit_ros.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=None, help="folder of images, video or rosbag2 (default: CamVid val)")
    parser.add_argument("--out", default="demo_out", help="output folder for overlay PNGs and summary.json")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--weights", default=None, help="checkpoint (default: the test data's B0, else cache/Hub)")
    parser.add_argument(
        "--resolution",
        default=None,
        help="network input HxW (default: the source's aspect ratio with a short side of 384, e.g. 384x512 for CamVid)",
    )
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--num-threads", type=int, default=0)
    parser.add_argument("--rate", type=float, default=None, help="replay rate in Hz (default: the source's)")
    parser.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0: the whole source)")
    parser.add_argument("--no-dds-profile", action="store_true", help="use Fast DDS defaults")
    parser.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for the node")
    return parser


def run_demo(args: argparse.Namespace) -> int:
    source = args.source or default_source()
    if source is None:
        print("demo: no --source given and no CamVid data found (set EVIT_ROS_TEST_DATA)", file=sys.stderr)
        return 1
    weights = args.weights or default_weights()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("overlay_*.png"):  # a previous run's frames would mix with this one's
        stale.unlink()
    env = ros_env(dds_profile=not args.no_dds_profile)
    os.environ.update({k: v for k, v in env.items() if k != "PYTHONPATH"})  # this process joins the same graph
    if "FASTDDS_DEFAULT_PROFILES_FILE" not in env:
        os.environ.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)

    import cv2
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from evit_ros.io.encodings import decode_image
    from evit_ros.ros import rcl_serialized

    resolution = args.resolution or demo_resolution(source)
    node_cmd = node_command(NAMESPACE, args.model, weights, resolution, args.backend, args.num_threads)
    print(f"demo: ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']} profile={env.get('FASTDDS_DEFAULT_PROFILES_FILE', 'none')}")
    node_proc = subprocess.Popen(node_cmd, env=env)
    play_proc = None
    context = rclpy.Context()
    rclpy.init(context=context)
    recorder_node = rclpy.create_node("demo_recorder", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(recorder_node)
    written = [0]

    def save(output: str, msg) -> None:
        if output != "overlay":
            return
        rgb = decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian)
        stamp = f"{msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}"
        cv2.imwrite(str(out_dir / f"overlay_{written[0]:05d}_{stamp}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        written[0] += 1

    recorder = Recorder(recorder_node, NAMESPACE, ("labels", "overlay"), on_message=save)
    status = 0
    played = None  # when the source had been played: the node's rates are read as of then
    try:
        if not spin_until(executor, lambda: recorder.ready() or node_proc.poll() is not None, args.startup_timeout):
            raise RuntimeError("seg_node did not come up in time")
        if node_proc.poll() is not None:
            raise RuntimeError(f"seg_node exited with status {node_proc.returncode}")
        play_cmd = [sys.executable, "-m", "evit_ros.cli.play", source, "--topic", f"{NAMESPACE}/image"]
        play_cmd += ["--wait-subscribers", "1"]
        if args.rate:
            play_cmd += ["--rate", str(args.rate)]
        if args.max_frames:
            play_cmd += ["--max-frames", str(args.max_frames)]
        play_proc = subprocess.Popen(play_cmd, env=env)
        while play_proc.poll() is None:
            executor.spin_once(timeout_sec=0.05)
        played = time.monotonic()
        spin_until(executor, lambda: False, 2.0)  # the last frames in flight
        if play_proc.returncode != 0:
            raise RuntimeError(f"the replay of {source} exited with status {play_proc.returncode}")
        if not recorder.summary("labels")["frames_received"]:
            raise RuntimeError("seg_node published no labels")
    except (KeyboardInterrupt, RuntimeError) as exc:
        if isinstance(exc, RuntimeError):
            print(f"demo: {exc}", file=sys.stderr)
            status = 1
    finally:
        if play_proc is not None:
            stop_process(play_proc)
        summary = recorder.summary("labels", until=played)
        summary["overlay"] = recorder.summary("overlay", until=played)
        summary["overlays_written"] = written[0]
        summary["source"] = source
        summary["node_exit_status"] = stop_process(node_proc)
        executor.shutdown()
        rcl_serialized.destroy_serialized_subscriptions(recorder_node)
        recorder_node.destroy_node()
        rclpy.try_shutdown(context=context)

    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lat, node = summary["latency_ms"], summary["node"]
    print(
        f"demo: frames in {node['frames_in']}, out {summary['frames_received']} (overlays written {written[0]}), "
        f"dropped {node['dropped_frames']}, bad {node['bad_frames']}\n"
        f"demo: output {summary['output_fps']} FPS; end-to-end latency p50 {lat['p50']} ms, p90 {lat['p90']} ms, "
        f"p99 {lat['p99']} ms; inference {node['inference_ms']} ms ({node['backend']}/{node['precision']})\n"
        f"demo: wrote {out_dir / 'summary.json'}"
    )
    return status


def main(argv: Sequence[str] | None = None) -> int:
    return run_demo(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
