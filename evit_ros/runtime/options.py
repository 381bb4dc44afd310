"""The engine-affecting backend options, defined once.

The CLI flags (``evit_ros.cli.common``, ``--dla-core`` for ``dla_core``), the node's read-only parameters
(``evit_ros.ros.seg_node``), ``config/seg.yaml`` and the launch arguments are all derived from ``BACKEND_OPTIONS``,
and the values reach ``BackendConfig.options`` through ``normalise_options``. Each option has a plain default a
ROS parameter can hold (``""``/``-1`` stand for "not set"), which ``normalise_options`` turns into ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

TYPINGS = ("auto", "strong", "weak")


@dataclass(frozen=True)
class BackendOption:
    name: str
    type: type  # bool | int | float | str
    default: bool | int | float | str
    description: str
    backends: tuple[str, ...]
    choices: tuple[str, ...] = ()
    unset: object = None  # the default meaning "not set" (normalised to None)
    minimum: float | None = None
    maximum: float | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse(self, text: str) -> bool | int | float | str:
        """A value of this option from text (launch arguments, environment)."""
        if self.type is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{self.name} must be true or false, not {text!r}")
        try:
            return self.type(text)
        except ValueError as exc:
            raise ValueError(f"{self.name} must be a {self.type.__name__}, not {text!r}") from exc

    def check(self, value: object) -> object:
        """``value`` validated (type, choices, range); the unset value becomes None."""
        if value is None or value == self.unset:
            return None
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise ValueError(f"backend option {self.name} must be {self.type.__name__}, not {value!r}")
        if self.choices and value not in self.choices:
            raise ValueError(f"backend option {self.name} must be one of {', '.join(self.choices)}, not {value!r}")
        if self.minimum is not None and value < self.minimum or self.maximum is not None and value > self.maximum:
            raise ValueError(f"backend option {self.name} must be within [{self.minimum}, {self.maximum}], not {value}")
        return value


BACKEND_OPTIONS: tuple[BackendOption, ...] = (
    BackendOption("cuda_graphs", bool, True, "torch on CUDA: replay the model as one captured CUDA graph", ("torch",)),
    BackendOption(
        "compile", bool, False, "torch: torch.compile the model (needs a C++ compiler or Triton)", ("torch",)
    ),
    BackendOption(
        "typing",
        str,
        "auto",
        "TensorRT fp16 build: strong (fp16-strong ONNX, STRONGLY_TYPED), weak (FP16 flag, FP32 pins) or auto "
        "(strong on TensorRT >= 10, weak on 8.6-9.x)",
        ("tensorrt",),
        choices=TYPINGS,
    ),
    BackendOption("workspace_mib", int, 2048, "TensorRT builder workspace (MiB)", ("tensorrt",), minimum=1),
    BackendOption("tf32", bool, False, "TensorRT: allow TF32 (off keeps FP32 layers really FP32)", ("tensorrt",)),
    BackendOption(
        "builder_optimization_level",
        int,
        -1,
        "TensorRT builder optimization level 0-5 (-1 = TensorRT's default, 3)",
        ("tensorrt",),
        unset=-1,
        minimum=0,
        maximum=5,
    ),
    BackendOption(
        "dla_core",
        int,
        -1,
        "Jetson DLA core for fp16/int8 engines (-1 = GPU only); layers DLA cannot run fall back to the GPU",
        ("tensorrt",),
        unset=-1,
        minimum=0,
    ),
    BackendOption(
        "gpu_fallback",
        bool,
        True,
        "with dla_core: let layers DLA cannot run use the GPU (required for these models)",
        ("tensorrt",),
    ),
    BackendOption("calibration_dir", str, "", "TensorRT int8: folder of calibration images", ("tensorrt",), unset=""),
    BackendOption(
        "calibration_images", int, 64, "TensorRT int8: number of calibration images used", ("tensorrt",), minimum=1
    ),
    BackendOption(
        "gate_images",
        str,
        "",
        "frames for the TensorRT accuracy gate ('' = calibration_dir, else seeded noise)",
        ("tensorrt",),
        unset="",
    ),
    BackendOption(
        "gate_frames", int, 4, "number of frames the TensorRT accuracy gate compares", ("tensorrt",), minimum=1
    ),
    BackendOption(
        "min_label_agreement",
        float,
        0.99,
        "TensorRT accuracy gate: minimum label agreement with the FP32 reference, 0..1",
        ("tensorrt",),
        minimum=0.0,
        maximum=1.0,
    ),
    BackendOption(
        "reference_onnx",
        str,
        "",
        "FP32 ONNX for the accuracy gate when weights is an fp16 .onnx",
        ("tensorrt",),
        unset="",
    ),
)

OPTIONS_BY_NAME: dict[str, BackendOption] = {opt.name: opt for opt in BACKEND_OPTIONS}


def default_options() -> dict[str, object]:
    """Every option at its default (as a ROS parameter or CLI flag holds it)."""
    return {opt.name: opt.default for opt in BACKEND_OPTIONS}


def normalise_options(values: Mapping[str, object]) -> dict[str, object]:
    """Validated options for ``BackendConfig.options``: unknown names rejected, unset values dropped."""
    unknown = sorted(set(values) - set(OPTIONS_BY_NAME))
    if unknown:
        raise ValueError(f"unknown backend option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS_BY_NAME)}")
    out = {}
    for name, value in values.items():
        checked = OPTIONS_BY_NAME[name].check(value)
        if checked is not None:
            out[name] = checked
    return out


def option(options: Mapping[str, object], name: str) -> object:
    """An option's value from ``BackendConfig.options``, else its default (None when its default means unset)."""
    spec = OPTIONS_BY_NAME[name]
    if name in options and options[name] is not None:
        return spec.check(options[name])
    return None if spec.default == spec.unset else spec.default
