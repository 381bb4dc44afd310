"""Pre- and post-processing shared by the node, the CLI, evaluation and benchmarks.

Matches the official EfficientViT-Seg evaluation: RGB, INTER_CUBIC resize to the network
resolution, /255, ImageNet mean/std, NCHW float32; logits resized bicubic
(align_corners=False) to the output size, then argmax.

Post-processing modes (``POSTPROCESS_MODES``):
- ``exact``: bicubic logits upsampling of every class, then argmax (the official protocol).
- ``refined``: the exact labels at a fraction of the cost. Each output pixel's bicubic value is a
  weighted sum of a 4x4 window of network-resolution logits. Where a bound on that sum proves one
  class wins over the whole window, the label is copied; elsewhere (near class boundaries) the
  bicubic logits of the few classes that can still win are computed, as the exact path does.
- ``fast``: argmax at network resolution, then nearest-neighbour upsampling of the labels.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = np.array(IMAGENET_MEAN, dtype=np.float32) * 255.0
_INV_STD = 1.0 / (np.array(IMAGENET_STD, dtype=np.float32) * 255.0)

MAX_SIDE = 16384
# Still-image files every folder reader (predict, play, eval, INT8 calibration) accepts.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp"})
_CV_MAX_CHANNELS = 128
POSTPROCESS_MODES = ("exact", "refined", "fast")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in `folder`, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected an HxWx3 uint8 image, got {got}")
    h, w = image.shape[:2]
    if h == 0 or w == 0 or h > MAX_SIDE or w > MAX_SIDE:
        raise ValueError(f"image size {w}x{h} is outside 1..{MAX_SIDE} per side")


def fit_resolution(height: int, width: int, short_side: int = 512) -> tuple[int, int]:
    """Network size for an image: short side `short_side`, long side scaled and rounded up to x32.

    With short_side=512 this is the ADE20K evaluation size.
    """
    if height <= width:
        return short_side, int(math.ceil(width * short_side / height / 32) * 32)
    return int(math.ceil(height * short_side / width / 32) * 32), short_side


def preprocess(
    image: np.ndarray, resolution: tuple[int, int], order: str = "rgb", out: np.ndarray | None = None
) -> np.ndarray:
    """HxWx3 uint8 image -> 1x3xHxW float32 network input at `resolution` (H, W)."""
    check_image(image)
    if order not in ("rgb", "bgr"):
        raise ValueError(f"order must be 'rgb' or 'bgr', got '{order}'")
    net_h, net_w = resolution
    if image.shape[:2] != (net_h, net_w):
        image = cv2.resize(image, (net_w, net_h), interpolation=cv2.INTER_CUBIC)
    params = _blob_params(order)
    if params is not None:
        # OpenCV does the channel swap, mean, scale and HWC -> NCHW in one pass (about 5x numpy's time at 1080p).
        image = np.ascontiguousarray(image)
        if out is None:
            return cv2.dnn.blobFromImageWithParams(image, params)
        if out.shape == (1, 3, net_h, net_w) and out.dtype == np.float32 and out.flags.c_contiguous:
            cv2.dnn.blobFromImageWithParams(image, out, params)  # written in place
        else:
            np.copyto(out, cv2.dnn.blobFromImageWithParams(image, params))
        return out
    if order == "bgr":
        image = image[:, :, ::-1]
    hwc = (image.astype(np.float32) - _MEAN) * _INV_STD
    if out is None:
        out = np.empty((1, 3, net_h, net_w), dtype=np.float32)
    out[0] = hwc.transpose(2, 0, 1)
    return out


@functools.lru_cache(maxsize=2)
def _blob_params(order: str):
    """OpenCV's blob parameters for `order` input, or None where cv2.dnn lacks them (OpenCV < 4.9)."""
    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "Image2BlobParams"):
        return None
    params = cv2.dnn.Image2BlobParams()
    params.swapRB = order == "bgr"
    # Mean and scale apply after the swap, so they are given in RGB order.
    params.mean = (*(255.0 * m for m in IMAGENET_MEAN), 0.0)
    params.scalefactor = (*(1.0 / (255.0 * s) for s in IMAGENET_STD), 0.0)
    params.ddepth = cv2.CV_32F
    return params


