"""rosbag2 I/O and bag evaluation (both modes, sqlite3 and mcap) on real CamVid frames with the real B0 model."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from reference_metrics import independent_scores

import evit_ros
from evit_ros.cli.eval import add_eval_arguments, run_eval
from evit_ros.evaluation.classmap import ClassMap
from evit_ros.evaluation.latency import latency_from_bag
from evit_ros.io.bagio import ImageBagWriter, bag_topics, iter_bag_frames

CAMVID_MAP = Path(evit_ros.__file__).parent / "data" / "cityscapes_to_camvid11.yaml"
N_FRAMES = 8
DROPPED = {2, 5}  # frames the simulated node never answered
RESOLUTION = "384x512"


def _eval(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    return run_eval(parser.parse_args([*argv, "--no-progress"]))


# --------------------------------------------------------------------------- bagio


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_bag_roundtrip(tmp_path: Path, storage: str) -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    labels16 = rng.integers(0, 65536, (6, 10), dtype=np.uint16)
    labels8 = rng.integers(0, 20, (6, 10), dtype=np.uint8)
    bag = tmp_path / "bag"
    with ImageBagWriter(bag, storage=storage) as writer:
        writer.write("/cam", rgb, "rgb8", stamp_ns=1_000_000_007, recv_ns=1_050_000_000)
        writer.write("/cam", np.ascontiguousarray(rgb[:, :, ::-1]), "bgr8", stamp_ns=2_000_000_000)
        writer.write("/gt16", labels16, "mono16", stamp_ns=1_000_000_007, frame_id="gt")
        writer.write("/gt8", labels8, "mono8", stamp_ns=3)
        ok, png = cv2.imencode(".png", rgb[:, :, ::-1])
        assert ok
        writer.write_compressed("/cam/compressed", png.tobytes(), "png", stamp_ns=4)
    assert bag_topics(bag) == {
        "/cam": "sensor_msgs/msg/Image",
        "/gt16": "sensor_msgs/msg/Image",
        "/gt8": "sensor_msgs/msg/Image",
        "/cam/compressed": "sensor_msgs/msg/CompressedImage",
    }
    frames = list(iter_bag_frames(bag))
    assert [f.recv_ns for f in frames] == sorted(f.recv_ns for f in frames)  # record order
    by = {(f.topic, f.stamp_ns): f for f in frames}
    first = by[("/cam", 1_000_000_007)]
    assert first.recv_ns == 1_050_000_000 and first.encoding == "rgb8" and first.frame_id == "camera"
    np.testing.assert_array_equal(first.image, rgb)
    np.testing.assert_array_equal(by[("/cam", 2_000_000_000)].image, rgb)  # bgr8 decoded to RGB
    gt16 = by[("/gt16", 1_000_000_007)]
    assert gt16.image.dtype == np.uint16 and gt16.frame_id == "gt"
    np.testing.assert_array_equal(gt16.image, labels16)  # raw values, not scaled
    np.testing.assert_array_equal(by[("/gt8", 3)].image, labels8)
    np.testing.assert_array_equal(by[("/cam/compressed", 4)].image, rgb)
    # topic filter, and the single storage file is readable directly
    assert [f.topic for f in iter_bag_frames(bag, ["/gt8"])] == ["/gt8"]
    single = next(bag.glob("*.db3" if storage == "sqlite3" else "*.mcap"))
    assert len(list(iter_bag_frames(single, ["/cam"]))) == 2


def test_bag_errors(tmp_path: Path) -> None:
    bag = tmp_path / "bag"
    with ImageBagWriter(bag) as writer:
        writer.write("/cam", np.zeros((2, 2, 3), np.uint8), "rgb8", stamp_ns=1)
        with pytest.raises(ValueError, match="mono8 needs"):
            writer.write("/gt", np.zeros((2, 2), np.uint16), "mono8", stamp_ns=1)
    with pytest.raises(ValueError, match="not in bag"):
        list(iter_bag_frames(bag, ["/nope"]))
    with pytest.raises(FileNotFoundError):
        bag_topics(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a rosbag2"):
        bag_topics(tmp_path)
    with pytest.raises(ValueError, match="storage"):
        ImageBagWriter(tmp_path / "x", storage="bag")


# --------------------------------------------------------------------------- evaluation of recordings


@pytest.fixture(scope="module")
def recording(camvid_pairs: list[tuple[Path, Path]], b0_model) -> dict:
    """Real CamVid frames, their stamps, GT, and the real B0 predictions a node would have published."""
    model = b0_model(RESOLUTION)
    names_t = {}
    seq = camvid_pairs[0][0].parents[1] / "val_sequence.txt"
    for line in seq.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, t_s = line.split()
            names_t[name] = float(t_s)
    seg = model.segmenter()
    frames = []
    t0 = 1_700_000_000 * 10**9
    for i, (img_path, gt_path) in enumerate(camvid_pairs[:N_FRAMES]):
        rgb = cv2.cvtColor(cv2.imread(str(img_path)), cv2.COLOR_BGR2RGB)
        gt = cv2.imread(str(gt_path), cv2.IMREAD_UNCHANGED)
        stamp = t0 + round(names_t[img_path.name] * 1e9)
        pred = seg.segment(rgb, order="rgb").labels
        latency_ns = (40 + 7 * i) * 1_000_000 + 123
        frames.append({"rgb": rgb, "gt": gt, "stamp": stamp, "pred": pred, "latency_ns": latency_ns})
    seg.close()
    return {"frames": frames}


def _write_bag(path: Path, storage: str, frames: list[dict], with_outputs: bool) -> None:
    with ImageBagWriter(path, storage=storage) as writer:
        for i, f in enumerate(frames):
            if storage == "mcap":  # the camera as CompressedImage (lossless PNG), GT as mono16
                ok, png = cv2.imencode(".png", cv2.cvtColor(f["rgb"], cv2.COLOR_RGB2BGR))
                assert ok
                writer.write_compressed("/camera/image/compressed", png.tobytes(), "png", f["stamp"])
                writer.write("/gt/labels", f["gt"].astype(np.uint16), "mono16", f["stamp"], recv_ns=f["stamp"] + 1000)
            else:
                writer.write("/camera/image", f["rgb"], "rgb8", f["stamp"])
                writer.write("/gt/labels", f["gt"], "mono8", f["stamp"], recv_ns=f["stamp"] + 1000)
            if with_outputs and i not in DROPPED:
                recv = f["stamp"] + f["latency_ns"]
                writer.write("/segmentation/labels", f["pred"], "mono8", f["stamp"], recv_ns=recv, frame_id="camera")


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_eval_recorded_labels(recording: dict, tmp_path: Path, storage: str) -> None:
    """Mode (b): score what the node published; latency from record time - stamp; dropped frames."""
    frames = recording["frames"]
    bag = tmp_path / f"run_{storage}"
    _write_bag(bag, storage, frames, with_outputs=True)
    image_topic = "/camera/image/compressed" if storage == "mcap" else "/camera/image"
    report = tmp_path / "report"
    code = _eval([str(bag), "--images-topic", image_topic, "--gt-topic", "gt/labels",
                  "--class-map", str(CAMVID_MAP), "--report", str(report)])  # fmt: skip
    assert code == 0
    data = json.loads((report / "report.json").read_text())
    assert data["meta"]["mode"] == "recorded"

    cmap = ClassMap.from_yaml(CAMVID_MAP)
    kept = [f for i, f in enumerate(frames) if i not in DROPPED]
    pairs = [(f["gt"].astype(np.int64), cmap.pred_lut[f["pred"]]) for f in kept]
    ious, miou, acc = independent_scores(pairs, 11, 11)
    assert data["frames"] == len(kept)
    assert data["miou"] == pytest.approx(miou, abs=1e-9)
    assert data["pixel_accuracy"] == pytest.approx(acc, abs=1e-9)
    for name, ref in zip(cmap.names, ious):
        assert (
            (data["per_class_iou"][name] is None)
            if math.isnan(ref)
            else data["per_class_iou"][name] == pytest.approx(ref)
        )

    lat = np.array([f["latency_ns"] / 1e6 for f in kept])
    for p in (50, 90, 99):
        assert data["latency_ms"][f"p{p}"] == pytest.approx(np.percentile(lat, p), abs=1e-9)
    assert data["latency"]["dropped_frames"] == len(DROPPED)
    assert data["latency"]["inputs"] == N_FRAMES and data["latency"]["outputs"] == len(kept)
    recv = [f["stamp"] + f["latency_ns"] for f in kept]
    assert data["latency"]["output_rate_hz"] == pytest.approx((len(kept) - 1) / ((recv[-1] - recv[0]) / 1e9))
    for png in ("per_class_iou.png", "confusion_matrix.png", "latency_histogram.png", "sample_00.png"):
        assert cv2.imread(str(report / png)) is not None, png
    assert "mIoU" in (report / "report.md").read_text()


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_eval_bag_with_model(recording: dict, b0_model, tmp_path: Path, storage: str) -> None:
    """Mode (a): image topic + GT topic, run through the model, against the independent computation."""
    model = b0_model(RESOLUTION)
    frames = recording["frames"]
    bag = tmp_path / f"cam_{storage}"
    _write_bag(bag, storage, frames, with_outputs=False)
    image_topic = "camera/image/compressed" if storage == "mcap" else "camera/image"  # no leading slash: resolved
    report = tmp_path / "report"
    code = _eval([str(bag), "--images-topic", image_topic, "--gt-topic", "/gt/labels", "--class-map", str(CAMVID_MAP),
                  "--weights", str(model.weights), "--resolution", RESOLUTION, "--backend", model.backend,
                  "--num-threads", "1", "--report", str(report), "--samples", "1"])  # fmt: skip
    assert code == 0
    data = json.loads((report / "report.json").read_text())
    assert data["meta"]["mode"] == "model" and "latency_ms" not in data
    cmap = ClassMap.from_yaml(CAMVID_MAP)
    pairs = [(f["gt"].astype(np.int64), cmap.pred_lut[f["pred"]]) for f in frames]
    _, miou, acc = independent_scores(pairs, 11, 11)
    assert data["frames"] == N_FRAMES
    assert data["miou"] == pytest.approx(miou, abs=1e-9)
    assert data["pixel_accuracy"] == pytest.approx(acc, abs=1e-9)
    assert 0.3 < data["miou"] and data["pixel_accuracy"] > 0.8  # a working model on real frames


def test_latency_from_bag(tmp_path: Path) -> None:
    bag = tmp_path / "lat"
    lat_ms = [10.0, 20.0, 35.5, 12.25]
    with ImageBagWriter(bag, storage="mcap") as writer:
        for i in range(6):
            stamp = 5 * 10**9 + i * 100_000_000
            writer.write("/image", np.zeros((2, 2, 3), np.uint8), "rgb8", stamp)
            if i < len(lat_ms):
                recv = stamp + round(lat_ms[i] * 1e6)
                writer.write("/segmentation/labels", np.zeros((2, 2), np.uint8), "mono8", stamp, recv_ns=recv)
    stats = latency_from_bag(bag, "/image", "/segmentation/labels")
    np.testing.assert_allclose(stats.latencies_ms, lat_ms)
    assert stats.dropped == 2 and stats.inputs == 6 and stats.outputs == 4
    assert stats.percentiles["p50"] == pytest.approx(np.percentile(lat_ms, 50))
    span = (3 * 100 + 12.25 - 10.0) / 1000
    assert stats.output_rate_hz == pytest.approx(3 / span)
    assert stats.input_rate_hz == pytest.approx(5 / 0.5)


def test_eval_bag_missing_gt_topic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = tmp_path / "nogt"
    with ImageBagWriter(bag) as writer:
        writer.write("/image", np.zeros((4, 4, 3), np.uint8), "rgb8", 1)
        writer.write("/segmentation/labels", np.zeros((4, 4), np.uint8), "mono8", 1)
    assert _eval([str(bag)]) == 2
    err = capsys.readouterr().err
    assert "ground-truth topic 'gt/labels' not in bag" in err and "/segmentation/labels" in err
