"""`evit-ros eval --ray` on a local Ray cluster (2 CPUs, loopback only): exactly the in-process results.

Skipped when Ray is not installed. Every cluster is shut down at the end of its test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from fleet_data import CAMVID_MAP, GT, RESOLUTION, load_frames, predict, write_bag, write_fleet

from evit_ros.cli.main import main as evit_main
from evit_ros.evaluation.classmap import ClassMap
from evit_ros.evaluation.plan import EvalOptions, expand_sources, plan_sources, split_units
from evit_ros.evaluation.runner import merge_results, score_units

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'evit_ros[ray]')")

from evit_ros.evaluation.distributed import ScorerPool, ray_session  # noqa: E402


@pytest.fixture(autouse=True)
def no_cluster_left():
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0"  # conftest: loopback-only clusters
    yield
    initialised = ray.is_initialized()
    ray.shutdown()
    assert not initialised, "a test left Ray running"


@pytest.fixture(scope="module")
def frames(camvid_pairs: list[tuple[Path, Path]], b0_model) -> list[dict]:
    out = load_frames(camvid_pairs, 18)
    predict(out, b0_model(RESOLUTION))
    return out


def _model_args(weights: Path) -> list[str]:
    return ["--mode", "model", "--images-topic", "camera/image", "--gt-topic", GT, "--class-map", str(CAMVID_MAP),
            "--weights", str(weights), "--resolution", RESOLUTION, "--backend", "torch", "--num-threads", "1",
            "--no-progress"]  # fmt: skip


def _scores(report: Path) -> dict:
    data = json.loads((report / "report.json").read_text())
    for row in data["sources"]:
        row.pop("seconds")
    data.pop("meta")
    return data


def test_ray_gives_the_in_process_result(frames, camvid_pairs, b0_checkpoint: Path, tmp_path: Path) -> None:
    """6 bags (sqlite3 and mcap), a bag cut off mid-write and an unreadable one, chunked over 2 workers."""
    root = tmp_path / "drives"
    fleet = write_fleet(root, frames)
    big = load_frames(camvid_pairs[18:], 8, size=(360, 480))  # full size: the mcap file has several chunks
    for f in big:
        f["pred"] = np.zeros(f["gt"].shape, np.uint8)
    write_bag(root / "cut", "mcap", big, bag=7)
    storage = root / "cut" / "cut.mcap"
    storage.write_bytes(storage.read_bytes()[: storage.stat().st_size * 11 // 20])
    (root / "broken.mcap").write_bytes(b"\x89MCAP0\r\n" + bytes(range(40)))
    assert len(expand_sources([root])) == 8

    local, on_ray = tmp_path / "local", tmp_path / "ray"
    args = ["eval", str(root), *_model_args(b0_checkpoint)]
    assert evit_main([*args, "--report", str(local)]) == 0
    assert evit_main([*args, "--report", str(on_ray), "--ray", "--num-workers", "2", "--chunk-frames", "2"]) == 0
    meta = json.loads((on_ray / "report.json").read_text())["meta"]
    assert meta["ray"]["workers"] == 2 and meta["ray"]["units"] > len(fleet) + 1  # bags were split into chunks

    expected, got = _scores(local), _scores(on_ray)
    assert got["confusion_matrix"] == expected["confusion_matrix"]  # integer counts: bit for bit
    assert got == expected  # hence every score, the per-bag table and the latency figures
    rows = {Path(r["source"]).name: r for r in got["sources"]}
    assert rows["cut"]["flags"] == ["truncated"] and 0 < rows["cut"]["frames"] < len(big)
    assert "broken.mcap" in rows["broken.mcap"]["source"] and rows["broken.mcap"]["error"]
    assert got["sources"][0]["source"].endswith("broken.mcap")  # excluded sources head the table
    assert got["frames"] == 18 + rows["cut"]["frames"]


def _loopback_only(pids: set[int]) -> list[str]:
    """Listening sockets of the given processes (and Ray's own daemons) that are not on 127.0.0.1."""
    out = subprocess.run(["ss", "-tlnpH"], capture_output=True, text=True, check=True).stdout
    ray_names = ("raylet", "gcs_server", "ray::")
    bad = []
    for line in out.splitlines():
        if any(f"pid={p}," in line for p in pids) or any(f'"{n}' in line for n in ray_names):
            local = line.split()[3]
            if not local.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:")):
                bad.append(line)
    return bad


def test_killed_worker_is_retried_exactly(frames, b0_checkpoint: Path, tmp_path: Path) -> None:
    fleet = write_fleet(tmp_path / "drives", frames, bags=4)
    options = EvalOptions(mode="model", images_topic="camera/image", gt_topic=GT, samples=0)
    cmap = ClassMap.from_yaml(CAMVID_MAP)
    plans, failures = plan_sources(fleet, options)
    units = split_units(plans, chunk_frames=1)
    seg = dict(model="b0-cityscapes", weights=str(b0_checkpoint), resolution=RESOLUTION, backend="torch",
               num_threads=1)  # fmt: skip
    from evit_ros.pipeline.segmenter import Segmenter

    local = Segmenter(**seg)
    expected = merge_results(plans, failures, score_units(units, options, cmap, local), cmap)
    local.close()

    killed: list[int] = []
    with ray_session("local", num_cpus=2):
        pool = ScorerPool(2, options, cmap, seg, max_restarts=2, max_task_retries=2)
        pids = pool.pids()
        if shutil.which("ss"):
            assert _loopback_only(set(pids) | {os.getpid()}) == []

        def kill_third(worker: int, unit) -> None:
            # The unit was just handed to this worker: it dies with the unit in flight.
            if len(killed) == 0 and unit is units[2]:
                os.kill(pids[worker], signal.SIGKILL)
                killed.append(pids[worker])

        results = pool.run(list(units), on_submit=kill_third)
        after = pool.pids()
        pool.close()
    assert killed and killed[0] not in after and len(set(after)) == 2  # Ray restarted the worker
    assert not any(r.error for r in results) and len(results) == len(units)
    got = merge_results(plans, failures, results, cmap)
    np.testing.assert_array_equal(got.scores.confusion, expected.scores.confusion)  # nothing lost or doubled
    assert got.frames == expected.frames == 12 and got.scores.miou == expected.scores.miou


def _sigint_live() -> None:
    """In the child before exec: SIGINT handled as at a terminal. A shell starts background jobs with SIGINT
    ignored, and Python then installs no KeyboardInterrupt handler, so Ctrl-C could not be tested from one."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("use_ray", [False, True], ids=["in_process", "ray"])
def test_ctrl_c_stops_cleanly(frames, b0_checkpoint: Path, tmp_path: Path, use_ray: bool) -> None:
    """SIGINT to the whole process group (what Ctrl-C does) mid-scoring: one line, exit 130, nothing left running."""
    import sys
    import time

    fleet = write_fleet(tmp_path / "drives", frames, bags=4)
    args = [a if a != RESOLUTION else "1024x1280" for a in _model_args(b0_checkpoint)]  # slow enough to interrupt
    args = [a for a in args if a != "--no-progress"] + (
        ["--ray", "--num-workers", "2", "--chunk-frames", "1"] * use_ray
    )
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    )
    proc = subprocess.Popen([sys.executable, "-m", "evit_ros.cli.main", "eval", str(fleet[0].parent), *args,
                             "--report", str(tmp_path / "report")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, start_new_session=True, preexec_fn=_sigint_live)  # fmt: skip
    try:
        seen = b""
        deadline = time.monotonic() + 120
        while b"| 1/12 " not in seen and time.monotonic() < deadline:  # the progress bar: a frame is done
            seen += os.read(proc.stderr.fileno(), 4096) or b""
            assert proc.poll() is None, seen.decode(errors="replace")
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = (seen + err).decode(errors="replace")
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "evit-ros eval: interrupted; nothing was written", repr(err[-600:])
    assert "Traceback" not in err and not (tmp_path / "report").exists()
    time.sleep(1)
    left = subprocess.run(["ps", "-eo", "pgid=,comm="], capture_output=True, text=True).stdout.splitlines()
    assert [line for line in left if line.split()[0] == str(proc.pid)] == []  # no raylet or worker survives
