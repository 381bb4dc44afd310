"""`evit-ros eval` on many sources in one process: per-source table, exact totals, damaged recordings."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from fleet_data import (
    CAMVID_MAP,
    FRAMES_PER_BAG,
    GT,
    LABELS,
    RESOLUTION,
    latency_ns,
    load_frames,
    predict,
    write_bag,
    write_fleet,
)
from reference_metrics import independent_scores

from evit_ros.cli.main import main as evit_main
from evit_ros.evaluation.classmap import ClassMap
from evit_ros.evaluation.latency import LatencyStats, merge_latency
from evit_ros.evaluation.plan import EvalOptions, expand_sources, plan_sources, split_units
from evit_ros.evaluation.runner import merge_results, score_units
from evit_ros.io.bagio import BagHealth, BagReadError, ImageBagWriter, iter_bag_frames

RECORDED = ["--mode", "recorded", "--images-topic", "camera/image", "--gt-topic", GT, "--labels-topic", LABELS,
            "--class-map", str(CAMVID_MAP), "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def frames(camvid_pairs: list[tuple[Path, Path]], b0_model) -> list[dict]:
    out = load_frames(camvid_pairs, 6 * FRAMES_PER_BAG)
    predict(out, b0_model(RESOLUTION))
    return out


@pytest.fixture(scope="module")
def fleet(frames: list[dict], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_fleet(tmp_path_factory.mktemp("fleet") / "drives", frames)


def _pairs(frames: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
    cmap = ClassMap.from_yaml(CAMVID_MAP)
    return [(f["gt"].astype(np.int64), cmap.pred_lut[f["pred"]]) for f in frames]


def _report(path: Path) -> dict:
    return json.loads((path / "report.json").read_text())


def test_expand_sources(fleet: list[Path], tmp_path: Path) -> None:
    root = fleet[0].parent
    assert expand_sources([root]) == fleet  # a folder of recordings: every bag in it, by name
    listing = tmp_path / "bags.txt"
    listing.write_text(f"# two drives\n{fleet[1]}\n\n{fleet[0]}\n{fleet[1]}\nmissing_bag\n")
    assert expand_sources([listing]) == [fleet[1], fleet[0], tmp_path / "missing_bag"]  # in order, no duplicates
    plans, failures = plan_sources(expand_sources([listing]), EvalOptions(mode="recorded", gt_topic=GT))
    assert [p.source for p in plans] == [str(fleet[1]), str(fleet[0])]
    assert [p.frames for p in plans] == [FRAMES_PER_BAG] * 2  # from the bag index, without reading the data
    assert len(failures) == 1 and "not found" in failures[0].reason


def test_many_bags_in_process(frames: list[dict], fleet: list[Path], tmp_path: Path) -> None:
    report = tmp_path / "report"
    assert evit_main(["eval", str(fleet[0].parent), *RECORDED, "--report", str(report)]) == 0
    data = _report(report)
    _, miou, acc = independent_scores(_pairs(frames), 11, 11)
    assert data["frames"] == len(frames)
    assert data["miou"] == pytest.approx(miou, abs=1e-12) and data["pixel_accuracy"] == pytest.approx(acc, abs=1e-12)
    rows = data["sources"]
    assert len(rows) == len(fleet) and not any(r["error"] or r["flags"] for r in rows)
    assert [r["miou"] for r in rows] == sorted(r["miou"] for r in rows)  # worst first
    all_lat = []
    for row in rows:
        b = fleet.index(Path(row["source"]))
        own = frames[b * FRAMES_PER_BAG : (b + 1) * FRAMES_PER_BAG]
        _, b_miou, b_acc = independent_scores(_pairs(own), 11, 11)
        assert row["frames"] == FRAMES_PER_BAG
        assert row["miou"] == pytest.approx(b_miou, abs=1e-12) and row["pixel_accuracy"] == pytest.approx(b_acc)
        lat = [latency_ns(b, k) / 1e6 for k in range(FRAMES_PER_BAG)]
        assert row["latency_ms"]["p50"] == pytest.approx(np.percentile(lat, 50))
        all_lat += lat
    # the run's latency comes from every raw sample, not from the per-bag percentiles
    for p in (50, 90, 99):
        assert data["latency_ms"][f"p{p}"] == pytest.approx(np.percentile(all_lat, p), abs=1e-9)
    assert data["latency"]["outputs"] == len(all_lat) and data["latency"]["dropped_frames"] == 0
    md = (report / "report.md").read_text()
    assert "Per-source results (worst first)" in md and fleet[3].name in md
    plot = cv2.imread(str(report / "per_source_miou.png"))
    assert plot is not None and plot.shape[0] > 100


def test_chunks_give_the_whole_bag_result(fleet: list[Path]) -> None:
    """Frame-range units partition a bag exactly, whatever the chunk size."""
    options = EvalOptions(mode="recorded", gt_topic=GT, labels_topic=LABELS, images_topic="camera/image")
    cmap = ClassMap.from_yaml(CAMVID_MAP)
    plans, failures = plan_sources(fleet[:2], options)
    assert not failures
    whole = merge_results(plans, [], score_units(split_units(plans), options, cmap), cmap)
    units = split_units(plans, chunk_frames=2)
    assert [(u.start, u.stop) for u in units[:2]] == [(0, 2), (2, None)] and len(units) == 4
    chunked = merge_results(plans, [], score_units(units[::-1], options, cmap), cmap)  # any order
    np.testing.assert_array_equal(chunked.scores.confusion, whole.scores.confusion)
    assert chunked.frames == whole.frames == 2 * FRAMES_PER_BAG
    assert [r.frames for r in chunked.sources] == [FRAMES_PER_BAG] * 2


def _truncate(bag: Path, fraction: float) -> Path:
    storage = next(bag.glob("*.mcap"))
    data = storage.read_bytes()
    storage.write_bytes(data[: int(len(data) * fraction)])
    return bag


def test_damaged_recordings(frames: list[dict], camvid_pairs, tmp_path: Path, capsys) -> None:
    big = load_frames(camvid_pairs, 8, size=(360, 480))  # full size: several 1 MiB mcap chunks
    for f, small in zip(big, frames):
        f["pred"] = cv2.resize(small["pred"], (480, 360), interpolation=cv2.INTER_NEAREST)
    intact = tmp_path / "intact"
    write_bag(intact, "mcap", big)
    cut = tmp_path / "cut"
    shutil.copytree(intact, cut)
    (cut / "intact.mcap").rename(cut / "cut.mcap")
    _truncate(cut, 0.55)
    health = BagHealth()
    read = [f.stamp_ns for f in iter_bag_frames(cut, [GT], health)]
    assert health.truncated and 0 < len(read) < len(big)
    nometa = tmp_path / "nometa"
    shutil.copytree(intact, nometa)
    (nometa / "intact.mcap").rename(nometa / "nometa.mcap")
    (nometa / "metadata.yaml").unlink()
    garbage = tmp_path / "garbage.mcap"
    garbage.write_bytes(b"\x89MCAP0\r\n" + b"\x00" * 5)  # right magic, then nothing usable
    db = tmp_path / "db_cut"
    write_bag(db, "sqlite3", frames[:3])
    data = (db / "db_cut.db3").read_bytes()
    (db / "db_cut.db3").write_bytes(data[: len(data) // 3])
    with pytest.raises(BagReadError, match="db_cut"):
        list(iter_bag_frames(db))

    report = tmp_path / "report"
    argv = ["eval", str(cut), str(nometa), str(garbage), str(db), *RECORDED, "--report", str(report)]
    assert evit_main(argv) == 0  # the run completes
    data = _report(report)
    rows = {Path(r["source"]).name: r for r in data["sources"]}
    assert rows["cut"]["flags"] == ["truncated"] and rows["cut"]["error"] is None
    assert rows["nometa"]["flags"] == ["no metadata.yaml"] and rows["nometa"]["frames"] == len(big)
    for name in ("garbage.mcap", "db_cut"):
        assert rows[name]["error"] and rows[name]["miou"] is None and rows[name]["errors"] == 1
    assert "database disk image is malformed" in rows["db_cut"]["error"]
    assert [r["error"] is not None for r in data["sources"]][:2] == [True, True]  # excluded ones listed first
    k = rows["cut"]["frames"]
    assert 0 < k <= len(read)
    # scored up to the cut: the same as the intact recording's first k frames, and the total counts both bags
    ref = tmp_path / "ref"
    assert evit_main(["eval", str(intact), *RECORDED, "--max-frames", str(k), "--report", str(ref)]) == 0
    assert rows["cut"]["miou"] == _report(ref)["miou"]
    _, miou, _ = independent_scores(_pairs(big[:k] + big), 11, 11)
    assert data["frames"] == k + len(big) and data["miou"] == pytest.approx(miou, abs=1e-12)
    out = capsys.readouterr()
    assert "excluded" in out.out and "truncated" in out.out and "Traceback" not in out.err
    assert "| truncated |" in (report / "report.md").read_text()


def test_nothing_readable_is_an_error(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(b"not an mcap file at all")
    assert evit_main(["eval", str(bad), str(tmp_path / "gone.db3"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "bad.mcap" in err and "not found" in err and "Traceback" not in err


def _frames_by_cut(path: Path, data: bytes, cuts: list[int]) -> list[list[tuple[int, bytes]]]:
    out = []
    for cut in cuts:
        path.write_bytes(data[:cut])
        health = BagHealth()
        out.append([(f.stamp_ns, f.image.tobytes()) for f in iter_bag_frames(path, None, health)])
        assert health.truncated, cut
    return out


@pytest.mark.parametrize("writer", ["rosbags", "mcap_zstd"])
def test_cut_mcap_reads_every_complete_message_before_the_cut(tmp_path: Path, writer: str) -> None:
    """Cut anywhere (5 kB included), a file yields exactly a prefix of its messages, growing with the cut;
    messages of a chunk the cut went through are kept (uncompressed and zstd chunks)."""
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (16, 24), dtype=np.uint8) for _ in range(40)]  # ~400 B messages
    whole = tmp_path / "whole.mcap"
    if writer == "rosbags":
        with ImageBagWriter(tmp_path / "whole", storage="mcap") as bag:  # one 1 MiB chunk: every cut is inside it
            for i, img in enumerate(images):
                bag.write("/gt", img, "mono8", stamp_ns=10**9 + i)
        whole = tmp_path / "whole" / "whole.mcap"
    else:  # the mcap package's writer (zstd chunks of 4 kB), with rosbags CDR payloads: like a ROS 2 recorder
        from mcap.writer import CompressionType, Writer
        from rosbags.typesys import Stores, get_typestore

        store = get_typestore(Stores.ROS2_HUMBLE)
        types = store.types
        with open(whole, "wb") as f:
            w = Writer(f, chunk_size=4096, compression=CompressionType.ZSTD)
            w.start("ros2", "test")
            schema = w.register_schema("sensor_msgs/msg/Image", "ros2msg", b"")
            channel = w.register_channel("/gt", "cdr", schema)
            for i, img in enumerate(images):
                stamp = types["builtin_interfaces/msg/Time"](sec=1, nanosec=i)
                header = types["std_msgs/msg/Header"](stamp=stamp, frame_id="gt")
                msg = types["sensor_msgs/msg/Image"](header=header, height=16, width=24, encoding="mono8",
                                                     is_bigendian=0, step=24, data=img.reshape(-1))  # fmt: skip
                raw = store.serialize_cdr(msg, "sensor_msgs/msg/Image")
                w.add_message(channel, log_time=10**9 + i, data=raw, publish_time=10**9 + i)
            w.finish()
    data = whole.read_bytes()
    expected = [(10**9 + i, img.tobytes()) for i, img in enumerate(images)]
    assert [(f.stamp_ns, f.image.tobytes()) for f in iter_bag_frames(whole)] == expected
    cut = tmp_path / "cut.mcap"
    cuts = [5000, *range(6000, len(data) - 200, 1500)]
    got = _frames_by_cut(cut, data, cuts)
    for frames in got:
        assert frames == expected[: len(frames)]  # a prefix, every payload intact
    counts = [len(f) for f in got]
    assert counts == sorted(counts) and counts[0] > 0 and counts[-1] >= len(images) - 6


def test_merge_latency() -> None:
    a = LatencyStats(np.array([10.0, 30.0]), inputs=3, outputs=2, dropped=1, output_rate_hz=10.0, input_rate_hz=20.0)
    b = LatencyStats(np.array([20.0, 40.0, 50.0]), 3, 3, 0, output_rate_hz=4.0, input_rate_hz=math.nan)
    merged = merge_latency([a, b])
    np.testing.assert_array_equal(merged.latencies_ms, [10, 30, 20, 40, 50])
    assert merged.percentiles["p50"] == 30.0 and (merged.inputs, merged.outputs, merged.dropped) == (6, 5, 1)
    assert merged.output_rate_hz == pytest.approx((1 + 2) / (0.1 + 0.5))  # intervals over spans
    assert merged.input_rate_hz == pytest.approx(20.0)  # the recording without a rate adds nothing
    assert merge_latency([a]) is a and merge_latency([]) is None


def test_ray_missing_is_one_clear_line(fleet: list[Path], monkeypatch, capsys) -> None:
    """Without the ray package, --ray fails with the install hint (no cluster, no traceback)."""
    import sys

    assert evit_main(["eval", str(fleet[0]), *RECORDED, "--num-workers", "2"]) == 2
    assert "--num-workers only apply with --ray" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray looks like to `import ray`
    assert evit_main(["eval", str(fleet[0]), *RECORDED, "--ray"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'evit_ros[ray]'" in err and "Traceback" not in err
