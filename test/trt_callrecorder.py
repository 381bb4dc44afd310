"""A recording stand-in for the ``tensorrt`` Python module: CALL-SEQUENCE CHECKS ONLY, never TensorRT coverage.

TensorRT cannot be installed on the machines these tests run on. This module lets tests check *which* TensorRT calls
evit_ros makes on each build route (network creation flags, builder flags, per-layer precision, optimization profile
shapes, logger objects, INT8 calibrator calls, timing-cache calls) without TensorRT. It builds nothing and knows
nothing about what TensorRT accepts: a test passing against it says the code asks TensorRT for the intended things,
not that TensorRT would build a correct engine. Tests that really run TensorRT are the ``needs_trt`` ones in
test_tensorrt.py.

The API surface mirrors the bindings' names (python/src/infer/pyCore.cpp, pyGraph.cpp, pyInt8.cpp of NVIDIA/TensorRT
v8.6.1, v10.3.0 and v11.1): the version decides which members exist, so code that touches a member a version lacks
(BuilderFlag.FP16 on 11, NetworkDefinitionCreationFlag.STRONGLY_TYPED on 8.6) fails here as it would there.
"""

from __future__ import annotations

import enum
import types
from collections.abc import Sequence
from dataclasses import dataclass, field

TIMING_CACHE_MAGIC = b"TRTC"  # this stand-in's own "valid cache" marker; not TensorRT's format


class HostMemory:
    """Like the bindings' IHostMemory (serialized engines and timing caches): ``nbytes``, ``dtype`` and a byte
    conversion, but NO ``__len__`` (pyFoundationalTypes.cpp v8.6.1:282-287, v10.3.0:295-300, v11.1:297-302), so
    code that calls len() on it fails here as it does with TensorRT. (A pure-Python class cannot offer the buffer
    protocol on Python 3.11; ``bytes()`` reaches ``__bytes__`` instead, as it reaches the buffer with TensorRT.)"""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)

    @property
    def nbytes(self) -> int:
        return len(self._data)

    @property
    def dtype(self) -> str:
        return "UINT8"

    def __bytes__(self) -> bytes:
        return self._data


@dataclass
class Tensor:
    name: str
    dtype: object
    shape: tuple[int, ...] = ()
    is_shape_tensor: bool = False


