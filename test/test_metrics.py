"""Metrics against straightforward per-class loops, and against the official Cityscapes evaluation."""

from __future__ import annotations

import argparse
import math
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from reference_metrics import independent_scores

from evit_ros.cli.eval import add_eval_arguments, run_eval
from evit_ros.evaluation.classmap import ClassMap, ade20k_gt_lut
from evit_ros.evaluation.metrics import (
    ConfusionAccumulator,
    confusion_matrix,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
)
from evit_ros.network.classes import cityscapes_labelid_lut


def test_confusion_matrix_counts_match_a_pixel_loop() -> None:
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (13, 17)).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.2] = 255
    pred = rng.integers(0, 6, gt.shape).astype(np.uint8)  # 5 = outside the classes -> void
    conf = confusion_matrix(gt, pred, 5, 255)
    expected = np.zeros((5, 6), dtype=np.int64)
    for g, p in zip(gt.ravel(), pred.ravel()):
        if g != 255:
            expected[g, min(int(p), 5)] += 1
    np.testing.assert_array_equal(conf, expected)
    assert conf.sum() == np.sum(gt != 255)


def test_scores_match_independent_loop_with_absent_classes_and_void() -> None:
    rng = np.random.default_rng(1)
    n, ignore = 7, 255
    pairs = []
    acc = ConfusionAccumulator(n, ignore)
    for _ in range(3):
        gt = rng.integers(0, 5, (40, 30)).astype(np.int64)  # classes 5 and 6 never in GT
        gt[rng.random(gt.shape) < 0.1] = ignore
        pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 6, gt.shape))  # 6 never predicted
        pred[rng.random(gt.shape) < 0.05] = ignore  # void predictions count as wrong
        pairs.append((gt, pred))
        acc.update(gt, pred)
    ref_iou, ref_miou, ref_acc = independent_scores(pairs, n, ignore)
    scores = acc.scores()
    np.testing.assert_allclose(scores.iou, ref_iou, rtol=0, atol=1e-12, equal_nan=True)
    assert math.isnan(scores.iou[6]) and not math.isnan(scores.iou[5])  # 5 is predicted (all FP): IoU 0
    assert scores.iou[5] == 0.0
    assert scores.miou == pytest.approx(ref_miou, abs=1e-12)
    assert scores.pixel_accuracy == pytest.approx(ref_acc, abs=1e-12)
    assert mean_iou(acc.confusion) == scores.miou
    assert pixel_accuracy(acc.confusion) == scores.pixel_accuracy


def test_perfect_prediction_and_square_matrix() -> None:
    gt = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    conf = confusion_matrix(gt, gt, 4)
    iou = iou_per_class(conf)
    assert list(iou[:3]) == [1.0, 1.0, 1.0] and math.isnan(iou[3])
    assert mean_iou(conf) == 1.0 and pixel_accuracy(conf) == 1.0
    assert mean_iou(conf[:, :4]) == 1.0  # an N x N matrix is accepted too


def test_metric_input_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8), 3)
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion_matrix(np.full((2, 2), 7, np.uint8), np.zeros((2, 2), np.uint8), 3)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.uint8), 3)
    with pytest.raises(ValueError, match="N x"):
        iou_per_class(np.zeros((3, 7)))


def test_class_maps(tmp_path: Path) -> None:
    cs = ClassMap.cityscapes()
    raw = np.array([[7, 8, 0, 33, 26]], dtype=np.uint8)
    np.testing.assert_array_equal(cs.apply_to_ground_truth(raw), [[0, 1, 255, 18, 13]])
    np.testing.assert_array_equal(cs.apply_to_ground_truth(raw), cityscapes_labelid_lut()[raw])
    ade = ClassMap.ade20k()
    np.testing.assert_array_equal(ade.apply_to_ground_truth(np.array([[0, 1, 150]], np.uint8)), [[255, 0, 149]])
    assert ade20k_gt_lut()[151] == 255
    assert ade.apply_to_ground_truth(np.array([[300]], np.uint16))[0, 0] == 255

    path = tmp_path / "m.yaml"
    path.write_text("num_classes: 2\nignore_index: 9\nnames: [a, b]\nmap: {0: 1, 3: 0}\n")
    ym = ClassMap.from_yaml(path)
    np.testing.assert_array_equal(ym.apply_to_prediction(np.array([[0, 1, 3]], np.uint8)), [[1, 9, 0]])
    np.testing.assert_array_equal(ym.apply_to_ground_truth(np.array([[0, 1, 9]], np.uint8)), [[0, 1, 9]])
    for bad, msg in [
        ("num_classes: 2\nmap: {0: 5}\n", "target must be"),
        ("num_classes: 2\nnames: [a]\nmap: {0: 1}\n", "names"),
        ("num_classes: 0\nmap: {0: 0}\n", "positive"),
        ("map: {0: 0}\n", "num_classes"),
    ]:
        path.write_text(bad)
        with pytest.raises(ValueError, match=msg):
            ClassMap.from_yaml(path)


