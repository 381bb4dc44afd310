"""`make demo`, the main job: the real demo (seg_node, the replay tool and the recorder as processes over real DDS)
on the first CamVid frames, and the summary it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

pytest.importorskip("rclpy")

REPO_ROOT = Path(__file__).resolve().parents[1]
FRAMES = 30  # two seconds of the 15 Hz sequence: the node reports its rates while the source plays


def _run_demo(*args: str, timeout: float = 600.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "evit_ros.cli.demo", *args],
        cwd=REPO_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_demo_segments_the_sequence_and_reports_what_it_measured(shared_data, b0_checkpoint, tmp_path) -> None:
    source = shared_data / "camvid" / "val"
    first = cv2.imread(str(sorted(source.glob("*.png"))[0]), cv2.IMREAD_COLOR)
    out = tmp_path / "demo_out"
    run = _run_demo("--source", str(source), "--weights", str(b0_checkpoint), "--out", str(out),
                    "--max-frames", str(FRAMES))  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads((out / "summary.json").read_text())
    node = summary["node"]

    # every frame the node took in was segmented, dropped for a newer one or taken before it saw the recorder
    # (idle), and every output arrived
    frames_in, frames_out, dropped, idle = (
        int(node[k]) for k in ("frames_in", "frames_out", "dropped_frames", "idle_frames")
    )
    assert 0 < frames_out and frames_in <= FRAMES and frames_out + dropped + idle == frames_in, node
    assert int(node["bad_frames"]) == 0 and int(node["nan_frames"]) == 0, node
    assert summary["frames_received"] == frames_out, summary
    assert summary["overlay"]["frames_received"] == frames_out, summary
    assert summary["node_exit_status"] == 0

    # the rates are the node's while the source played, not the 0 Hz of a status sent after it ended
    assert float(node["input_rate_hz"]) > 0 and float(node["output_rate_hz"]) > 0, node
    assert summary["output_fps"] > 0 and 0 < summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"], summary
    assert node["backend"] and node["resolution"] == "384x512", node  # the source's aspect ratio, short side 384

    # one PNG per overlay received, at the camera's own size, in stamp order
    pngs = sorted(out.glob("overlay_*.png"))
    assert len(pngs) == summary["overlays_written"] == frames_out
    stamps = [float(p.stem.split("_")[2]) for p in pngs]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    overlay = cv2.imread(str(pngs[0]), cv2.IMREAD_COLOR)
    assert overlay is not None and overlay.shape == first.shape


def test_demo_fails_when_the_source_cannot_be_played(b0_checkpoint, tmp_path) -> None:
    empty = tmp_path / "no_frames"
    empty.mkdir()
    run = _run_demo("--source", str(empty), "--weights", str(b0_checkpoint), "--out", str(tmp_path / "out"),
                    "--resolution", "128x256", timeout=300.0)  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    assert "demo:" in run.stderr, run.stderr