class CallRecorder:
    """Builds a ``tensorrt`` stand-in module for one TensorRT version and records every call made on it.

    ``layers``: (name, LayerType name, input tensor names, output tensor names, per-output float flag), as the
    parser would produce them. ``inputs``: network input name -> shape (-1 for dynamic). ``dla_layers``: names of
    the layers ``can_run_on_DLA`` accepts. ``build_result``: what ``build_serialized_network`` does: bytes to
    return (as an IHostMemory), None (a failed build) or an exception instance to raise (an interrupted build).
    """

    def __init__(
        self,
        version: str = "10.3.0",
        layers: Sequence[tuple[str, str, tuple[str, ...], tuple[str, ...], tuple[bool, ...]]] = (),
        inputs: dict[str, tuple[int, ...]] | None = None,
        num_dla_cores: int = 0,
        dla_layers: frozenset[str] = frozenset(),
        timing_cache_matches_device: bool = True,
        build_result: object = b"serialized engine",
    ) -> None:
        self.version = version
        self.major = int(version.split(".")[0])
        self.calls: list[tuple] = []
        self.layer_specs = list(layers)
        self.inputs = dict(inputs or {})
        self.num_dla_cores = num_dla_cores
        self.dla_layers = dla_layers
        self.timing_cache_matches_device = timing_cache_matches_device
        self.build_result = build_result
        self.module = self._make_module()

    def record(self, *call) -> None:
        self.calls.append(call)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def of(self, name: str) -> list[tuple]:
        return [c[1:] for c in self.calls if c[0] == name]

    def _make_module(self):  # noqa: C901 - one closure per bound class, kept together
        rec = self
        trt = types.ModuleType("tensorrt")
        trt.__version__ = self.version

        class DataType(enum.Enum):
            FLOAT = 0
            HALF = 1
            INT8 = 2
            INT32 = 3
            BOOL = 4
            INT64 = 5

        trt.DataType = DataType
        trt.float32, trt.float16, trt.int8, trt.int32 = DataType.FLOAT, DataType.HALF, DataType.INT8, DataType.INT32
        trt.bool, trt.int64 = DataType.BOOL, DataType.INT64

        layer_types = sorted({spec[1] for spec in self.layer_specs} | {"CONSTANT", "SHUFFLE"})
        trt.LayerType = enum.Enum("LayerType", layer_types)
        flags = ["GPU_FALLBACK", "TF32"] + (["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"] if self.major < 11 else [])
        trt.BuilderFlag = enum.Enum("BuilderFlag", flags)
        creation = {"EXPLICIT_BATCH": 0} if self.major < 11 else {}
        if self.major >= 10:
            creation["STRONGLY_TYPED"] = 1
        trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", creation)
        trt.MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE"])
        trt.DeviceType = enum.Enum("DeviceType", ["GPU", "DLA"])
        trt.TensorIOMode = enum.Enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])

        class ILogger:
            class Severity(enum.IntEnum):
                INTERNAL_ERROR = 0
                ERROR = 1
                WARNING = 2
                INFO = 3
                VERBOSE = 4

            def __init__(self) -> None:
                pass

        trt.ILogger = ILogger

        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                pass

        if self.major < 11:
            trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2

        if self.major >= 10:

            class IProgressMonitor:
                def __init__(self) -> None:
                    pass

            trt.IProgressMonitor = IProgressMonitor

        class Layer:
            def __init__(self, name, type_name, inputs, outputs) -> None:
                self.name, self.type = name, trt.LayerType[type_name]
                self._inputs, self._outputs = inputs, outputs

            @property
            def num_inputs(self) -> int:
                return len(self._inputs)

            @property
            def num_outputs(self) -> int:
                return len(self._outputs)

            def get_input(self, j):
                return self._inputs[j]

            def get_output(self, j):
                return self._outputs[j]

            @property
            def precision(self):
                return trt.float32

            @precision.setter
            def precision(self, value) -> None:
                rec.record("layer.precision", self.name, value)

            def set_output_type(self, index, dtype) -> None:
                rec.record("layer.set_output_type", self.name, index, dtype)

        class Network:
            def __init__(self, flags: int) -> None:
                self.flags = flags
                tensors = {name: Tensor(name, trt.float32, shape) for name, shape in rec.inputs.items()}
                self._inputs = list(tensors.values())
                self._layers = []
                for name, type_name, ins, outs, floats in rec.layer_specs:
                    out_tensors = []
                    for out, is_float in zip(outs, floats):
                        tensors[out] = Tensor(out, trt.float32 if is_float else trt.int64)
                        out_tensors.append(tensors[out])
                    in_tensors = [tensors.setdefault(i, Tensor(i, trt.float32)) for i in ins]
                    self._layers.append(Layer(name, type_name, in_tensors, out_tensors))

            @property
            def num_layers(self) -> int:
                return len(self._layers)

            def get_layer(self, i):
                return self._layers[i]

            @property
            def num_inputs(self) -> int:
                return len(self._inputs)

            def get_input(self, i):
                return self._inputs[i]

        class OptimizationProfile:
            def set_shape(self, name, min_shape, opt_shape, max_shape) -> None:
                rec.record("profile.set_shape", name, tuple(min_shape), tuple(opt_shape), tuple(max_shape))

        class TimingCache:
            def __init__(self, blob: bytes) -> None:
                self.blob = blob or TIMING_CACHE_MAGIC

            def serialize(self) -> HostMemory:
                return HostMemory(self.blob + b" timings")

        class BuilderConfig:
            def __init__(self) -> None:
                object.__setattr__(self, "_timing_cache", None)
                object.__setattr__(self, "int8_calibrator", None)

            def __setattr__(self, name, value) -> None:
                rec.record("config." + name, value)
                object.__setattr__(self, name, value)

            def set_flag(self, flag) -> None:
                rec.record("config.set_flag", flag.name)

            def clear_flag(self, flag) -> None:
                rec.record("config.clear_flag", flag.name)

            def set_memory_pool_limit(self, pool, size) -> None:
                rec.record("config.set_memory_pool_limit", pool.name, size)

            def add_optimization_profile(self, profile) -> int:
                rec.record("config.add_optimization_profile")
                return 0

            def set_calibration_profile(self, profile) -> None:
                rec.record("config.set_calibration_profile")

            def can_run_on_DLA(self, layer) -> bool:  # noqa: N802 - the binding's name
                return layer.name in rec.dla_layers

            def create_timing_cache(self, blob):
                rec.record("config.create_timing_cache", bytes(blob))
                blob = bytes(blob)
                return TimingCache(blob) if not blob or blob.startswith(TIMING_CACHE_MAGIC) else None  # null: corrupt

            def set_timing_cache(self, cache, ignore_mismatch) -> bool:
                rec.record("config.set_timing_cache", ignore_mismatch)
                ok = rec.timing_cache_matches_device or cache.blob == TIMING_CACHE_MAGIC
                if ok:
                    object.__setattr__(self, "_timing_cache", cache)
                return ok

            def get_timing_cache(self):
                return self._timing_cache

        class Builder:
            def __init__(self, logger) -> None:
                rec.record("Builder", logger)
                self.num_DLA_cores = rec.num_dla_cores
                if rec.major < 11:
                    self.platform_has_fast_fp16 = True

            def create_network(self, flags: int = 0):
                rec.record("Builder.create_network", flags)
                return Network(flags)

            def create_builder_config(self):
                return BuilderConfig()

            def create_optimization_profile(self):
                return OptimizationProfile()

            def build_serialized_network(self, network, config):
                rec.record("Builder.build_serialized_network")
                calibrator = config.int8_calibrator
                if calibrator is not None:
                    rec.record("calibrator.get_batch_size", calibrator.get_batch_size())
                    if calibrator.read_calibration_cache() is None:
                        names = [t.name for t in network._inputs]
                        while True:
                            try:
                                pointers = calibrator.get_batch(names)
                            except Exception as exc:  # the v8.6/v10 trampoline: printed, read as "no more batches"
                                rec.record("calibrator.get_batch raised", exc)
                                pointers = None
                            if pointers is None:
                                break
                            rec.record("calibrator.get_batch", tuple(pointers))
                        if not rec.of("calibrator.get_batch"):
                            return None  # nothing to calibrate on: the build fails without saying why
                        calibrator.write_calibration_cache(b"calibration table")
                if isinstance(rec.build_result, BaseException):
                    raise rec.build_result
                return HostMemory(rec.build_result) if isinstance(rec.build_result, bytes) else rec.build_result

        class OnnxParser:
            def __init__(self, network, logger) -> None:
                rec.record("OnnxParser", logger)
                self.num_errors = 0

            def parse_from_file(self, path: str) -> bool:
                rec.record("OnnxParser.parse_from_file", path)
                return True

        class Runtime:
            def __init__(self, logger) -> None:
                rec.record("Runtime", logger)
                self.num_DLA_cores = rec.num_dla_cores

        trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
        return trt


