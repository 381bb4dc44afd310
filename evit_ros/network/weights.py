"""Finding, verifying and loading the official EfficientViT-Seg checkpoints."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from evit_ros.network.variants import HF_REPO_ID, KNOWN_SHA256, Variant

if TYPE_CHECKING:
    import torch

RANDOM_WEIGHTS = "random"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or does not fit the model."""


def cache_dir() -> Path:
    """Persistent checkpoint cache: $EVIT_ROS_CACHE, else $XDG_CACHE_HOME/evit_ros, else ~/.cache/evit_ros."""
    env = os.environ.get("EVIT_ROS_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "evit_ros"


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _where_to_get(variant: Variant) -> str:
    filename = variant.checkpoint_filename
    return (
        f"download '{filename}' from the Hugging Face Hub repository '{HF_REPO_ID}' "
        f"(https://huggingface.co/{HF_REPO_ID}/blob/main/{filename}) and pass it with --weights / the 'weights' "
        f"parameter, or place it in {cache_dir() / filename}"
    )


def verify_checkpoint(path: Path) -> str:
    """Return the file's sha256; raise if it is a known official file whose hash does not match."""
    digest = sha256_of(path)
    expected = KNOWN_SHA256.get(path.name)
    if expected is not None and digest != expected:
        raise CheckpointError(
            f"{path} has sha256 {digest}, but the official {path.name} has {expected}: the file is corrupt or "
            "truncated; download it again"
        )
    return digest


def resolve_checkpoint(variant: Variant, weights: str | os.PathLike | None, download: bool = True) -> Path:
    """Locate the checkpoint for `variant`: an explicit path, the cache, or a Hub download."""
    if weights is not None and str(weights) not in ("", "auto"):
        path = Path(weights).expanduser()
        if path.is_dir():
            path = path / variant.checkpoint_filename
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}. To get it, {_where_to_get(variant)}")
        return path
    cached = cache_dir() / variant.checkpoint_filename
    if cached.is_file():
        return cached
    if download:
        return _download(variant)
    raise CheckpointError(f"no checkpoint for {variant.name}. To get it, {_where_to_get(variant)}")


def _download(variant: Variant) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise CheckpointError(
            f"no local checkpoint for {variant.name} and huggingface_hub is not installed. To get it, "
            f"{_where_to_get(variant)}"
        ) from exc
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    try:
        # hf_hub_download shows a tqdm progress bar and writes atomically.
        path = hf_hub_download(HF_REPO_ID, variant.checkpoint_filename, local_dir=target)
    except Exception as exc:  # offline, DNS, 404, auth: the fix is the same for the user
        raise CheckpointError(
            f"could not download {variant.checkpoint_filename} ({type(exc).__name__}: {exc}). "
            f"If this machine is offline, {_where_to_get(variant)}"
        ) from exc
    return Path(path)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a state_dict")
    return checkpoint


def load_model(variant: Variant, weights: str | os.PathLike | None, download: bool = True):
    """Build `variant` in eval mode with its checkpoint; returns (model, checkpoint sha256 or 'random')."""
    from evit_ros.network.model import EfficientViTSeg

    if weights is not None and str(weights) == RANDOM_WEIGHTS:
        import torch

        # Seeded, so every load of the same variant is the same network: the TensorRT backend exports the FP32
        # reference and the fp16-strong graph in two loads, and its accuracy gate compares them.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = EfficientViTSeg(variant).eval()
        warnings.warn(
            f"RANDOM WEIGHTS for {variant.name}: outputs are meaningless; use only for smoke tests and timing",
            stacklevel=2,
        )
        return model, RANDOM_WEIGHTS
    model = EfficientViTSeg(variant).eval()
    path = resolve_checkpoint(variant, weights, download=download)
    digest = verify_checkpoint(path)
    state = load_state_dict(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path} does not fit {variant.name} (is it the {variant.checkpoint_filename} checkpoint?): {exc}"
        ) from exc
    return model, digest
