"""The 11 official variants: architecture, checkpoint compatibility and half-precision numerics."""

from __future__ import annotations

import re

import pytest

torch = pytest.importorskip("torch")

from evit_ros.network.model import ATTENTION_SCOPE, LinearAttentionCore, build_model  # noqa: E402
from evit_ros.network.variants import VARIANTS, get_variant  # noqa: E402


def _read_layout(path):
    lines = path.read_text().splitlines()
    params = int(re.search(r"params=(\d+)", lines[0]).group(1))
    rows = [tuple(line.split(" ", 2)) for line in lines[1:] if line.strip()]
    return rows, params


def test_registry_has_the_eleven_official_variants():
    expected = {f"{s}-cityscapes" for s in ("b0", "b1", "b2", "b3", "l1", "l2")}
    expected |= {f"{s}-ade20k" for s in ("b1", "b2", "b3", "l1", "l2")}
    assert set(VARIANTS) == expected
    with pytest.raises(ValueError, match="no official B0 ADE20K"):
        get_variant("b0-ade20k")
    assert get_variant("efficientvit_seg_b1_cityscapes".replace("efficientvit_seg_", "")).name == "b1-cityscapes"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_state_dict_matches_official_layout(name, shared_data):
    rows, params = _read_layout(shared_data / "layouts" / f"efficientvit-seg-{name}.txt")
    model = build_model(name)
    mine = [(k, str(v.dtype).removeprefix("torch."), str(list(v.shape))) for k, v in model.state_dict().items()]
    assert mine == rows  # same keys, dtypes, shapes and order
    assert sum(p.numel() for p in model.parameters()) == params
    eps = {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert eps == {1e-7 if name.startswith("l") else 1e-5}


@pytest.mark.parametrize("name", ["b1-ade20k", "l1-cityscapes"])
def test_forward_shape_is_stride_8(name):
    variant = get_variant(name)
    model = build_model(name).eval()
    with torch.inference_mode():
        out = model(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, variant.num_classes, 8, 12)


def test_official_b0_checkpoint_loads_strictly(b0_checkpoint, shared_data):
    from evit_ros.network.weights import load_model

    model, digest = load_model(get_variant("b0-cityscapes"), b0_checkpoint)
    expected = (shared_data / "weights" / "SHA256SUMS").read_text().split()[0]
    assert digest == expected
    raw = torch.load(b0_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, raw[key]), key


def _attention_input(dim: int, scale: float) -> torch.Tensor:
    # Large positive activations over a 128x256 map (stride 8 of 1024x2048): the per-pixel
    # normaliser sums ~32k products and overflows fp16 unless the core runs in fp32.
    gen = torch.Generator().manual_seed(0)
    return torch.rand(1, 6 * dim, 128, 256, generator=gen) * scale


def test_attention_core_runs_in_fp32_for_half_inputs():
    core = LinearAttentionCore(dim=16)
    x = _attention_input(16, 8.0)
    ref = core(x)
    half = core(x.half())
    assert half.dtype == torch.float16
    assert torch.isfinite(half).all()
    assert torch.allclose(half.float(), ref, rtol=2e-2, atol=2e-2)
    # The same computation carried out in fp16 overflows: the fp32 island is what prevents it.
    q = torch.relu(x.half().reshape(1, -1, 48, 128 * 256)[:, :, :16])
    k = torch.relu(x.half().reshape(1, -1, 48, 128 * 256)[:, :, 16:32])
    assert not torch.isfinite(q.sum(-1, keepdim=True) * k.sum(-1, keepdim=True)).all()


def test_attention_eps_survives_half_precision():
    core = LinearAttentionCore(dim=8)
    zeros = torch.zeros(1, 24, 16, 16, dtype=torch.float16)  # relu(q)=relu(k)=0: only eps keeps 0/0 away
    out = core(zeros)
    assert torch.isfinite(out).all()
    assert torch.tensor(core.eps, dtype=torch.float16) == 0  # eps alone would vanish in fp16


@pytest.mark.parametrize("mode", ["half", "autocast"])
def test_half_precision_model_has_no_nan(mode, b0_checkpoint):
    from evit_ros.network.weights import load_model

    model, _ = load_model(get_variant("b0-cityscapes"), b0_checkpoint)
    x = torch.randn(1, 3, 256, 512) * 2
    with torch.inference_mode():
        if mode == "half":
            try:
                out = model.half()(x.half())
            except RuntimeError as exc:  # CPU builds without fp16 conv kernels
                pytest.skip(f"fp16 not supported by this torch build on CPU: {exc}")
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
    assert torch.isfinite(out.float()).all()
    assert sum(1 for n, _ in model.named_modules() if n.endswith(ATTENTION_SCOPE)) == 4  # B0: 2 + 2 blocks