@dataclass
class Recorded:
    """What one build asked of the stand-in, summarised for assertions."""

    creation_flags: int
    set_flags: list[str] = field(default_factory=list)
    cleared_flags: list[str] = field(default_factory=list)
    precision_layers: list[str] = field(default_factory=list)
    output_type_layers: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, rec: CallRecorder) -> Recorded:
        return cls(
            creation_flags=rec.of("Builder.create_network")[-1][0],
            set_flags=[c[0] for c in rec.of("config.set_flag")],
            cleared_flags=[c[0] for c in rec.of("config.clear_flag")],
            precision_layers=[c[0] for c in rec.of("layer.precision")],
            output_type_layers=sorted({c[0] for c in rec.of("layer.set_output_type")}),
        )


class RecordingContext:
    """A stand-in IExecutionContext for the device frame path: records tensor addresses and the stream each
    execute_async_v3 gets; on CUDA it "runs" output = 2 * input on that stream, reading the input from the tensor
    whose address is bound (``tensors``: data_ptr -> tensor, filled by the test). ``accept_address`` is what
    set_tensor_address returns. Call sequences and stream ordering only, never TensorRT coverage."""

    def __init__(self, tensors: dict, accept_address: bool = True) -> None:
        self.tensors = tensors
        self.accept_address = accept_address
        self.addresses: dict[str, int] = {}
        self.bound: list[tuple[str, int]] = []
        self.streams: list[int] = []

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.bound.append((name, ptr))
        if self.accept_address:
            self.addresses[name] = ptr
        return self.accept_address

    def execute_async_v3(self, stream_handle: int) -> bool:
        import torch

        self.streams.append(stream_handle)
        with torch.cuda.stream(torch.cuda.ExternalStream(stream_handle)):
            torch.cuda._sleep(50_000_000)  # a slow engine: a missing wait shows up as a stale read
            out = self.tensors[self.addresses["output"]]
            torch.mul(self.tensors[self.addresses["input"]], 2, out=out)
        return True
