"""PyTorch backend: CPU fp32, or CUDA fp16 with the linear attention kept in fp32."""

from __future__ import annotations

import numpy as np
import torch

from evit_ros.network.variants import get_variant
from evit_ros.network.weights import load_model
from evit_ros.runtime.base import Backend, BackendConfig
from evit_ros.runtime.devices import torch_device
from evit_ros.runtime.options import option


def cuda_available() -> bool:
    return torch.cuda.is_available()


class TorchBackend(Backend):
    name = "torch"
    device_frames = True

    def __init__(self, config: BackendConfig, model: torch.nn.Module | None = None) -> None:
        super().__init__(config)
        variant = get_variant(config.model)
        if model is None:
            model, self.checkpoint_sha256 = load_model(variant, config.weights)
        self.device = torch_device(config.device, "cuda" if torch.cuda.is_available() else "cpu")
        config.device = str(self.device)
        if config.precision not in ("fp32", "fp16"):
            raise ValueError(f"torch backend supports fp32 and fp16, not {config.precision}")
        if config.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("torch fp16 needs a CUDA device; use fp32 on the CPU")
        if config.num_threads and self.device.type == "cpu":
            torch.set_num_threads(config.num_threads)
        self.dtype = torch.float16 if config.precision == "fp16" else torch.float32
        self.model = model.to(self.device, self.dtype).eval()
        if option(config.options, "compile"):
            # Opt-in: inductor needs a C++ compiler (CPU) or Triton (CUDA) and adds a warm-up compile.
            self.model = torch.compile(self.model, dynamic=False)
        self._graph = None
        if self.device.type == "cuda" and option(config.options, "cuda_graphs"):
            self._capture_graph()
        self.dynamic_batch = self._graph is None  # a captured graph has the one input shape it was captured with

    def _capture_graph(self) -> None:
        # Fixed input shape: a captured CUDA graph removes per-layer launch overhead, which
        # dominates the small B models at batch 1.
        self._static_in = torch.zeros(self.input_shape, device=self.device, dtype=self.dtype)
        # Streams and the capture belong to the configured device, not whichever one is current.
        with torch.cuda.device(self.device):
            stream = torch.cuda.Stream(device=self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream), torch.inference_mode():
                for _ in range(3):
                    self.model(self._static_in)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph), torch.inference_mode():
                self._static_out = self.model(self._static_in)

    @torch.inference_mode()
    def infer(self, batch: np.ndarray) -> np.ndarray:
        self._check_batch(batch)
        x = torch.from_numpy(batch)
        if self._graph is not None:
            self._static_in.copy_(x.to(self.device, non_blocking=True))
            with torch.cuda.device(self.device):
                self._graph.replay()
            out = self._static_out
        else:
            out = self.model(x.to(self.device, self.dtype))
        return out.float().cpu().numpy()

    @torch.inference_mode()
    def infer_device(self, batch: torch.Tensor) -> torch.Tensor:
        """The network on a batch already on ``self.device`` (the device frame path): no host round trip."""
        if batch.dtype != torch.float32 or batch.dim() != 4 or tuple(batch.shape[1:]) != self.input_shape[1:]:
            raise ValueError(
                f"torch backend expects float32 {self.input_shape}, got {batch.dtype} {tuple(batch.shape)}"
            )
        if self._graph is not None:
            if batch.shape[0] != self._static_in.shape[0]:
                # copy_ would broadcast one frame into every slot of the captured input, silently.
                raise ValueError(
                    f"torch backend has a static batch of {self._static_in.shape[0]} frames (a captured CUDA graph), "
                    f"got {batch.shape[0]}: pad the batch (Segmenter does) or turn cuda_graphs off"
                )
            self._static_in.copy_(batch)
            with torch.cuda.device(self.device):
                self._graph.replay()
            return self._static_out
        return self.model(batch.to(self.device, self.dtype))

    def describe(self) -> dict[str, str]:
        info = super().describe()
        info["engine"] = "cuda-graph" if self._graph is not None else "eager"
        return info
