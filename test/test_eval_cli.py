"""`evit-ros eval` on folders: reproduces `evit-ros predict` + the metric; layouts, class maps and errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from reference_metrics import independent_scores

import evit_ros
from evit_ros.cli.main import main as evit_main
from evit_ros.evaluation.classmap import ClassMap
from evit_ros.evaluation.sources import FolderSource, detect_layout

CAMVID_MAP = Path(evit_ros.__file__).parent / "data" / "cityscapes_to_camvid11.yaml"


def _camvid_subset(camvid_pairs: list[tuple[Path, Path]], root: Path, n: int) -> Path:
    """A CamVid-layout folder (val/ + valannot/) of symlinks to the first n real frames."""
    for sub in ("val", "valannot"):
        (root / sub).mkdir(parents=True)
    for image, label in camvid_pairs[:n]:
        (root / "val" / image.name).symlink_to(image.resolve())
        (root / "valannot" / label.name).symlink_to(label.resolve())
    return root


def test_eval_reproduces_predict_on_camvid(camvid_pairs, b0_model, tmp_path: Path) -> None:
    b0 = b0_model("384x512")
    root = _camvid_subset(camvid_pairs, tmp_path / "camvid", 8)
    model = ["--model", "b0-cityscapes", "--weights", str(b0.weights), "--resolution", "384x512",
             "--backend", b0.backend, "--num-threads", "1"]  # fmt: skip
    pred_dir = tmp_path / "pred"
    assert evit_main(["predict", *model, str(root / "val"), str(pred_dir)]) == 0

    cmap = ClassMap.from_yaml(CAMVID_MAP)
    pairs = []
    for image, label in camvid_pairs[:8]:
        pred = cv2.imread(str(pred_dir / f"{image.stem}.png"), cv2.IMREAD_UNCHANGED)
        gt = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
        pairs.append((gt.astype(np.int64), cmap.pred_lut[pred]))
    _, ref_miou, ref_acc = independent_scores(pairs, 11, 11)

    report = tmp_path / "report_model"
    argv = ["eval", str(root), "--class-map", str(CAMVID_MAP), *model, "--report", str(report), "--no-progress"]
    assert evit_main(argv) == 0
    data = json.loads((report / "report.json").read_text())
    assert data["frames"] == 8 and data["meta"]["layout"] == "camvid"
    assert data["miou"] == pytest.approx(ref_miou, abs=1e-9)
    assert data["pixel_accuracy"] == pytest.approx(ref_acc, abs=1e-9)
    assert set(data["per_class_iou"]) == set(cmap.names)

    # Scoring the predict output directly gives the same confusion matrix.
    report2 = tmp_path / "report_pred"
    argv = ["eval", str(root), "--class-map", str(CAMVID_MAP), "--predictions", str(pred_dir), "--report", str(report2),
            "--no-progress", "--max-frames", "8"]  # fmt: skip
    assert evit_main(argv) == 0
    data2 = json.loads((report2 / "report.json").read_text())
    assert data2["confusion_matrix"] == data["confusion_matrix"]
    for png in ("per_class_iou.png", "confusion_matrix.png", "sample_00.png"):
        assert cv2.imread(str(report / png)) is not None


def test_paired_folder_with_ade20k_ground_truth(tmp_path: Path) -> None:
    """Paired layout, ADE20K annotation convention (value - 1, 0 ignored), predictions folder."""
    rng = np.random.default_rng(11)
    root = tmp_path / "paired"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    preds = tmp_path / "pred"
    preds.mkdir()
    pairs = []
    for k in range(3):
        gt_png = rng.integers(0, 6, (20, 30)).astype(np.uint8)  # 0 = "other" -> ignored
        pred = np.where(rng.random(gt_png.shape) < 0.6, gt_png.astype(np.int64) - 1, rng.integers(0, 5, gt_png.shape))
        pred = np.clip(pred, 0, 149).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"f{k}.jpg"), rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
        cv2.imwrite(str(root / "labels" / f"f{k}.png"), gt_png)
        cv2.imwrite(str(preds / f"f{k}.png"), pred)
        gt = np.where(gt_png == 0, 255, gt_png.astype(np.int64) - 1)
        pairs.append((gt, pred.astype(np.int64)))
    assert detect_layout(root) == "paired"
    report = tmp_path / "r"
    argv = ["eval", str(root), "--predictions", str(preds), "--class-map", "ade20k", "--report", str(report),
            "--no-progress"]  # fmt: skip
    assert evit_main(argv) == 0
    data = json.loads((report / "report.json").read_text())
    _, ref_miou, ref_acc = independent_scores(pairs, 150, 255)
    assert data["miou"] == pytest.approx(ref_miou, abs=1e-12)
    assert data["pixel_accuracy"] == pytest.approx(ref_acc, abs=1e-12)
    assert data["meta"]["gt_map"] == "ade20k" and len(data["per_class_iou"]) == 150
    assert sum(v is not None for v in data["per_class_iou"].values()) == 5
    assert not any(isinstance(v, float) and math.isnan(v) for v in data["per_class_iou"].values())


def test_folder_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert evit_main(["eval", str(tmp_path / "empty"), "--no-progress"]) == 2
    assert "cannot tell the layout" in capsys.readouterr().err
    assert evit_main(["eval", str(tmp_path / "nothing_here"), "--no-progress"]) == 2
    assert "not found" in capsys.readouterr().err

    root = tmp_path / "paired"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    cv2.imwrite(str(root / "images" / "a.png"), np.zeros((4, 4, 3), np.uint8))
    cv2.imwrite(str(root / "labels" / "a.png"), np.zeros((4, 4, 3), np.uint8))  # colour label: rejected
    preds = tmp_path / "pred"
    preds.mkdir()
    cv2.imwrite(str(preds / "a.png"), np.zeros((4, 4), np.uint8))
    assert evit_main(["eval", str(root), "--predictions", str(preds), "--no-progress"]) == 2
    assert "single-channel" in capsys.readouterr().err

    cv2.imwrite(str(root / "labels" / "a.png"), np.full((4, 4), 40, np.uint8))  # not a Cityscapes train id
    assert evit_main(["eval", str(root), "--predictions", str(preds), "--no-progress"]) == 2
    assert "outside 0..18" in capsys.readouterr().err

    (preds / "a.png").unlink()
    with pytest.raises(ValueError, match="no prediction PNG"):
        FolderSource(root, predictions=preds)


def test_cityscapes_layout_detects_label_kind(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "cityscapes" / "labeled_mmseg_downscaled_256x128"
    source = FolderSource(src)
    assert source.layout == "cityscapes" and source.gt_kind == "labelIds" and len(source) == 1
    sample = next(iter(source))
    assert sample.image.shape == (128, 256, 3) and sample.gt.shape == (128, 256)
    # labelIds through the Cityscapes map agree with the shipped labelTrainIds (both were downscaled separately
    # from full resolution, so a few boundary pixels differ)
    train = cv2.imread(str(src / "gtFine" / "frankfurt_000000_000294_gtFine_labelTrainIds.png"), cv2.IMREAD_UNCHANGED)
    mapped = ClassMap.cityscapes().apply_to_ground_truth(sample.gt)
    assert np.mean(mapped == train) > 0.99
    assert set(np.unique(mapped)) - {255} <= set(range(19)) and len(np.unique(mapped)) > 5


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        evit_main(["eval", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--gt-topic", "--labels-topic", "--class-map", "--gt-map", "--report", "--predictions", "--mode",
                   "--ray", "--num-workers", "--num-gpus-per-worker", "--chunk-frames"):  # fmt: skip
        assert option in out
