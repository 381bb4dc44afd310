"""Evaluation report: ``report.json``, ``report.md`` and PNG plots (matplotlib, Agg backend).

``report.json`` keys: ``miou``, ``pixel_accuracy``, ``per_class_iou`` ({name: iou or null when the class is
absent from both ground truth and prediction}), ``frames``, ``pixels``, ``class_names``, ``confusion_matrix``
(rows ground truth, columns prediction, last column void), ``meta`` (source, mode, model, class map) and,
when latency was measured, ``latency_ms`` ({p50, p90, p99, mean, min, max}) plus ``latency`` (inputs,
outputs, dropped_frames, drop_ratio, output_rate_hz, input_rate_hz). ``sources`` lists every source of the run,
worst first (failed ones, then by mIoU): ``source``, ``mode``, ``frames``, ``miou``, ``pixel_accuracy``,
``latency_ms`` ({p50, p99} or null), ``flags`` (``truncated``, ``no metadata.yaml``), ``notes``, ``errors`` and
``error`` (why a source was excluded; null when it was scored).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evit_ros.evaluation.classmap import ClassMap
from evit_ros.evaluation.latency import LatencyStats
from evit_ros.evaluation.metrics import SegmentationScores

__all__ = ["EvalResult", "Sample", "SourceResult", "report_dict", "write_report"]


@dataclass
class Sample:
    """A frame kept for the overlay figures (evaluation class ids; ``image`` may be missing)."""

    name: str
    image: np.ndarray | None
    gt: np.ndarray
    pred: np.ndarray


@dataclass
class SourceResult:
    """One source (bag or dataset folder) of a run: its own scores, or why it was excluded."""

    source: str
    index: int
    mode: str
    frames: int = 0
    scores: SegmentationScores | None = None
    latency: LatencyStats | None = None
    flags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    errors: int = 0
    seconds: float = 0.0

    @property
    def miou(self) -> float:
        return self.scores.miou if self.scores is not None else math.nan

    def sort_key(self) -> tuple[int, float, int]:
        """Worst first: failed sources, then ascending mIoU (nan before numbers), then run order."""
        miou = self.miou
        return (0 if self.error else 1, miou if math.isfinite(miou) else -1.0, self.index)

    def to_dict(self) -> dict[str, Any]:
        lat = None
        if self.latency is not None:
            lat = {k: _num(self.latency.percentiles[k]) for k in ("p50", "p99")}
        return {
            "source": self.source,
            "mode": self.mode,
            "frames": self.frames,
            "miou": _num(self.miou),
            "pixel_accuracy": _num(self.scores.pixel_accuracy) if self.scores is not None else None,
            "latency_ms": lat,
            "flags": list(self.flags),
            "notes": list(self.notes),
            "errors": self.errors,
            "error": self.error,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class EvalResult:
    class_map: ClassMap
    scores: SegmentationScores
    frames: int
    latency: LatencyStats | None = None
    samples: list[Sample] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    sources: list[SourceResult] = field(default_factory=list)
    resized: int = 0

    def summary(self) -> str:
        lines = [
            f"frames: {self.frames}   pixels: {self.scores.pixels}",
            f"mIoU: {_pct(self.scores.miou)}   pixel accuracy: {_pct(self.scores.pixel_accuracy)}",
        ]
        if len(self.sources) > 1 or any(s.error or s.flags for s in self.sources):
            failed = sum(1 for s in self.sources if s.error)
            lines.insert(0, f"sources: {len(self.sources) - failed} scored, {failed} excluded")
            for row in sorted(self.sources, key=SourceResult.sort_key):
                if row.error:
                    lines.append(f"  excluded {row.source}: {row.error}")
                elif row.flags:
                    lines.append(f"  {', '.join(row.flags)}: {row.source} ({row.frames} frames scored)")
        if self.latency is not None:
            lat = self.latency
            p = lat.percentiles
            lines.append(
                f"latency ms: p50 {p['p50']:.1f}  p90 {p['p90']:.1f}  p99 {p['p99']:.1f}   "
                f"dropped {lat.dropped}/{lat.inputs}   output rate {lat.output_rate_hz:.2f} Hz"
            )
        return "\n".join(lines)


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.2f} %"


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def report_dict(result: EvalResult) -> dict[str, Any]:
    """The JSON-serialisable report (nan -> null)."""
    cm = result.class_map
    out: dict[str, Any] = {
        "miou": _num(result.scores.miou),
        "pixel_accuracy": _num(result.scores.pixel_accuracy),
        "per_class_iou": {name: _num(v) for name, v in zip(cm.names, result.scores.iou)},
        "frames": result.frames,
        "pixels": result.scores.pixels,
        "class_names": list(cm.names),
        "ignore_index": cm.ignore_index,
        "confusion_matrix": result.scores.confusion.tolist(),
        "meta": dict(result.meta, class_map=cm.name, gt_map=cm.gt_name),
        "sources": [row.to_dict() for row in sorted(result.sources, key=SourceResult.sort_key)],
    }
    if result.latency is not None:
        lat = result.latency
        out["latency_ms"] = {k: _num(v) for k, v in lat.to_dict().items()}
        out["latency"] = {
            "inputs": lat.inputs,
            "outputs": lat.outputs,
            "dropped_frames": lat.dropped,
            "drop_ratio": _num(lat.drop_ratio),
            "unmatched_outputs": lat.unmatched_outputs,
            "output_rate_hz": _num(lat.output_rate_hz),
            "input_rate_hz": _num(lat.input_rate_hz),
        }
    return out


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_iou(result: EvalResult, path: Path) -> None:
    plt = _plt()
    cm = result.class_map
    iou = np.nan_to_num(result.scores.iou, nan=0.0)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * cm.num_classes + 2), 4.5))
    colors = cm.palette.astype(np.float64) / 255.0
    ax.bar(range(cm.num_classes), 100 * iou, color=colors, edgecolor="black", linewidth=0.5)
    if math.isfinite(result.scores.miou):
        ax.axhline(100 * result.scores.miou, color="red", linestyle="--", label=f"mIoU {100 * result.scores.miou:.1f}")
        ax.legend(loc="upper right")
    ax.set_xticks(range(cm.num_classes))
    ax.set_xticklabels(cm.names, rotation=60, ha="right", fontsize=7 if cm.num_classes > 30 else 9)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Per-class IoU")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_confusion(result: EvalResult, path: Path) -> None:
    plt = _plt()
    cm = result.class_map
    conf = result.scores.confusion.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = conf / conf.sum(axis=1, keepdims=True)
    size = max(6.0, 0.3 * cm.num_classes + 3)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(np.nan_to_num(norm), cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="fraction of ground-truth pixels")
    labels = list(cm.names)
    ax.set_xticks(range(conf.shape[1]))
    ax.set_xticklabels([*labels, "void"], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(conf.shape[0]))
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title("Confusion matrix (row-normalised)")
    if cm.num_classes <= 20:
        for i in range(norm.shape[0]):
            for j in range(norm.shape[1]):
                if np.isfinite(norm[i, j]) and norm[i, j] >= 0.01:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if norm[i, j] > 0.5 else "white")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_latency(lat: LatencyStats, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(lat.latencies_ms, bins=min(50, max(5, lat.latencies_ms.size // 2)), color="steelblue")
    for name, style in (("p50", "-"), ("p90", "--"), ("p99", ":")):
        value = lat.percentiles[name]
        if math.isfinite(value):
            ax.axvline(value, color="red", linestyle=style, label=f"{name} {value:.1f} ms")
    ax.set_xlabel("end-to-end latency (ms): record time - header stamp")
    ax.set_ylabel("frames")
    ax.set_title(f"Latency ({lat.outputs} outputs, {lat.dropped} of {lat.inputs} inputs dropped)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_sources(rows: list[SourceResult], path: Path) -> None:
    """Per-source mIoU, worst at the top, so the recordings that regressed stand out."""
    plt = _plt()
    scored = [r for r in sorted(rows, key=SourceResult.sort_key) if r.scores is not None]
    names = [_short(r.source) for r in scored]
    values = [100 * np.nan_to_num(r.miou, nan=0.0) for r in scored]
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.3 * len(scored) + 1.2)))
    colors = ["darkorange" if r.flags else "steelblue" for r in scored]
    ax.barh(range(len(scored)), values, color=colors)
    ax.set_yticks(range(len(scored)))
    ax.set_yticklabels(names, fontsize=7 if len(scored) > 30 else 9)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("mIoU (%)")
    excluded = sum(1 for r in rows if r.error)
    ax.set_title(f"Per-source mIoU, worst first (orange: flagged; {excluded} excluded)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _short(source: str) -> str:
    return Path(source).name or source


def _sources_markdown(rows: list[SourceResult]) -> list[str]:
    def ms(row: SourceResult, key: str) -> str:
        return "n/a" if row.latency is None else f"{row.latency.percentiles[key]:.1f}"

    lines = [
        "## Per-source results (worst first)",
        "",
        "| source | frames | mIoU | pixel accuracy | latency p50 / p99 (ms) | errors | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=SourceResult.sort_key):
        acc = _pct(row.scores.pixel_accuracy) if row.scores is not None else "n/a"
        miou = _pct(row.miou) if row.scores is not None else "excluded"
        notes = "; ".join([*row.flags, *([f"excluded: {row.error}"] if row.error else [])]).replace("|", "/")
        lines.append(
            f"| {_short(row.source)} | {row.frames} | {miou} | {acc} | {ms(row, 'p50')} / {ms(row, 'p99')} "
            f"| {row.errors} | {notes} |"
        )
    return [*lines, ""]


def _plot_sample(sample: Sample, cm: ClassMap, path: Path) -> None:
    from evit_ros.pipeline.processing import colorize, overlay

    plt = _plt()

    def show(labels: np.ndarray) -> np.ndarray:
        valid = (labels >= 0) & (labels < cm.num_classes)
        ids = np.where(valid, labels, 0)
        if sample.image is not None and sample.image.shape[:2] == labels.shape:
            img = overlay(sample.image, ids, cm.palette, 0.5)
        else:
            img = colorize(ids, cm.palette)
        img = img.copy()
        img[~valid] = 0
        return img

    panels = [("ground truth", show(sample.gt)), ("prediction", show(sample.pred))]
    if sample.image is not None:
        panels.insert(0, ("image", sample.image))
    err = (sample.gt != sample.pred) & (sample.gt >= 0) & (sample.gt < cm.num_classes)
    panels.append(("errors (red), ignored (grey)", _error_map(err, sample.gt, cm.num_classes)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    for ax, (title, img) in zip(np.atleast_1d(axes), panels):
        ax.imshow(img)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(sample.name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _error_map(err: np.ndarray, gt: np.ndarray, n: int) -> np.ndarray:
    out = np.full((*gt.shape, 3), 255, dtype=np.uint8)
    out[(gt < 0) | (gt >= n)] = (128, 128, 128)
    out[err] = (220, 30, 30)
    return out


def _markdown(result: EvalResult, data: dict[str, Any], plots: dict[str, str], samples: list[str]) -> str:
    meta = data["meta"]
    lines = ["# Segmentation evaluation", ""]
    for key in ("source", "mode", "model", "backend", "resolution"):
        if meta.get(key):
            lines.append(f"- **{key}**: {meta[key]}")
    lines.append(f"- **classes**: {result.class_map.describe()}")
    lines += [
        "",
        "| metric | value |",
        "|---|---|",
        f"| mIoU | {_pct(result.scores.miou)} |",
        f"| pixel accuracy | {_pct(result.scores.pixel_accuracy)} |",
        f"| frames | {result.frames} |",
        f"| scored pixels | {result.scores.pixels} |",
    ]
    if result.latency is not None:
        lat = data["latency_ms"]
        info = data["latency"]

        def ms(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.1f} ms"

        def hz(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.2f} Hz"

        lines += [
            f"| latency p50 / p90 / p99 | {ms(lat['p50'])} / {ms(lat['p90'])} / {ms(lat['p99'])} |",
            f"| dropped frames | {info['dropped_frames']} of {info['inputs']} |",
            f"| output rate | {hz(info['output_rate_hz'])} (input {hz(info['input_rate_hz'])}) |",
        ]
    if len(result.sources) > 1 or any(r.error or r.flags for r in result.sources):
        lines += [""] + _sources_markdown(result.sources)
    lines += ["", "## Per-class IoU", "", "| class | IoU |", "|---|---|"]
    for name, value in data["per_class_iou"].items():
        lines.append(f"| {name} | {'absent' if value is None else f'{100 * value:.2f} %'} |")
    lines += ["", "Classes absent from both ground truth and prediction are left out of the mIoU.", ""]
    for title, file in plots.items():
        lines += [f"## {title}", "", f"![{title}]({file})", ""]
    if samples:
        lines += ["## Samples", ""] + [f"![sample]({s})" for s in samples] + [""]
    return "\n".join(lines)


def write_report(result: EvalResult, directory: str | Path) -> dict[str, Any]:
    """Write report.json, report.md and the plots into ``directory`` (created); returns the JSON dict."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    data = report_dict(result)
    (out / "report.json").write_text(json.dumps(data, indent=2))
    plots = {"Per-class IoU": "per_class_iou.png", "Confusion matrix": "confusion_matrix.png"}
    _plot_iou(result, out / plots["Per-class IoU"])
    _plot_confusion(result, out / plots["Confusion matrix"])
    if any(r.scores is not None for r in result.sources) and len(result.sources) > 1:
        plots["Per-source mIoU"] = "per_source_miou.png"
        _plot_sources(result.sources, out / plots["Per-source mIoU"])
    if result.latency is not None and result.latency.latencies_ms.size:
        plots["Latency"] = "latency_histogram.png"
        _plot_latency(result.latency, out / plots["Latency"])
    samples = []
    for i, sample in enumerate(result.samples):
        name = f"sample_{i:02d}.png"
        _plot_sample(sample, result.class_map, out / name)
        samples.append(name)
    (out / "report.md").write_text(_markdown(result, data, plots, samples))
    return data
