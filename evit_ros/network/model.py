"""EfficientViT-Seg (Cai et al., ICCV 2023) in PyTorch.

Module and attribute names follow the released checkpoints so that their state_dicts load
with strict=True, unchanged. The multi-scale ReLU linear attention lives in its own
parameter-free submodule (``LinearAttentionCore``) so that it runs in float32 under
autocast or ``.half()`` and so that exported ONNX nodes carry its name for precision pinning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evit_ros.network.variants import Variant, get_variant

ATTENTION_SCOPE = "linear_attention"  # module name of every attention core; ONNX nodes inherit it
ATTENTION_EPS = 1.0e-15


def _activation(name: str | None) -> nn.Module | None:
    if name is None:
        return None
    if name == "hswish":
        return nn.Hardswish()
    if name == "gelu":
        return nn.GELU(approximate="tanh")
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {name}")


class ConvLayer(nn.Module):
    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        norm: bool = True,
        act: str | None = None,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=bias)
        self.norm = nn.BatchNorm2d(out_ch, eps=eps) if norm else None
        self.act = _activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        return x


class UpSample(nn.Module):
    """Bicubic x`factor`, align_corners=False, evaluated in float32 as upstream does."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.interpolate(x.float(), scale_factor=self.factor, mode="bicubic", align_corners=False)
        return y.to(x.dtype)


class OpSequential(nn.Module):
    def __init__(self, ops: list[nn.Module]) -> None:
        super().__init__()
        self.op_list = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.op_list:
            x = op(x)
        return x


class Residual(nn.Module):
    def __init__(self, main: nn.Module, shortcut: bool) -> None:
        super().__init__()
        self.main = main
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + x if self.shortcut else self.main(x)


def _triple(v):
    return v if isinstance(v, tuple) else (v, v, v)


class DSConv(nn.Module):
    def __init__(self, in_ch, out_ch, stride, act, fewer_norm, eps) -> None:
        super().__init__()
        self.depth_conv = ConvLayer(
            in_ch, in_ch, 3, stride, in_ch, bias=fewer_norm, norm=not fewer_norm, act=act, eps=eps
        )
        self.point_conv = ConvLayer(in_ch, out_ch, 1, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(x))


