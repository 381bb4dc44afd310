"""One parser for device strings ("cpu", "cuda", "cuda:N"), shared by every backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def parse_device(spec: str | None) -> tuple[str, int | None]:
    """("cpu", None), ("cuda", None) or ("cuda", N) from a device string; None or "" give ("", None): the
    backend's choice."""
    text = (spec or "").strip().lower()
    if not text:
        return "", None
    kind, sep, index = text.partition(":")
    if kind not in ("cpu", "cuda") or (sep and not index.isdigit()) or (kind == "cpu" and sep):
        raise ValueError(f"device must be cpu, cuda or cuda:N, not {spec!r}")
    return kind, int(index) if sep else None


def torch_device(spec: str | None, default: str = "cuda") -> torch.device:
    """A torch.device with an explicit CUDA index.

    torch.cuda.set_device (and CUDA graph capture, streams) need an indexed device: an index-less "cuda"
    raises "Expected a torch.device with a specified index", so "cuda" becomes the current CUDA device.
    """
    import torch

    kind, index = parse_device(spec)
    if not kind:
        kind, index = parse_device(default)
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device {spec or default!r} requested, but torch sees no CUDA device")
    count = torch.cuda.device_count()
    if index is None:
        index = torch.cuda.current_device()
    if not 0 <= index < count:
        raise ValueError(f"CUDA device {index} requested, but torch sees {count} device(s)")
    return torch.device("cuda", index)