def resize_logits(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """C x h x w float logits -> C x H x W, bicubic with half-pixel centres (align_corners=False).

    OpenCV's INTER_CUBIC uses the same kernel (a = -0.75) and sample positions as
    torch.nn.functional.interpolate(mode="bicubic", align_corners=False).
    """
    c, h, w = logits.shape
    out_h, out_w = size
    if (h, w) == (out_h, out_w):
        return logits
    hwc = np.ascontiguousarray(logits.transpose(1, 2, 0), dtype=np.float32)
    chunks = []
    # OpenCV 5 resizes at most 128 channels at once (CV_CN_MAX; 512 in OpenCV 4): ADE20K has 150.
    for start in range(0, c, _CV_MAX_CHANNELS):
        part = cv2.resize(hwc[:, :, start : start + _CV_MAX_CHANNELS], (out_w, out_h), interpolation=cv2.INTER_CUBIC)
        chunks.append(part.reshape(out_h, out_w, -1))
    resized = chunks[0] if len(chunks) == 1 else np.concatenate(chunks, axis=2)
    return resized.transpose(2, 0, 1)


def label_dtype(num_classes: int) -> np.dtype:
    return np.dtype(np.uint8) if num_classes <= 256 else np.dtype(np.uint16)


def all_finite(values: np.ndarray) -> bool:
    """True when no value is NaN or +-Inf. NaN and +-Inf reach the max or the min, so two reductions tell, without
    the mask of the whole array that ``np.isfinite(values).all()`` would allocate."""
    return values.size == 0 or bool(np.isfinite(values.max()) and np.isfinite(values.min()))


def softmax_confidence(logits: np.ndarray) -> np.ndarray:
    """Per-pixel probability of the winning class, from C x H x W logits."""
    top = logits.max(axis=0)
    denom = np.exp(logits - top[None]).sum(axis=0)
    return (1.0 / denom).astype(np.float32)


def postprocess(
    logits: np.ndarray,
    size: tuple[int, int] | None,
    mode: str = "exact",
    return_confidence: bool = False,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """C x h x w logits -> (labels H x W, confidence H x W or None); see POSTPROCESS_MODES.

    mode "exact" resizes the logits bicubically before argmax (the official evaluation);
    mode "refined" gives the same labels, computing bicubic logits only near class boundaries;
    mode "fast" takes argmax at network resolution and upsamples labels nearest-neighbour.
    Confidence is the softmax probability of each pixel's label.
    With ``out`` (H x W of :func:`label_dtype`, e.g. a message's own pixel buffer) the labels are written there
    and ``out`` is returned as the labels.
    """
    if mode not in POSTPROCESS_MODES:
        raise ValueError(f"postprocess mode must be one of {', '.join(POSTPROCESS_MODES)}, got '{mode}'")
    num_classes = logits.shape[0]
    dtype = label_dtype(num_classes)
    if out is not None:
        expected = tuple(size) if size is not None else tuple(logits.shape[1:])
        if out.shape != expected or out.dtype != dtype:
            raise ValueError(f"out must be a {expected} {dtype} array, got {out.shape} {out.dtype}")
    if mode == "refined" and size is not None and not _refine_pays_off(logits.shape[1:], size):
        mode = "exact"  # the exact path is the reference, and cheaper at small upsampling factors
    if size is None or mode == "exact":
        full = resize_logits(logits, size) if size is not None else logits
        winners = full.argmax(axis=0)
        if out is None:
            labels = winners.astype(dtype)
        else:
            labels = out
            np.copyto(labels, winners, casting="unsafe")  # class ids < 2**16 fit the label dtype
        conf = softmax_confidence(full) if return_confidence else None
        return labels, conf
    if mode == "refined":
        return refine_labels(logits, size, return_confidence, out=out)
    labels = logits.argmax(axis=0).astype(dtype)
    conf = softmax_confidence(logits) if return_confidence else None
    out_h, out_w = size
    labels = _into(out, cv2.resize(labels, (out_w, out_h), dst=_cv_dst(out), interpolation=cv2.INTER_NEAREST))
    if conf is not None:
        conf = cv2.resize(conf, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    return labels, conf


# ---------------------------------------------------------------------------------------------
# "refined": exact bicubic labels, evaluated only where the winning class is in doubt.
#
# Sample positions and kernel follow OpenCV's INTER_CUBIC (= torch bicubic, align_corners=False):
# source coordinate (x + 0.5) * in/out - 0.5, taps floor-1 .. floor+2 clamped to the border,
# Keys kernel with a = -0.75. Along one axis the outer two weights are <= 0 and the inner two >= 0;
# in 2-D the 16 taps split into 4 inner (weight >= 0, sum (1+nx)(1+ny)), 8 edge (<= 0, sum
# -(nx + ny + 2 nx ny)) and 4 corner taps (>= 0, sum nx ny), nx, ny being the 1-D outer sums.

_CUBIC_A = -0.75
_REFINE_BUCKETS = (2, 3, 4, 8)  # candidate counts are padded up to one of these, or to C (fewer batches)
_REFINE_MIN_UPSCALE = 32  # below this many output pixels per logit pixel the exact path is as cheap
_REFINE_TOL = 1e-3  # margin kept above float32 rounding of the interpolated logits


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Keys cubic weights (a = -0.75) of the taps at -1, 0, 1, 2 for fractional positions t in [0, 1)."""
    a = _CUBIC_A
    x0, x1, x2 = t + 1.0, t, 1.0 - t
    w0 = ((a * x0 - 5 * a) * x0 + 8 * a) * x0 - 4 * a
    w1 = ((a + 2) * x1 - (a + 3)) * x1 * x1 + 1
    w2 = ((a + 2) * x2 - (a + 3)) * x2 * x2 + 1
    return np.stack([w0, w1, w2, 1.0 - w0 - w1 - w2], axis=-1)


def _outer_weight_bound() -> float:
    """Largest 1-D sum of the (negative) outer weights over t, with a little headroom."""
    w = _cubic_weights(np.linspace(0.0, 1.0, 4097))
    return float((-np.minimum(w, 0.0).sum(axis=1)).max()) * 1.001


_NMAX = _outer_weight_bound()  # 0.1875 at t = 0.5
# Edge over inner weight at worst (nx = ny = _NMAX): a margin this fraction of the largest one wins.
_RHO = (2 * _NMAX + 2 * _NMAX**2) / (1 + _NMAX) ** 2


def _refine_pays_off(in_size: tuple[int, int], out_size: tuple[int, int]) -> bool:
    return out_size[0] * out_size[1] >= _REFINE_MIN_UPSCALE * in_size[0] * in_size[1]


def _axis_taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output index: the floor source index i0 in [-1, n_in - 1] and its 4 float32 weights."""
    src = ((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5).astype(np.float32)
    i0 = np.floor(src)
    weights = _cubic_weights((src - i0).astype(np.float64)).astype(np.float32)
    return i0.astype(np.int64), weights


@dataclass(frozen=True)
class _AxisPlan:
    """How one axis of the output falls into cells (cell e = floor source index + 1), for refine_labels."""

    counts: np.ndarray  # output pixels per cell
    block: int  # the largest cell
    take: np.ndarray  # per output pixel: its position in the grid of equal blocks
    cell_weights: np.ndarray  # cells x block x 4 kernel weights (zeros past a cell's end)


@functools.lru_cache(maxsize=16)
def _axis_plan(n_out: int, n_in: int) -> _AxisPlan:
    """The plan of one axis; it depends on the two sizes only, so a camera's frames share it."""
    i0, weights = _axis_taps(n_out, n_in)
    counts = np.bincount(i0 + 1, minlength=n_in + 1)
    block = int(counts.max())
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    take = (i0 + 1) * block + np.arange(n_out) - starts[i0 + 1]
    plan = _AxisPlan(counts, block, take, _cell_weights(weights, counts))
    for array in (plan.counts, plan.take, plan.cell_weights):
        array.flags.writeable = False  # shared between calls
    return plan


def _pad_edge(a: np.ndarray, width: int) -> np.ndarray:
    """np.pad(a, width, mode="edge") over the last two axes, without np.pad's per-call overhead."""
    h, w = a.shape[-2:]
    out = np.empty((*a.shape[:-2], h + 2 * width, w + 2 * width), dtype=a.dtype)
    out[..., width : width + h, width : width + w] = a
    out[..., :width, width : width + w] = a[..., :1, :]
    out[..., width + h :, width : width + w] = a[..., -1:, :]
    out[..., :, :width] = out[..., :, width : width + 1]
    out[..., :, width + w :] = out[..., :, width + w - 1 : width + w]
    return out


def _window(a: np.ndarray, op, size: int, count: tuple[int, int]) -> np.ndarray:
    """op-reduction of a over size x size windows starting at every (r, c) < count (the last two axes)."""
    out = a[..., : count[0], :]
    for k in range(1, size):
        out = op(out, a[..., k : k + count[0], :])
    rows = out
    out = rows[..., : count[1]]
    for k in range(1, size):
        out = op(out, rows[..., k : k + count[1]])
    return out


def _gap_lower_bound(ref: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Lower bound, over every position in a cell, of the bicubic interpolation of the gap ref - taps (taps:
    4 x 4 x ...: tap row, tap column, then any shape; ref: the same without the last axis): min over (nx, ny) in
    {0, NMAX}^2 of inner * min_inner - edge * max_edge + corner * min_corner (bilinear in nx, ny, so its minimum
    lies on a corner of the range). Each tap group is one block of the 4 x 4 window, reduced in one call."""
    n = _NMAX

    def gap(rows: slice, cols: slice) -> np.ndarray:
        return ref[rows, cols, ..., None] - taps[rows, cols]

    m_in = gap(slice(1, 3), slice(1, 3)).min(axis=(0, 1))
    m_c = gap(slice(0, 4, 3), slice(0, 4, 3)).min(axis=(0, 1))
    m_e = np.maximum(
        gap(slice(0, 4, 3), slice(1, 3)).max(axis=(0, 1)), gap(slice(1, 3), slice(0, 4, 3)).max(axis=(0, 1))
    )
    one = (1 + n) * m_in - n * m_e
    both = (1 + n) ** 2 * m_in - (2 * n + 2 * n * n) * m_e + n * n * m_c
    return np.minimum(np.minimum(m_in, one), both)


def _cell_weights(weights: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per cell, the kernel weights of its output pixels, cells x largest cell x 4 (zeros past its end)."""
    size = int(counts.max())
    out = np.zeros((len(counts), size, 4), dtype=np.float32)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for offset in range(size):
        has = counts > offset
        out[has, offset] = weights[starts[has] + offset]
    return out


def refine_labels(
    logits: np.ndarray, size: tuple[int, int], return_confidence: bool = False, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels equal to argmax(bicubic(logits)) at `size`, computing bicubic values only where needed.

    Output pixels are grouped into cells by their floor source position (i0, j0); a cell's pixels
    all read the same 4x4 tap window. A cell whose taps share one argmax class a, with every other
    class j behind by a margin that the negative kernel lobes cannot overturn (min over the inner
    taps of l_a - l_j > _RHO * its max over the window), takes label a. Other cells keep the classes
    not ruled out by the same bound against a reference class and, if more than one remains,
    evaluate their bicubic logits for the cell's pixels. Confidence (when asked) is the exact
    softmax in evaluated cells and the bilinear network-resolution probability elsewhere, where
    every tap has the same winning class. With ``out`` (``size``, the label dtype) the labels are written there.
    """
    c, h, w = logits.shape
    out_h, out_w = size
    dtype = label_dtype(c)
    chw = np.asarray(logits, dtype=np.float32)
    labels_low = chw.argmax(axis=0).astype(dtype)
    # Padding by 2 (border replicated, as the kernel clamps taps) puts cell e = i0 + 1's taps at e..e+3.
    padded = _pad_edge(chw, 2)
    labels_pad = _pad_edge(labels_low, 2)
    cells = (h + 1, w + 1)
    cell_max = _window(labels_pad, np.maximum, 4, cells)
    uniform = cell_max == _window(labels_pad, np.minimum, 4, cells)
    behind = padded.max(axis=0) - padded  # l_a - l_j >= 0; a uniform cell's a is its label
    max_behind = _window(behind, np.maximum, 4, cells)
    min_inner = _window(behind[:, 1:, 1:], np.minimum, 2, cells)
    safe = min_inner - _RHO * max_behind > _REFINE_TOL
    safe[cell_max, np.arange(cells[0])[:, None], np.arange(cells[1])[None, :]] = True  # a vs itself
    certain = uniform & safe.all(axis=0)

    ys, xs = _axis_plan(out_h, h), _axis_plan(out_w, w)
    certain |= (ys.counts == 0)[:, None] | (xs.counts == 0)[None, :]  # cells no output pixel falls in
    todo = np.argwhere(~certain)
    conf = None
    if return_confidence:
        low_conf = softmax_confidence(chw)
        conf = cv2.resize(low_conf, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    # The output as a grid of equal blocks (cells x largest cell); output pixel (y, x) is at grid position
    # (ys.take[y], xs.take[x]).
    # Columns first, on the small array: np.repeat copies whole rows along axis 0 but single elements along 1.
    grid = np.repeat(np.repeat(cell_max.astype(dtype), xs.block, axis=1), ys.block, axis=0)
    blocks = grid.reshape(cells[0], ys.block, cells[1], xs.block)  # a view: writes land in grid
    if len(todo):
        _refine_cells(padded, todo, ys.cell_weights, xs.cell_weights, blocks, conf, ys.take, xs.take)
    return _take_grid(grid, ys.take, xs.take, out), conf


def _runs(index: np.ndarray) -> list[tuple[int, int, int]]:
    """(start, stop, source start) of the consecutive runs of an increasing index."""
    bounds = [0, *(np.flatnonzero(np.diff(index) != 1) + 1).tolist(), len(index)]
    return [(lo, hi, int(index[lo])) for lo, hi in zip(bounds[:-1], bounds[1:], strict=False)]


def _take_grid(a: np.ndarray, rows: np.ndarray, cols: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """a[rows][:, cols] (into ``out`` when given) for increasing indices made of a few consecutive runs (cells
    without padding follow each other), in one pass of slice copies instead of a gather per element."""
    row_runs, col_runs = _runs(rows), _runs(cols)
    if len(row_runs) * len(col_runs) > 4096:
        taken = a.take(rows, axis=0).take(cols, axis=1)
        if out is None:
            return taken
        np.copyto(out, taken)
        return out
    if out is None:
        out = np.empty((len(rows), len(cols), *a.shape[2:]), dtype=a.dtype)
    for y0, y1, sy in row_runs:
        for x0, x1, sx in col_runs:
            out[y0:y1, x0:x1] = a[sy : sy + y1 - y0, sx : sx + x1 - x0]
    return out


def _refine_cells(
    padded: np.ndarray,
    todo: np.ndarray,
    cell_wy: np.ndarray,
    cell_wx: np.ndarray,
    blocks: np.ndarray,
    conf: np.ndarray | None,
    take_y: np.ndarray,
    take_x: np.ndarray,
) -> None:
    """Labels (and confidence) of the uncertain cells `todo` (B x 2 cell indices) into `blocks` / `conf`."""
    c, _, width = padded.shape
    n_todo = len(todo)
    # Pixel-major rows of C values: the gathers copy contiguous class vectors, not scattered floats.
    pixels = np.ascontiguousarray(padded.transpose(1, 2, 0)).reshape(-1, c)
    window = np.arange(4)[:, None] * width + np.arange(4)[None, :]  # a cell's 4 x 4 taps, as pixel offsets
    taps = pixels.take(window[:, :, None] + (todo[:, 0] * width + todo[:, 1]), axis=0)  # 4 x 4 x B x C
    inner_min = np.minimum(np.minimum(taps[1, 1], taps[1, 2]), np.minimum(taps[2, 1], taps[2, 2]))
    ref = inner_min.argmax(axis=1)  # the class with the best inner minimum
    ref_taps = taps.reshape(16, n_todo * c).take(np.arange(n_todo) * c + ref, axis=1).reshape(4, 4, n_todo)
    candidates = ~(_gap_lower_bound(ref_taps, taps) > _REFINE_TOL)  # ref itself always stays (bound 0)
    if conf is not None:
        candidates[:] = True  # softmax needs every class
    k_per_cell = candidates.sum(axis=1)
    single = k_per_cell == 1
    blocks[todo[single, 0], :, todo[single, 1], :] = ref[single][:, None, None].astype(blocks.dtype)
    # Each cell's candidate classes in increasing class order, padded with its first (so ties still go to the
    # lowest class index, like argmax).
    cell_of, class_of = np.nonzero(candidates)
    first = np.concatenate([[0], np.cumsum(k_per_cell)[:-1]])
    order = np.empty((n_todo, int(k_per_cell.max())), dtype=np.int64)
    order[:] = class_of[first][:, None]
    order[cell_of, np.arange(len(cell_of)) - first[cell_of]] = class_of
    buckets = np.array([*[b for b in _REFINE_BUCKETS if b < c], c])
    bucket = np.searchsorted(buckets, k_per_cell)
    conf_blocks = None if conf is None else np.full(blocks.shape, np.nan, dtype=np.float32)
    for b in np.unique(bucket[~single]):
        sel = np.flatnonzero((bucket == b) & ~single)
        k = min(int(buckets[b]), order.shape[1])
        cls = order[sel, :k]
        patch = taps[:, :, sel[:, None], cls]  # 4 x 4 x n x k
        wx_t, wy = cell_wx[todo[sel, 1]].transpose(0, 2, 1), cell_wy[todo[sel, 0]]
        if k == 2 and conf_blocks is None:  # one channel: the second class wins where l_2 - l_1 > 0
            margin = np.matmul(wy, np.matmul((patch[..., 1] - patch[..., 0]).transpose(2, 0, 1), wx_t))
            two = cls.astype(blocks.dtype)
            blocks[todo[sel, 0], :, todo[sel, 1], :] = np.where(
                margin > 0, two[:, 1, None, None], two[:, 0, None, None]
            )
            continue
        across = np.matmul(patch.transpose(2, 3, 0, 1), wx_t[:, None])  # n x k x 4 x bx
        values = np.matmul(wy[:, None], across)  # n x k x by x bx
        best = values[:, 0].copy()
        label = np.empty(best.shape, dtype=blocks.dtype)
        label[...] = cls[:, 0, None, None]
        for j in range(1, k):  # strict '>' keeps the lowest class index on ties, like argmax
            better = values[:, j] > best
            np.maximum(best, values[:, j], out=best)
            np.copyto(label, cls[:, j, None, None].astype(blocks.dtype), where=better)
        blocks[todo[sel, 0], :, todo[sel, 1], :] = label
        if conf_blocks is not None:
            conf_blocks[todo[sel, 0], :, todo[sel, 1], :] = 1.0 / np.exp(values - best[:, None]).sum(axis=1)
    if conf_blocks is not None:
        exact = _take_grid(conf_blocks.reshape(blocks.shape[0] * blocks.shape[1], -1), take_y, take_x)
        np.copyto(conf, exact, where=~np.isnan(exact))


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """H x W class ids -> H x W x 3 colours in the palette's channel order; ids outside the palette are black."""
    if labels.dtype == np.uint8 and len(palette) <= 256:
        # One single-channel cv2.LUT per colour channel, then merged: about 1.5x faster than one LUT on the ids
        # repeated in 3 channels, and 8x faster than numpy fancy indexing at 1080p.
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[: len(palette)] = palette
        return cv2.merge([cv2.LUT(labels, np.ascontiguousarray(lut[:, ch])) for ch in range(3)])
    lut = np.zeros((max(int(labels.max(initial=0)) + 1, len(palette)), 3), dtype=np.uint8)
    lut[: len(palette)] = palette
    return np.take(lut, labels, axis=0)


def class_lut(class_ids: Sequence[int], dtype: np.dtype | type) -> np.ndarray:
    """A 0/255 ``uint8`` lookup table over every id ``dtype`` labels can hold, 255 at ``class_ids``."""
    lut = np.zeros(np.iinfo(dtype).max + 1, dtype=np.uint8)
    lut[list(class_ids)] = 255
    return lut


def class_mask(labels: np.ndarray, lut: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The mono8 mask ``lut[labels]`` (:func:`class_lut`): one table look-up per pixel, into ``out`` when given."""
    if labels.dtype == np.uint8:
        return _into(out, cv2.LUT(labels, lut, dst=_cv_dst(out)))
    return np.take(lut, labels, out=out)


def overlay(
    image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5, out: np.ndarray | None = None
) -> np.ndarray:
    """Alpha-blend the colourised labels over an image of the same size and channel order as palette (into
    ``out``, an array of the image's shape and dtype, when given)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    if out is not None and (out.shape != image.shape or out.dtype != image.dtype):
        raise ValueError(f"out must be a {image.shape} {image.dtype} array, got {out.shape} {out.dtype}")
    color = colorize(labels, palette)
    if color.shape[:2] != image.shape[:2]:
        color = cv2.resize(color, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
    return _into(out, cv2.addWeighted(color, alpha, image, 1.0 - alpha, 0.0, dst=_cv_dst(out)))


def _cv_dst(out: np.ndarray | None) -> np.ndarray | None:
    """``out`` where OpenCV can write into it (C-contiguous; OpenCV refuses other layouts), else None."""
    return out if out is not None and out.flags.c_contiguous else None


def _into(out: np.ndarray | None, result: np.ndarray) -> np.ndarray:
    """``out`` holding ``result`` (a copy only where OpenCV could not write into ``out`` itself)."""
    if out is None or result is out:
        return result
    np.copyto(out, result)
    return out