def test_shipped_camvid_map_matches_the_txt(shared_data: Path) -> None:
    """evit_ros/data/cityscapes_to_camvid11.yaml expresses camvid/cityscapes_trainid_to_camvid11.txt."""
    import evit_ros

    cmap = ClassMap.from_yaml(Path(evit_ros.__file__).parent / "data" / "cityscapes_to_camvid11.yaml")
    txt = (shared_data / "camvid" / "cityscapes_trainid_to_camvid11.txt").read_text()
    rows = [ln.split() for ln in txt.splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(rows) == 19
    for row in rows:
        assert cmap.pred_lut[int(row[0])] == int(row[2])
        assert cmap.names[int(row[2])] == row[3]
    names = [ln.split()[1] for ln in (shared_data / "camvid" / "classes.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]  # fmt: skip
    assert cmap.names == names[:11] and cmap.ignore_index == 11


# ---------------------------------------------------------------- official Cityscapes evaluation


def _cityscapes_eval_module(dataset: Path, results: Path):
    os.environ["CITYSCAPES_DATASET"] = str(dataset)
    os.environ["CITYSCAPES_RESULTS"] = str(results)
    try:
        import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as official
    except ImportError as exc:  # only when the package truly is not installed
        pytest.skip(f"cityscapesscripts cannot be imported: {exc}")
    official.args.evalInstLevelScore = False
    official.args.JSONOutput = False
    official.args.quiet = True
    official.args.predictionPath = None
    official.args.predictionWalk = None
    return official


def test_matches_official_cityscapes_evaluation(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "cityscapes" / "labeled_mmseg_downscaled_256x128"
    gt_real = cv2.imread(str(src / "gtFine" / "frankfurt_000000_000294_gtFine_labelIds.png"), cv2.IMREAD_UNCHANGED)
    assert gt_real is not None and gt_real.ndim == 2

    # A Cityscapes-layout folder: the real frame plus a second frame built from it (flipped, other city).
    root = tmp_path / "cityscapes"
    frames = {"frankfurt_000000_000294": gt_real, "lindau_000001_000019": np.ascontiguousarray(gt_real[::-1, ::-1])}
    rng = np.random.default_rng(5)
    lut = cityscapes_labelid_lut()
    train_to_id = {int(t): i for i, t in enumerate(lut) if t != 255}
    pred_dir, official_pred_dir = tmp_path / "pred_trainids", tmp_path / "results"
    pred_dir.mkdir()
    official_pred_dir.mkdir()
    gt_files, official_preds = [], []
    for name, gt in frames.items():
        city = name.split("_")[0]
        (root / "leftImg8bit" / "val" / city).mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / "val" / city).mkdir(parents=True, exist_ok=True)
        image = cv2.imread(str(src / "leftImg8bit" / "frankfurt_000000_000294_leftImg8bit.png"))
        cv2.imwrite(str(root / "leftImg8bit" / "val" / city / f"{name}_leftImg8bit.png"), image)
        gt_file = root / "gtFine" / "val" / city / f"{name}_gtFine_labelIds.png"
        cv2.imwrite(str(gt_file), gt)
        gt_files.append(str(gt_file))
        # Prediction: the true train ids, with rectangles of wrong classes and some "unlabeled" (void) pixels.
        pred = lut[gt].astype(np.int64)
        pred[pred == 255] = rng.integers(0, 19)
        for _ in range(25):
            y, x = rng.integers(0, gt.shape[0] - 16), rng.integers(0, gt.shape[1] - 24)
            pred[y : y + 16, x : x + 24] = rng.integers(0, 19)
        void = rng.random(gt.shape) < 0.02
        pred_ids = np.vectorize(train_to_id.get)(pred).astype(np.uint8)
        pred_ids[void] = 0  # labelId 0 "unlabeled": ignoreInEval in the official script
        pred[void] = 255
        cv2.imwrite(str(pred_dir / f"{name}_leftImg8bit.png"), pred.astype(np.uint8))
        official_file = official_pred_dir / f"{name}_pred_labelIds.png"
        cv2.imwrite(str(official_file), pred_ids)
        official_preds.append(str(official_file))

    official = _cityscapes_eval_module(root, tmp_path / "official_out")
    result = official.evaluateImgLists(official_preds, gt_files, official.args)
    conf = np.asarray(result["confMatrix"], dtype=np.float64)
    evaluated = [label.id for label in official.labels if label.id >= 0 and not label.ignoreInEval]
    official_acc = sum(conf[i, i] for i in evaluated) / conf[evaluated].sum()

    report = tmp_path / "report"
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    args = parser.parse_args([str(root), "--predictions", str(pred_dir), "--report", str(report), "--no-progress"])
    assert run_eval(args) == 0
    import json

    ours = json.loads((report / "report.json").read_text())
    assert ours["frames"] == 2
    for name, value in result["classScores"].items():
        if name not in ours["per_class_iou"]:
            assert math.isnan(value), name  # ignoreInEval classes
            continue
        if math.isnan(value):
            assert ours["per_class_iou"][name] is None, name
        else:
            assert ours["per_class_iou"][name] == pytest.approx(value, abs=1e-6), name
    assert len([v for v in ours["per_class_iou"].values() if v is not None]) >= 10
    assert ours["miou"] == pytest.approx(result["averageScoreClasses"], abs=1e-6)
    assert ours["pixel_accuracy"] == pytest.approx(official_acc, abs=1e-6)
    assert 0.2 < ours["miou"] < 0.99  # the corruption is visible in the score
    shutil.rmtree(tmp_path / "official_out", ignore_errors=True)
