"""Reading exported ONNX graphs without torch: TensorRT op support, FP32 pins, metadata.

Node names come from the TorchScript exporter's module scopes, e.g.
``/backbone/stages.3/op_list.1/context_module/main/linear_attention/MatMul``; every node of a
LiteMLA attention core carries ``/linear_attention/`` (``model.ATTENTION_SCOPE``).
"""

from __future__ import annotations

import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

import onnx

ATTENTION_SCOPE = "linear_attention"  # == model.ATTENTION_SCOPE; repeated here so this module needs no torch
_SCOPE_TOKEN = f"/{ATTENTION_SCOPE}/"
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
# Ops that only carry constants or shape arithmetic: nothing to pin even when they output floats.
_NEVER_PINNED = frozenset({"Constant", "ConstantOfShape", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat"})


@lru_cache(maxsize=1)
def tensorrt_supported_ops() -> frozenset[str]:
    """Op types TensorRT's ONNX parser supports (evit_ros/data/tensorrt_onnx_ops.txt)."""
    text = resources.files("evit_ros").joinpath("data/tensorrt_onnx_ops.txt").read_text(encoding="utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def load(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(Path(model)))


def op_types(model: onnx.ModelProto | str | os.PathLike) -> set[str]:
    """Op types of the main graph (the exported models have no subgraphs or custom domains)."""
    return {node.op_type for node in load(model).graph.node}


def unsupported_tensorrt_ops(model: onnx.ModelProto | str | os.PathLike) -> list[str]:
    """Op types in the graph that TensorRT's ONNX parser does not list as supported (sorted)."""
    graph = load(model).graph
    supported = tensorrt_supported_ops()
    return sorted({n.op_type for n in graph.node if n.op_type not in supported or n.domain not in ("", "ai.onnx")})


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in (*g.value_info, *g.input, *g.output)}
    types.update({init.name: init.data_type for init in g.initializer})
    return types


def attention_block_of(node_name: str) -> str | None:
    """The LiteMLA scope a node belongs to (text before ``/linear_attention/``), or None."""
    idx = node_name.find(_SCOPE_TOKEN)
    return node_name[:idx] if idx >= 0 else None


def fp32_pin_nodes(model: onnx.ModelProto | str | os.PathLike) -> list[str]:
    """Names of the nodes to run in FP32 in an otherwise FP16 TensorRT engine, in graph order.

    These are the float-valued nodes inside every LiteMLA linear-attention core: the casts in and
    out, the reshapes, q/k/v slices and ReLUs, the value padding, the key transpose, both matmuls
    (or the quadratic form's matmuls and ReduceSum on tiny maps), and the epsilon add and
    normalising division. Shape arithmetic (Shape/Gather/Unsqueeze/Concat on int64) and
    Constant nodes in the same scope are left alone, and nothing outside the scope (no Conv) is
    pinned.
    """
    proto = load(model)
    types = _elem_types(proto)
    pins = []
    for node in proto.graph.node:
        if attention_block_of(node.name) is None or node.op_type in _NEVER_PINNED:
            continue
        out_types = [types.get(name) for name in node.output if name]
        if out_types and all(t in _FLOAT_TYPES for t in out_types):
            pins.append(node.name)
    return pins


def pins_by_block(pins: list[str]) -> dict[str, list[str]]:
    """Group pinned node names by LiteMLA block scope."""
    blocks: dict[str, list[str]] = {}
    for name in pins:
        block = attention_block_of(name)
        if block is not None:
            blocks.setdefault(block, []).append(name)
    return blocks


def metadata(model: onnx.ModelProto | str | os.PathLike) -> dict[str, str]:
    """The model's metadata_props as a dict (model, classes, resolution, mean, std, checkpoint_sha256, ...)."""
    return {p.key: p.value for p in load(model).metadata_props}


def io_names(model: onnx.ModelProto | str | os.PathLike) -> tuple[str, str]:
    graph = load(model).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    return inputs[0], graph.output[0].name


def require_logits(model: onnx.ModelProto | str | os.PathLike, meta: dict[str, str] | None = None) -> None:
    """Raise ValueError unless the graph outputs logits (metadata ``output``), as backends and the gate need.

    A labels-head export (N x H x W int32 class ids) would otherwise be compared as if it were logits.
    Graphs without the metadata (third-party exports) are judged by their output's element type.
    """
    meta = metadata(model) if meta is None else meta
    head = meta.get("output")
    if head is None:
        out = load(model).graph.output[0].type.tensor_type.elem_type
        head = "logits" if out in _FLOAT_TYPES else f"non-float ({onnx.TensorProto.DataType.Name(out)})"
    if head != "logits":
        raise ValueError(
            f"{model if not isinstance(model, onnx.ModelProto) else 'the ONNX model'} outputs {head}, but a logits "
            "model (N x C x H/8 x W/8) is needed here: export with --head logits (the default)"
        )


def require_float_io(model: onnx.ModelProto | str | os.PathLike) -> None:
    """Raise ValueError unless the graph has one float32 input and one float (logits) output, as the TensorRT
    backend binds them. Checked with ``onnx`` before TensorRT is imported, so a wrong model fails at once and the
    same way on every machine, instead of after an engine build (and again on every start)."""
    graph = load(model).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    name = model if not isinstance(model, onnx.ModelProto) else "the ONNX model"
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ValueError(
            f"{name} has {len(inputs)} inputs and {len(graph.output)} outputs; one image input and one "
            "logits output are needed"
        )
    in_type = inputs[0].type.tensor_type.elem_type
    if in_type != onnx.TensorProto.FLOAT:
        raise ValueError(
            f"{name} input {inputs[0].name!r} is {onnx.TensorProto.DataType.Name(in_type)}; the normalised image "
            "input must be FLOAT (float32): export with evit-ros export"
        )
    out_type = graph.output[0].type.tensor_type.elem_type
    if out_type not in _FLOAT_TYPES:
        raise ValueError(
            f"{name} output {graph.output[0].name!r} is {onnx.TensorProto.DataType.Name(out_type)}; logits must be "
            "FLOAT or FLOAT16"
        )


# How TensorRT's ONNX parser turns these ops into layers (onnx-tensorrt onnxOpImporters.cpp): data-movement ops
# become shuffle layers, Constant nodes and initializers constant layers.
_TRT_LAYER_OF_OP = {
    "Constant": "CONSTANT",
    "Reshape": "SHUFFLE",
    "Transpose": "SHUFFLE",
    "Unsqueeze": "SHUFFLE",
    "Squeeze": "SHUFFLE",
    "Flatten": "SHUFFLE",
    "Identity": "IDENTITY",
    "Cast": "CAST",
    "Add": "ELEMENTWISE",
    "Sub": "ELEMENTWISE",
    "Mul": "ELEMENTWISE",
    "Div": "ELEMENTWISE",
    "MatMul": "MATRIX_MULTIPLY",
}


def layer_graph(model: onnx.ModelProto | str | os.PathLike):
    """The graph as ``tensorrt_build.LayerNode`` records (initializers as constant layers), so the FP32 pin
    selection (``tensorrt_build.select_fp32_layers``) can be checked on an exported graph without TensorRT."""
    from evit_ros.deploy.tensorrt_build import LayerNode

    proto = load(model)
    types = _elem_types(proto)
    nodes = [
        LayerNode(init.name, "CONSTANT", (), (init.name,), (init.data_type in _FLOAT_TYPES,))
        for init in proto.graph.initializer
    ]
    for node in proto.graph.node:
        outputs = tuple(o for o in node.output if o)
        nodes.append(
            LayerNode(
                node.name,
                _TRT_LAYER_OF_OP.get(node.op_type, node.op_type.upper()),
                tuple(i for i in node.input if i),
                outputs,
                tuple(types.get(o) in _FLOAT_TYPES for o in outputs),
            )
        )
    return nodes
