"""The device frame path: pre- and post-processing in torch, on the network's device.

One implementation serves every backend whose network runs on a torch device (the torch backend on CUDA or the
CPU, and TensorRT, whose CUDA runtime is torch). The frame goes up once as uint8; only uint8 outputs (labels,
colours, overlay) and the optional float confidence come back. On the CPU the same functions run on CPU tensors,
which is how the tests hold this path equal to the host path of :mod:`evit_ros.pipeline.processing`.

- Resize to the network resolution: OpenCV's ``INTER_CUBIC`` on a uint8 frame, reproduced in integers: Keys
  coefficients (A = -0.75) computed in float32 at OpenCV's sample positions, scaled to 11-bit fixed point
  (``INTER_RESIZE_COEF_BITS``) and rounded to int16, a horizontal then a vertical 4-tap pass with the border
  replicated, and the sum rounded by ``(v + 2**21) >> 22`` and clamped to 0..255 (opencv/opencv
  modules/imgproc/src/resize.cpp: ``interpolateCubic``, ``cv::hal::resize``'s coefficient tables, ``HResizeCubic``,
  ``VResizeCubic``; the vertical pass as ``VResizeCubicVec_32s8u`` computes it, in float32 with rounding half to
  even). Measured against OpenCV's own kernel (``cv2.ipp.setUseIPP(False)``): a few values in a million differ, by
  1. x86 wheels hand INTER_CUBIC to Intel IPP, whose rounding differs by 1 grey level on ~1 % of the values.
- Normalisation: the host path's ImageNet mean/std in RGB order.
- Logits to the output size: ``F.interpolate(mode="bicubic", align_corners=False)``, the same kernel and sample
  positions as the host ``exact`` mode, a few classes at a time with a running max/argmax (from the first chunk's
  values, so never from 0) and a running softmax denominator: 150 ADE20K classes never exist upsampled at once.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from evit_ros.pipeline.processing import IMAGENET_MEAN, IMAGENET_STD, POSTPROCESS_MODES, label_dtype

__all__ = ["CLASS_CHUNK", "DeviceLogits", "DevicePipeline", "cubic_taps", "resize_cubic_u8"]

_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS
_COEF_SCALE = 1 << _COEF_BITS
_CUBIC_A = np.float32(-0.75)
_INV_SCALE_SQ = np.float32(1.0) / np.float32(_COEF_SCALE * _COEF_SCALE)
CLASS_CHUNK = 4  # classes upsampled at once: with the running buffers, ~10 output channels of memory at most


@functools.lru_cache(maxsize=32)
def cubic_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV INTER_CUBIC taps of one axis for uint8 data: (n_out x 4 source indices clamped to the border,
    n_out x 4 int32 fixed-point weights), computed with OpenCV's float32 arithmetic."""
    scale = 1.0 / (n_out / n_in)  # OpenCV: scale_x = 1. / inv_scale_x, inv_scale_x = dsize / ssize, in double
    pos = ((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    start = np.floor(pos)
    x = (pos - start).astype(np.float32)
    one, a = np.float32(1), _CUBIC_A
    c0 = ((a * (x + one) - np.float32(5) * a) * (x + one) + np.float32(8) * a) * (x + one) - np.float32(4) * a
    c1 = ((a + np.float32(2)) * x - (a + np.float32(3))) * x * x + one
    c2 = ((a + np.float32(2)) * (one - x) - (a + np.float32(3))) * (one - x) * (one - x) + one
    c3 = one - c0 - c1 - c2
    coeffs = np.stack([c0, c1, c2, c3], axis=1).astype(np.float32)
    # saturate_cast<short>(float) rounds half to even, as np.rint does
    weights = np.rint(coeffs * np.float32(_COEF_SCALE)).astype(np.int32)
    index = np.clip(start.astype(np.int64)[:, None] + np.arange(-1, 3), 0, n_in - 1)
    for array in (index, weights):
        array.flags.writeable = False
    return index, weights


def resize_cubic_u8(frame: torch.Tensor, size: tuple[int, int], taps: Sequence[torch.Tensor] | None = None):
    """H x W x 3 uint8 tensor -> size (H, W) x 3 uint8, equal to ``cv2.resize(..., INTER_CUBIC)`` up to its SIMD
    rounding. ``taps`` (y index, y weights, x index, x weights as tensors on the frame's device) saves the
    upload of the tables."""
    if taps is None:
        taps = _taps_tensors(frame.shape[0], frame.shape[1], size, frame.device)
    y_index, y_weights, x_index, x_weights = taps
    src = frame.to(torch.int32)
    # The horizontal pass in integers, as HResizeCubic<uchar, int, short>: |sum| <= 255 * 2816, exact in int32.
    rows = src.index_select(1, x_index[:, 0]) * x_weights[:, 0, None]
    for k in range(1, 4):
        rows += src.index_select(1, x_index[:, k]) * x_weights[:, k, None]
    # The vertical pass as OpenCV's SIMD kernel (VResizeCubicVec_32s8u) computes it, which is what runs on every
    # row but a rare tail: fma(S0, b0, fma(S1, b1, fma(S2, b2, S3 * b3))) in float32, b_k = beta_k / 2048**2,
    # then rounded half to even and saturated. float64 makes each fused step exact before the float32 rounding.
    beta = (y_weights.to(torch.float32) * _INV_SCALE_SQ).to(torch.float64)
    out = (rows.index_select(0, y_index[:, 3]).to(torch.float64) * beta[:, 3, None, None]).to(torch.float32)
    for k in (2, 1, 0):
        term = rows.index_select(0, y_index[:, k]).to(torch.float64) * beta[:, k, None, None]
        out = term.add_(out).to(torch.float32)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _taps_tensors(in_h: int, in_w: int, size: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, ...]:
    y_index, y_weights = cubic_taps(in_h, size[0])
    x_index, x_weights = cubic_taps(in_w, size[1])
    return tuple(torch.from_numpy(a.copy()).to(device) for a in (y_index, y_weights, x_index, x_weights))


@dataclass
class DeviceLogits:
    """A batch on the device: each frame as uploaded (H x W x 3 uint8, its own channel order) and the network's
    N x C x h x w float32 logits."""

    frames: list[torch.Tensor]
    orders: list[str]
    logits: torch.Tensor


class DevicePipeline:
    """Pre- and post-processing of frames on ``device`` for a network at ``resolution`` (H, W)."""

    def __init__(
        self, device: torch.device | str, resolution: tuple[int, int], palette: np.ndarray, num_classes: int
    ) -> None:
        self.device = torch.device(device)
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.num_classes = num_classes
        self.label_dtype = label_dtype(num_classes)
        self._label_torch = torch.uint8 if self.label_dtype == np.uint8 else torch.int32
        self._mean = torch.tensor([255.0 * m for m in IMAGENET_MEAN], dtype=torch.float32, device=self.device)
        self._inv_std = torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_STD], dtype=torch.float32)
        self._inv_std = self._inv_std.to(self.device)
        lut = np.zeros((max(256, num_classes), 3), dtype=np.uint8)  # ids outside the palette are black
        lut[: len(palette)] = palette
        self._lut = {"rgb": torch.from_numpy(lut).to(self.device)}
        self._lut["bgr"] = self._lut["rgb"].flip(1).contiguous()
        self._bgr_to_rgb = torch.tensor([2, 1, 0], device=self.device)
        self._taps: dict[tuple[int, int], tuple[torch.Tensor, ...]] = {}
        self._nearest: dict[tuple[int, int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._staging: dict[tuple[int, tuple[int, ...]], tuple[torch.Tensor, torch.cuda.Event]] = {}
        self._pin = self.device.type == "cuda"

    # ------------------------------------------------------------------ up
    def upload(self, image: np.ndarray, slot: int = 0) -> torch.Tensor:
        """An H x W x 3 uint8 image as a tensor on the device: through a pinned staging buffer (one per batch
        slot and size, reused) and an asynchronous copy on CUDA; the array itself (no copy) on the CPU."""
        if not self._pin:
            with warnings.catch_warnings():  # a message's read-only pixels: only ever read
                warnings.simplefilter("ignore", UserWarning)
                return torch.from_numpy(np.ascontiguousarray(image))
        key = (slot, image.shape)
        staging, copied = self._staging.get(key, (None, None))
        if staging is None:
            staging = torch.empty(image.shape, dtype=torch.uint8, pin_memory=True)
        else:
            copied.synchronize()  # the previous frame's copy out of this buffer is done (it normally is long since)
        np.copyto(staging.numpy(), image)
        frame = staging.to(self.device, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record(torch.cuda.current_stream(self.device))
        self._staging[key] = (staging, copied)
        return frame

    def preprocess(self, frame: torch.Tensor, order: str, out: torch.Tensor) -> torch.Tensor:
        """H x W x 3 uint8 frame -> ``out`` (3 x H x W float32 at the network resolution), normalised in RGB."""
        if order not in ("rgb", "bgr"):
            raise ValueError(f"order must be 'rgb' or 'bgr', got '{order}'")
        h, w = frame.shape[:2]
        if (h, w) != self.resolution:
            taps = self._taps.get((h, w))
            if taps is None:
                taps = self._taps[(h, w)] = _taps_tensors(h, w, self.resolution, self.device)
            frame = resize_cubic_u8(frame, self.resolution, taps)
        if order == "bgr":
            frame = frame.index_select(2, self._bgr_to_rgb)
        chw = frame.permute(2, 0, 1).to(torch.float32)
        torch.sub(chw, self._mean[:, None, None], out=out)
        out.mul_(self._inv_std[:, None, None])
        return out

    def input_buffer(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.empty(shape, dtype=torch.float32, device=self.device)

    # ------------------------------------------------------------------ down
    def postprocess(
        self, logits: torch.Tensor, size: tuple[int, int], mode: str = "exact", return_confidence: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """C x h x w logits -> (H x W labels, H x W softmax probability of the label or None) on the device.

        ``exact`` and ``refined`` both give the exact labels here (chunked bicubic upsampling); ``fast`` takes
        the argmax at network resolution and upsamples the labels nearest-neighbour, as the host does."""
        if mode not in POSTPROCESS_MODES:
            raise ValueError(f"postprocess mode must be one of {', '.join(POSTPROCESS_MODES)}, got '{mode}'")
        logits = logits.float()
        out_h, out_w = int(size[0]), int(size[1])
        if mode == "fast" and (out_h, out_w) != tuple(logits.shape[1:]):
            return self._fast(logits, (out_h, out_w), return_confidence)
        same = (out_h, out_w) == tuple(logits.shape[1:])
        # Live at once: a chunk, its max (1 channel) and argmax (int64: 2), the running max (1), the labels and
        # the chunk's labels (label dtype) and the comparison mask; the confidence adds its denominator and two
        # channels of rescaling. The chunk's exponentials are taken in place.
        best = labels = denom = None
        for start in range(0, logits.shape[0], CLASS_CHUNK):
            part = logits[start : start + CLASS_CHUNK]
            if not same:
                part = F.interpolate(part[None], size=(out_h, out_w), mode="bicubic", align_corners=False)[0]
            if best is None:  # the running max starts from the first chunk's values, never from 0
                best, arg = part.max(dim=0)
                labels = arg.to(self._label_torch)
                del arg
                if return_confidence:
                    denom = (part - best).exp_().sum(dim=0)
                continue
            top, arg = part.max(dim=0)
            better = top > best  # strict: the lower class index keeps a tie, as argmax does
            chunk_labels = arg.to(self._label_torch)
            del arg
            chunk_labels += start
            torch.where(better, chunk_labels, labels, out=labels)
            del chunk_labels, better
            if return_confidence:  # online softmax: the denominator rescaled to the new maximum
                new_best = torch.maximum(best, top)
                denom.mul_(best.sub_(new_best).exp_())
                part = part - new_best if same else part.sub_(new_best)  # a view of the logits stays untouched
                denom.add_(part.exp_().sum(dim=0))
                best = new_best
            else:
                torch.maximum(best, top, out=best)
            del part, top
        conf = denom.reciprocal_() if return_confidence else None
        return labels, conf

    def _fast(
        self, logits: torch.Tensor, size: tuple[int, int], return_confidence: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h, w = logits.shape[1:]
        key = (h, w, *size)
        index = self._nearest.get(key)
        if index is None:
            # cv2 INTER_NEAREST: source = min(floor(dst * in / out), in - 1), the ratio in double
            rows, cols = (
                torch.from_numpy(np.minimum(np.floor(np.arange(o) * (i / o)), i - 1).astype(np.int64)).to(self.device)
                for i, o in ((h, size[0]), (w, size[1]))
            )
            index = self._nearest[key] = (rows, cols)
        top = logits.argmax(dim=0)
        labels = top.index_select(0, index[0]).index_select(1, index[1]).to(self._label_torch)
        conf = None
        if return_confidence:
            small = torch.exp(logits - logits.max(dim=0).values).sum(dim=0).reciprocal_()
            conf = F.interpolate(small[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        return labels, conf

    def colorize(self, labels: torch.Tensor, order: str = "rgb") -> torch.Tensor:
        """H x W labels -> H x W x 3 uint8 colours in ``order``; ids outside the palette are black."""
        lut = self._lut[order]
        # uint8 ids always fall in the 256-entry table; wider ones are checked (a GPU gather out of range aborts)
        if labels.dtype != torch.uint8 and labels.numel() and int(labels.max()) >= lut.shape[0]:
            raise ValueError(f"label {int(labels.max())} outside the {lut.shape[0]}-entry colour table")
        return lut[labels.long()]

    def overlay(
        self, frame: torch.Tensor, labels: torch.Tensor, order: str, alpha: float, out_order: str | None = None
    ) -> torch.Tensor:
        """The class colours alpha-blended over ``frame`` (in channel ``order``), rounded like cv2.addWeighted,
        returned in ``out_order`` (default ``order``). Labels at another size than the frame take the frame
        shrunk to theirs (area averaging)."""
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be within [0, 1], got {alpha}")
        out_order = out_order or order
        if tuple(frame.shape[:2]) != tuple(labels.shape):
            chw = frame.permute(2, 0, 1)[None].float()
            frame = F.interpolate(chw, size=tuple(labels.shape), mode="area")[0].permute(1, 2, 0)
        if out_order != order:
            frame = frame.index_select(2, self._bgr_to_rgb)  # the same swap either way
        blend = self.colorize(labels, out_order).float().mul_(alpha)
        blend.add_(frame.float(), alpha=1.0 - alpha)
        return blend.round_().clamp_(0, 255).to(torch.uint8)

    @staticmethod
    def all_finite(logits: torch.Tensor) -> bool:
        """No NaN or +-Inf (two reductions, no mask of the whole tensor)."""
        return logits.numel() == 0 or bool(torch.isfinite(logits.max()) & torch.isfinite(logits.min()))

    def download(self, tensor: torch.Tensor, out: np.ndarray | None = None) -> np.ndarray:
        """A device tensor as a host array (into ``out`` when given: a message's own buffer)."""
        if out is None:
            array = tensor.cpu().numpy()
            return array.astype(self.label_dtype) if tensor.dtype == torch.int32 else array
        torch.from_numpy(out).copy_(tensor)
        return out
