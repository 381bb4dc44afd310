"""The fp32 logits ONNX a CPU backend runs: a user's .onnx given as weights, or the checkpoint's cached export."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from evit_ros.runtime.base import BackendConfig

log = logging.getLogger(__name__)


def logits_onnx(
    config: BackendConfig, backend: str, read_metadata: Callable[[Path], dict[str, str]] | None = None
) -> tuple[Path, dict[str, str]]:
    """Path and metadata of the logits ONNX for `config`; exported once into the ONNX cache when needed.

    `read_metadata` reads the ONNX metadata_props (default: with the onnx package). Raises FileNotFoundError
    for a missing .onnx and ValueError for an ONNX whose head is not logits.
    """
    from evit_ros.network.variants import get_variant

    variant = get_variant(config.model)
    if config.weights is not None and str(config.weights).lower().endswith(".onnx"):
        path = Path(config.weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
    else:
        from evit_ros.deploy.onnx_export import ensure_onnx

        # Batches of several cameras are often partial: a symbolic batch runs 1..N frames without padding.
        path = ensure_onnx(
            variant.name,
            config.weights,
            config.resolution,
            config.engine_cache_dir,
            "fp32",
            config.batch_size,
            dynamic_batch=config.batch_size > 1,
        )
    if read_metadata is None:
        from evit_ros.deploy.onnx_graph import metadata, require_logits

        meta = metadata(path)
        require_logits(path, meta)  # also judges third-party graphs without our metadata
    else:
        meta = read_metadata(path)
        if meta.get("output", "logits") != "logits":
            raise ValueError(f"{path} outputs {meta.get('output')}; the {backend} backend needs a logits model")
    if meta.get("model") not in (None, variant.name):
        log.warning("%s was exported from %s, not %s", path, meta.get("model"), variant.name)
    return path, meta
