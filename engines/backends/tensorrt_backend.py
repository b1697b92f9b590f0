"""Torch-TensorRT's dynamo path on CUDA: fp16 (and fp32); int8 engines come from the
calibration package (NVIDIA Model Optimizer, then this compiler). Optional extra:
`pip install 'orstream[tensorrt]'`. The cached engine is Torch-TensorRT's serialized
ExportedProgram, tied to the GPU and TensorRT version through the cache key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from orstream.engines.backends.base import BackendError, Engine, refuse_precision, require_cuda
from orstream.engines.checkpoint import Checkpoint
from orstream.engines.deploy import LabelNet, example_input

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def _trt():
    try:
        import torch_tensorrt
    except ImportError as exc:
        raise BackendError("backend tensorrt asked for, but torch_tensorrt is not installed: "
                           "pip install 'orstream[tensorrt]' on a CUDA machine, or use backend "
                           "compile or torch") from exc
    return torch_tensorrt


class TensorRtEngine(Engine):
    name = "tensorrt"
    artifact = "model.ep"
    devices = ("cuda",)

    @classmethod
    def check(cls, precision: str, device: str) -> None:
        if device != "cuda":
            raise BackendError(f"backend tensorrt runs on cuda only, not {device}: use backend "
                               f"openvino, onnxruntime, compile or torch on the cpu")
        require_cuda(cls.name)
        _trt()
        refuse_precision(cls.name, precision, device, ("fp16", "fp32", "int8"))

    @classmethod
    def native_precisions(cls, device: str) -> tuple[str, ...]:
        return ("fp16", "fp32")

    @classmethod
    def versions(cls) -> dict[str, str]:
        trt = _trt()
        return {"torch_tensorrt": trt.__version__, "torch": torch.__version__,
                "cuda": str(torch.version.cuda)}

    @classmethod
    def build(cls, checkpoint: Checkpoint, size: tuple[int, int], precision: str, device: str,
              out: Path) -> None:
        if precision == "int8":
            raise BackendError("int8 tensorrt engines come from `orstream calibrate build`")
        trt = _trt()
        model = LabelNet(checkpoint, _DTYPES[precision]).to("cuda").eval()
        example = example_input(size, batch=1, device="cuda")
        with torch.inference_mode():
            program = torch.export.export(model, (example,))
            compiled = trt.dynamo.compile(program, inputs=[example],
                                          enabled_precisions={_DTYPES[precision]},
                                          min_block_size=1)
            trt.save(compiled, str(out), inputs=[example])

    @classmethod
    def build_int8(cls, checkpoint: Checkpoint, size: tuple[int, int], frames: np.ndarray,
                   out: Path) -> None:
        """INT8 through NVIDIA Model Optimizer: fake-quantise the convolutions, calibrate their
        ranges on `frames` (N, H, W, 3) uint8, then let Torch-TensorRT turn the quantise /
        dequantise pairs into INT8 layers. (TensorRT 10 removed the old calibrator classes,
        so this is the supported way.)"""
        trt = _trt()
        try:
            import modelopt.torch.quantization as mtq
            from modelopt.torch.quantization.utils import export_torch_mode
        except ImportError as exc:
            raise BackendError("INT8 TensorRT needs NVIDIA Model Optimizer: pip install "
                               "nvidia-modelopt") from exc
        model = LabelNet(checkpoint).to("cuda").eval()

        def forward_loop(m: torch.nn.Module) -> None:
            with torch.no_grad():
                for frame in frames:
                    m(torch.from_numpy(frame[None]).to("cuda"))

        mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop=forward_loop)
        example = example_input(size, batch=1, device="cuda")
        with torch.no_grad(), export_torch_mode():
            program = torch.export.export(model, (example,))
            compiled = trt.dynamo.compile(program, inputs=[example],
                                          enabled_precisions={torch.int8}, min_block_size=1)
            trt.save(compiled, str(out), inputs=[example])

    def __init__(self, artifact: Path, size: tuple[int, int], precision: str,
                 device: str = "cuda", threads: int | None = None) -> None:
        super().__init__(artifact, size, precision, device, threads)
        _trt()  # registers TensorRT's ops before the program is deserialised
        self.module = torch.export.load(str(artifact)).module()
        self._pinned = torch.empty((1, *self.input_size, 3), dtype=torch.uint8).pin_memory()

    @torch.inference_mode()
    def run(self, frames: np.ndarray) -> np.ndarray:
        outputs = []
        for frame in frames:  # the engine is built for batch 1, the live path
            self._pinned.copy_(torch.from_numpy(frame[None]))
            x = self._pinned.to("cuda", non_blocking=True)
            outputs.append(self.module(x))
        return torch.cat(outputs).cpu().numpy()

    @torch.inference_mode()
    def run_tensor(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 on the GPU -> (N, H, W) uint8 there."""
        return torch.cat([self.module(f[None]) for f in frames])