class MBConv(nn.Module):
    def __init__(self, in_ch, out_ch, stride, expand, act, fewer_norm, eps) -> None:
        super().__init__()
        mid = round(in_ch * expand)
        self.inverted_conv = ConvLayer(in_ch, mid, 1, bias=fewer_norm, norm=not fewer_norm, act=act, eps=eps)
        self.depth_conv = ConvLayer(mid, mid, 3, stride, mid, bias=fewer_norm, norm=not fewer_norm, act=act, eps=eps)
        self.point_conv = ConvLayer(mid, out_ch, 1, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class FusedMBConv(nn.Module):
    def __init__(self, in_ch, out_ch, stride, expand, act, fewer_norm, eps) -> None:
        super().__init__()
        mid = round(in_ch * expand)
        self.spatial_conv = ConvLayer(in_ch, mid, 3, stride, bias=fewer_norm, norm=not fewer_norm, act=act, eps=eps)
        self.point_conv = ConvLayer(mid, out_ch, 1, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.spatial_conv(x))


class ResBlock(nn.Module):
    def __init__(self, in_ch, out_ch, stride, expand, act, fewer_norm, eps) -> None:
        super().__init__()
        mid = round(in_ch * expand)
        self.conv1 = ConvLayer(in_ch, mid, 3, stride, bias=fewer_norm, norm=not fewer_norm, act=act, eps=eps)
        self.conv2 = ConvLayer(mid, out_ch, 3, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


_LOCAL_BLOCKS = {"ds": DSConv, "mb": MBConv, "fmb": FusedMBConv, "res": ResBlock}


def _local_block(kind, in_ch, out_ch, stride, expand, act, fewer_norm, eps) -> nn.Module:
    if kind == "ds":
        return DSConv(in_ch, out_ch, stride, act, fewer_norm, eps)
    return _LOCAL_BLOCKS[kind](in_ch, out_ch, stride, expand, act, fewer_norm, eps)


class LinearAttentionCore(nn.Module):
    """ReLU linear attention over packed [q, k, v] heads, always in float32.

    In half precision the per-pixel normaliser (a sum over all keys) overflows 65504 at
    high resolution and the 1e-15 epsilon underflows to zero, so the core upcasts.
    """

    def __init__(self, dim: int, eps: float = ATTENTION_EPS) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        in_dtype = qkv.dtype
        with torch.autocast(device_type=qkv.device.type, enabled=False):
            b, _, h, w = qkv.shape
            qkv = qkv.float().reshape(b, -1, 3 * self.dim, h * w)
            q = F.relu(qkv[:, :, : self.dim])
            k = F.relu(qkv[:, :, self.dim : 2 * self.dim])
            v = qkv[:, :, 2 * self.dim :]
            if h * w > self.dim:
                v = F.pad(v, (0, 0, 0, 1), mode="constant", value=1.0)
                out = torch.matmul(torch.matmul(v, k.transpose(-1, -2)), q)
                out = out[:, :, :-1] / (out[:, :, -1:] + self.eps)
            else:  # tiny maps: the quadratic form is cheaper and what upstream runs
                att = torch.matmul(k.transpose(-1, -2), q)
                att = att / (att.sum(dim=2, keepdim=True) + self.eps)
                out = torch.matmul(v, att)
            out = out.reshape(b, -1, h, w)
        return out.to(in_dtype)


class LiteMLA(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, dim: int, scales: tuple[int, ...], eps: float) -> None:
        super().__init__()
        heads = in_ch // dim
        total = heads * dim
        self.qkv = ConvLayer(in_ch, 3 * total, 1, norm=False, eps=eps)
        self.aggreg = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(3 * total, 3 * total, s, padding=s // 2, groups=3 * total, bias=False),
                nn.Conv2d(3 * total, 3 * total, 1, groups=3 * heads, bias=False),
            )
            for s in scales
        )
        self.linear_attention = LinearAttentionCore(dim)
        self.proj = ConvLayer(total * (1 + len(scales)), out_ch, 1, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        qkv = torch.cat([qkv] + [op(qkv) for op in self.aggreg], dim=1)
        return self.proj(self.linear_attention(qkv))


class EfficientViTBlock(nn.Module):
    def __init__(self, ch: int, dim: int, expand: float, act: str, eps: float) -> None:
        super().__init__()
        self.context_module = Residual(LiteMLA(ch, ch, dim, (5,), eps), shortcut=True)
        self.local_module = Residual(MBConv(ch, ch, 1, expand, act, True, eps), shortcut=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_module(self.context_module(x))


_B_BACKBONES = {  # widths, depths, attention head dim
    "b0": ([8, 16, 32, 64, 128], [1, 2, 2, 2, 2], 16),
    "b1": ([16, 32, 64, 128, 256], [1, 2, 3, 3, 4], 16),
    "b2": ([24, 48, 96, 192, 384], [1, 3, 4, 4, 6], 32),
    "b3": ([32, 64, 128, 256, 512], [1, 4, 6, 6, 9], 32),
}
_L_BACKBONES = {
    "l1": ([32, 64, 128, 256, 512], [1, 1, 1, 6, 6]),
    "l2": ([32, 64, 128, 256, 512], [1, 2, 2, 8, 8]),
}


class BackboneB(nn.Module):
    def __init__(self, size: str, eps: float) -> None:
        super().__init__()
        widths, depths, dim = _B_BACKBONES[size]
        act, expand = "hswish", 4
        stem = [ConvLayer(3, widths[0], 3, 2, act=act, eps=eps)]
        stem += [Residual(DSConv(widths[0], widths[0], 1, act, False, eps), True) for _ in range(depths[0])]
        self.input_stem = OpSequential(stem)
        stages, ch = [], widths[0]
        for w, d in zip(widths[1:3], depths[1:3]):
            blocks = []
            for i in range(d):
                blocks.append(Residual(MBConv(ch, w, 2 if i == 0 else 1, expand, act, False, eps), shortcut=i > 0))
                ch = w
            stages.append(OpSequential(blocks))
        for w, d in zip(widths[3:], depths[3:]):
            blocks = [Residual(MBConv(ch, w, 2, expand, act, True, eps), shortcut=False)]
            ch = w
            blocks += [EfficientViTBlock(ch, dim, expand, act, eps) for _ in range(d)]
            stages.append(OpSequential(blocks))
        self.stages = nn.ModuleList(stages)
        self.out_channels = widths

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.input_stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        return feats


class BackboneL(nn.Module):
    BLOCKS = ("res", "fmb", "fmb", "mb", "att")
    EXPANDS = (1, 4, 4, 4, 6)
    FEWER_NORM = (False, False, False, True, True)

    def __init__(self, size: str, eps: float) -> None:
        super().__init__()
        widths, depths = _L_BACKBONES[size]
        act = "gelu"
        stage0 = [ConvLayer(3, widths[0], 3, 2, act=act, eps=eps)]
        stage0 += [
            Residual(_local_block("res", widths[0], widths[0], 1, 1, act, False, eps), True) for _ in range(depths[0])
        ]
        stages, ch = [OpSequential(stage0)], widths[0]
        for sid in range(1, 5):
            kind, expand, fewer = self.BLOCKS[sid], self.EXPANDS[sid], self.FEWER_NORM[sid]
            down_kind = kind if kind in ("mb", "fmb") else "mb"
            blocks = [Residual(_local_block(down_kind, ch, widths[sid], 2, expand * 4, act, fewer, eps), False)]
            ch = widths[sid]
            for _ in range(depths[sid]):
                if kind == "att":
                    blocks.append(EfficientViTBlock(ch, 32, expand, act, eps))
                else:
                    blocks.append(Residual(_local_block(kind, ch, ch, 1, expand, act, fewer, eps), True))
            stages.append(OpSequential(blocks))
        self.stages = nn.ModuleList(stages)
        self.out_channels = widths

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class SegHead(nn.Module):
    """Fuses stages 4, 3, 2 (strides 32, 16, 8) at stride 8 and predicts per-class logits."""

    def __init__(self, in_channels: list[int], variant: Variant, act: str, eps: float) -> None:
        super().__init__()
        spec = variant.head
        width = spec.width
        inputs: list[nn.Module] = []
        for ch, factor in zip(in_channels, (4, 2, 1)):
            proj = ConvLayer(ch, width, 1, eps=eps)
            inputs.append(proj if factor == 1 else OpSequential([proj, UpSample(factor)]))
        self.input_ops = nn.ModuleList(inputs)
        kind = "mb" if spec.middle_op == "mbconv" else "fmb"
        self.middle = OpSequential(
            [
                Residual(_local_block(kind, width, width, 1, spec.expand_ratio, act, False, eps), True)
                for _ in range(spec.depth)
            ]
        )
        out: list[nn.Module] = []
        ch = width
        if spec.final_expand is not None:
            out.append(ConvLayer(width, width * spec.final_expand, 1, act=act, eps=eps))
            ch = width * spec.final_expand
        out.append(ConvLayer(ch, variant.num_classes, 1, bias=True, norm=False, eps=eps))
        self.output_ops = nn.ModuleList([OpSequential(out)])

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        # Summed right to left as upstream's list_sum does, for bit-identical fp32 outputs.
        x = self.input_ops[0](feats[0]) + (self.input_ops[1](feats[1]) + self.input_ops[2](feats[2]))
        return self.output_ops[0](self.middle(x))


class EfficientViTSeg(nn.Module):
    def __init__(self, variant: Variant) -> None:
        super().__init__()
        self.variant = variant
        eps = variant.bn_eps
        self.backbone = BackboneB(variant.size, eps) if variant.family == "b" else BackboneL(variant.size, eps)
        widths = self.backbone.out_channels
        self.head = SegHead([widths[4], widths[3], widths[2]], variant, variant.activation, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        return self.head([feats[4], feats[3], feats[2]])


def build_model(name: str | Variant) -> EfficientViTSeg:
    """Build an official variant by registry name (e.g. ``"b1-cityscapes"``) with random weights."""
    variant = name if isinstance(name, Variant) else get_variant(name)
    return EfficientViTSeg(variant)
