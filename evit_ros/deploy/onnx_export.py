"""ONNX export with metadata, TensorRT op checks and a parity check.

The TorchScript exporter (``dynamo=False``) is used: it needs no extra package (the dynamo
exporter needs onnxscript) and names nodes by module scope, so every attention-core node carries
``/linear_attention/`` and can be pinned to FP32 in TensorRT.

Precisions:
- ``fp32``: the float32 model.
- ``fp16-strong``: a strongly typed mixed-precision graph for TensorRT >= 10 STRONGLY_TYPED builds:
  FP16 weights and activations, with explicit Casts to float32 before every attention core (and
  around the bicubic upsampling), and back to float16 after. Input and output stay float32.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from evit_ros import __version__
from evit_ros.deploy.onnx_graph import fp32_pin_nodes, unsupported_tensorrt_ops
from evit_ros.network.variants import Variant, get_variant
from evit_ros.pipeline.processing import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

ONNX_OPSET = 17
INPUT_NAME = "input"
HEADS = ("logits", "labels")
EXPORT_PRECISIONS = ("fp32", "fp16-strong")
DEFAULT_ATOL = 1e-3  # max abs logit difference ONNX Runtime vs PyTorch, fp32
DEFAULT_MIN_AGREEMENT = 0.999  # label agreement for fp32; fp16-strong uses FP16_MIN_AGREEMENT
FP16_MIN_AGREEMENT = 0.99
EXPORT_FORMAT_VERSION = "1"  # bump when the exported graph changes, so caches re-export


class ParityError(RuntimeError):
    """The exported graph does not reproduce the PyTorch model within tolerance."""


@dataclass
class ParityResult:
    max_abs_diff: float  # logits head: max |onnx - torch| over all logits; labels head: nan
    label_agreement: float
    passed: bool
    detail: str


@dataclass
class ExportResult:
    path: Path
    parity: ParityResult | None
    fp32_pins: int
    metadata: dict[str, str]


def _wrapper(model: torch.nn.Module, head: str, precision: str, resolution: tuple[int, int]) -> torch.nn.Module:
    import torch
    import torch.nn.functional as F

    class ExportWrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model  # node names: /model/backbone/.../linear_attention/...

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if precision == "fp16-strong":
                x = x.half()
            logits = self.model(x)
            if head == "labels":
                up = F.interpolate(logits.float(), size=resolution, mode="bicubic", align_corners=False)
                return up.argmax(dim=1).to(torch.int32)
            return logits.float()

    return ExportWrapper().eval()


def build_metadata(
    variant: Variant,
    resolution: tuple[int, int],
    head: str,
    precision: str,
    checkpoint_sha256: str,
    dynamic_batch: bool,
) -> dict[str, str]:
    from evit_ros.network.classes import class_table

    names, _ = class_table(variant.dataset)
    import torch

    return {
        "model": variant.name,
        "dataset": variant.dataset,
        "num_classes": str(variant.num_classes),
        "classes": json.dumps(list(names)),
        "resolution": f"{resolution[0]}x{resolution[1]}",
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
        "input_format": "NCHW float32 RGB, (x/255 - mean)/std",
        "output": head,
        "output_stride": "8" if head == "logits" else "1",
        "precision": precision,
        "dynamic_batch": str(bool(dynamic_batch)).lower(),
        "checkpoint_sha256": checkpoint_sha256,
        "exporter": f"evit_ros {__version__} (format {EXPORT_FORMAT_VERSION}), torch {torch.__version__} torchscript",
    }


def _parity_input(resolution: tuple[int, int], batch: int, image: str | os.PathLike | None) -> np.ndarray:
    """A real image if given, else a seeded smooth synthetic image (accuracy_gate.smooth_synthetic_image)."""
    import cv2

    from evit_ros.deploy.accuracy_gate import smooth_synthetic_image
    from evit_ros.pipeline.processing import preprocess

    if image is not None:
        bgr = cv2.imread(str(image), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot read parity image {image}")
        rgb = bgr[:, :, ::-1]
    else:
        rgb = smooth_synthetic_image(resolution, seed=0)
    one = preprocess(np.ascontiguousarray(rgb), resolution, order="rgb")
    return np.repeat(one, batch, axis=0)


def _set_output_shape(
    proto, head: str, num_classes: int, resolution: tuple[int, int], batch: int, dynamic: bool
) -> None:
    """Write the static output shape the tracer lost in the attention reshapes (N x C x H/8 x W/8 or N x H x W)."""
    h, w = resolution
    dims = [num_classes, h // 8, w // 8] if head == "logits" else [h, w]
    shape = proto.graph.output[0].type.tensor_type.shape
    del shape.dim[:]
    first = shape.dim.add()
    if dynamic:
        first.dim_param = "batch"
    else:
        first.dim_value = batch
    for d in dims:
        shape.dim.add().dim_value = d


def check_parity(
    onnx_path: str | os.PathLike,
    model: torch.nn.Module,
    x: np.ndarray,
    head: str = "logits",
    atol: float | None = DEFAULT_ATOL,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
) -> ParityResult:
    """Run the ONNX graph in ONNX Runtime (CPU) and the (fp32) PyTorch `model` on `x`; compare.

    Logits head: the max abs logit difference must be <= `atol` (None: not enforced) and the
    argmax labels must agree on >= `min_agreement` of pixels. Labels head: label agreement with
    the PyTorch model's bicubic-upsampled argmax.
    """
    import onnxruntime as ort
    import torch
    import torch.nn.functional as F

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {INPUT_NAME: x})[0]
    with torch.inference_mode():
        ref = model(torch.from_numpy(x))
        if head == "labels":
            ref = F.interpolate(ref, size=x.shape[-2:], mode="bicubic", align_corners=False)
        ref = ref.numpy()
    ref_labels = ref.argmax(axis=1)
    if head == "labels":
        max_abs = float("nan")
        agreement = float((got == ref_labels).mean())
    else:
        finite = np.isfinite(got).all()
        max_abs = float(np.abs(got - ref).max()) if finite else float("inf")
        agreement = float((got.argmax(axis=1) == ref_labels).mean())
    ok_abs = head == "labels" or atol is None or max_abs <= atol
    passed = ok_abs and agreement >= min_agreement
    detail = (
        f"max abs logit difference {max_abs:.3g} (tolerance {atol}), " if head == "logits" else ""
    ) + f"label agreement {agreement * 100:.3f}% (minimum {min_agreement * 100:.2f}%)"
    return ParityResult(max_abs, agreement, passed, detail)


def export_onnx(
    model: torch.nn.Module,
    variant: Variant | str,
    resolution: tuple[int, int],
    out: str | os.PathLike,
    head: str = "logits",
    precision: str = "fp32",
    dynamic_batch: bool = False,
    checkpoint_sha256: str = "",
    parity: bool = True,
    batch_size: int = 1,
    atol: float | None = None,
    min_agreement: float | None = None,
    parity_image: str | os.PathLike | None = None,
) -> ExportResult:
    """Export `model` to `out` (written atomically, only after checker, op and parity checks pass).

    Raises ParityError when ONNX Runtime disagrees with PyTorch beyond tolerance; the message
    carries the max abs logit difference. `model` is not modified.
    """
    import copy

    import onnx
    import torch

    variant = get_variant(variant) if isinstance(variant, str) else variant
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got '{head}'")
    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"export precision must be one of {EXPORT_PRECISIONS}, got '{precision}'")
    fp16 = precision == "fp16-strong"
    if atol is None:
        atol = None if fp16 else DEFAULT_ATOL  # fp16 logits differ by ~0.1; judged on labels
    if min_agreement is None:
        min_agreement = FP16_MIN_AGREEMENT if fp16 else DEFAULT_MIN_AGREEMENT
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    net = copy.deepcopy(model).float().eval()
    if fp16:
        net = net.half()
    wrapper = _wrapper(net, head, precision, resolution)
    batch = max(2, batch_size) if dynamic_batch else batch_size
    dummy = torch.zeros(batch, 3, *resolution)
    out_name = head
    dynamic_axes = {INPUT_NAME: {0: "batch"}, out_name: {0: "batch"}} if dynamic_batch else None
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarning on the static h*w branch, deprecation notice
            torch.onnx.export(
                wrapper,
                (dummy,),
                str(tmp),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=[INPUT_NAME],
                output_names=[out_name],
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        proto = onnx.load(str(tmp))
        _set_output_shape(proto, head, variant.num_classes, resolution, batch, dynamic_batch)
        meta = build_metadata(variant, resolution, head, precision, checkpoint_sha256, dynamic_batch)
        pins = fp32_pin_nodes(proto)
        meta["fp32_pin_nodes"] = str(len(pins))
        onnx.helper.set_model_props(proto, meta)
        proto.doc_string = f"EfficientViT-Seg {variant.name} {resolution[0]}x{resolution[1]} -> {head} ({precision})"
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp))
        bad = unsupported_tensorrt_ops(proto)
        if bad:
            log.warning("ops not in TensorRT's ONNX support list: %s", ", ".join(bad))
        result = None
        if parity:
            x = _parity_input(resolution, batch, parity_image)
            result = check_parity(tmp, model, x, head, atol, min_agreement)
            if not result.passed:
                raise ParityError(
                    f"ONNX export of {variant.name} failed the parity check against PyTorch: {result.detail}"
                )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(out, result, len(pins), meta)


def onnx_cache_root(engine_cache_dir: str | os.PathLike | None = None) -> Path:
    """Where exported ONNX files are cached: `engine_cache_dir`, else evit_ros.weights.cache_dir()/onnx."""
    from evit_ros.network.weights import cache_dir

    return Path(engine_cache_dir).expanduser() if engine_cache_dir else cache_dir() / "onnx"


def cached_onnx_name(
    variant: Variant,
    resolution: tuple[int, int],
    checkpoint_sha256: str,
    precision: str = "fp32",
    batch_size: int = 1,
    dynamic_batch: bool = False,
) -> str:
    h, w = resolution
    tag = "fp16s" if precision == "fp16-strong" else precision
    batch = "bdyn" if dynamic_batch else f"b{batch_size}"
    return (
        f"{variant.name}_{h}x{w}_{batch}_{tag}_{checkpoint_sha256[:16]}_opset{ONNX_OPSET}_f{EXPORT_FORMAT_VERSION}.onnx"
    )


def ensure_onnx(
    model_name: str,
    weights: str | os.PathLike | None,
    resolution: tuple[int, int],
    cache_root: str | os.PathLike | None = None,
    precision: str = "fp32",
    batch_size: int = 1,
    dynamic_batch: bool = False,
) -> Path:
    """The ONNX export of (variant, resolution, checkpoint sha256, precision, batch), exported once into the cache.

    ``dynamic_batch`` exports a symbolic batch dimension instead of the fixed ``batch_size``.

    Only the checkpoint's sha256 is needed to find a cached file, so torch is imported only when
    exporting. Random weights are exported to a private temporary folder, never cached.
    """
    import onnx

    from evit_ros.network.weights import RANDOM_WEIGHTS, load_model, resolve_checkpoint, verify_checkpoint

    variant = get_variant(model_name)
    if weights is not None and str(weights) == RANDOM_WEIGHTS:
        import atexit
        import shutil

        tmpdir = tempfile.mkdtemp(prefix="evit_ros_random_onnx_")
        atexit.register(shutil.rmtree, tmpdir, ignore_errors=True)
        model, sha = load_model(variant, weights)
        path = Path(tmpdir) / cached_onnx_name(variant, resolution, sha, precision, batch_size, dynamic_batch)
        export_onnx(
            model, variant, resolution, path, precision=precision, checkpoint_sha256=sha, batch_size=batch_size,
            dynamic_batch=dynamic_batch,
        )  # fmt: skip
        return path
    checkpoint = resolve_checkpoint(variant, weights)
    sha = verify_checkpoint(checkpoint)
    name = cached_onnx_name(variant, resolution, sha, precision, batch_size, dynamic_batch)
    path = onnx_cache_root(cache_root) / name
    if path.is_file():
        try:
            meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            if meta.get("checkpoint_sha256") == sha and meta.get("resolution") == f"{resolution[0]}x{resolution[1]}":
                log.debug("using cached ONNX %s", path)
                return path
            log.warning("cached ONNX %s does not match (sha256/resolution); exporting again", path)
        except Exception as exc:  # truncated or corrupt file
            log.warning("cached ONNX %s is unreadable (%s); exporting again", path, exc)
    log.info("exporting %s %dx%d (%s) to %s", variant.name, *resolution, precision, path)
    model, sha = load_model(variant, checkpoint)
    export_onnx(
        model, variant, resolution, path, precision=precision, checkpoint_sha256=sha, batch_size=batch_size,
        dynamic_batch=dynamic_batch,
    )  # fmt: skip
    return path
