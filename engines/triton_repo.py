"""A Triton Inference Server model repository for a U-Net: `orstream export --backend triton`.

    OUT/<model>/config.pbtxt       uint8 NHWC `frames` in, uint8 `labels` out, dynamic batching
    OUT/<model>/V/model.onnx       the deployable graph (engines/deploy.py) as ONNX
    OUT/<model>/V/model.py         runtime python only: the Python-backend model

V, the version, comes from the checkpoint's SHA-256 (weights_version).

The graph is the one the local onnxruntime backend runs, taken from (or built into) the
engine cache, so the server computes exactly what a local engine does. The runtimes:
- python: Triton's Python backend running ONNX Runtime (or OpenVINO) on the CPU. The one the
  `tritonserver` in the nvidia-pytriton wheel serves (the wheel has no other backend), so it
  is what `orstream serve --triton`, the tests and benchmarks/triton.py run.
- onnxruntime: the official container's native ONNX Runtime backend, on CPU or GPU; with
  `tensorrt`, ONNX Runtime hands the graph to TensorRT on the GPU (fp16 or fp32).
- openvino: the official container's OpenVINO backend, on the CPU.
The configs carry the checkpoint's hash, task and classes as parameters: a client checks them
against its own segment.weights, so a room never draws one model's labels with another's names.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from orstream.common.errors import UsageError
from orstream.common.sizes import format_hw
from orstream.engines.cache import file_sha256

RUNTIMES = ("python", "onnxruntime", "tensorrt", "openvino")
DEFAULT_MODEL = "orstream_unet"
FRAMES, LABELS = "frames", "labels"  # the graph's tensor names (engines/backends/onnx_export)
MODEL_PY = Path(__file__).with_name("triton_python_model.py")


class TritonRepoError(UsageError):
    """An export request that cannot make a working repository; says which option to change."""


@dataclass(frozen=True)
class TritonModelOptions:
    """How Triton serves the model (the config.pbtxt beyond the tensors)."""

    runtime: str = "python"
    name: str = DEFAULT_MODEL
    max_batch: int = 8  # largest batch the dynamic batcher forms (several rooms' frames)
    # How long the batcher holds a request for others to join. 0: a lone room never waits
    # (measured: 1000 us cost a single room 1 ms of queueing, benchmarks/reports triton-spike)
    queue_delay_us: int = 0
    instances: int = 1  # model instances (each runs batches on its own)
    threads: int = 0  # inference threads per instance (python runtime); 0: the runtime's choice
    gpu: bool = False  # onnxruntime: KIND_GPU instances (tensorrt always runs on the GPU)
    precision: str = "fp32"  # tensorrt: fp16 or fp32; the other runtimes: fp32

    def check(self) -> None:
        if self.runtime not in RUNTIMES:
            raise TritonRepoError(f"--triton-runtime {self.runtime!r}: choose one of "
                                  f"{', '.join(RUNTIMES)}")
        if not self.name or not all(c.isalnum() or c in "_-" for c in self.name):
            raise TritonRepoError(f"--model-name {self.name!r}: use letters, digits, _ and -")
        if not 1 <= self.max_batch <= 64:
            raise TritonRepoError(f"--max-batch {self.max_batch}: 1 to 64 (the graph's batch "
                                  f"axis goes to 64)")
        if self.instances < 1 or self.threads < 0 or self.queue_delay_us < 0:
            raise TritonRepoError("--instances must be >= 1, --threads and --queue-delay-us "
                                  ">= 0")
        served = ("fp16", "fp32") if self.runtime == "tensorrt" else ("fp32",)
        if self.precision not in served:
            raise TritonRepoError(f"precision {self.precision} with --triton-runtime "
                                  f"{self.runtime}: choose {' or '.join(served)} (fp16 is "
                                  f"TensorRT's, on the GPU)")
        if self.gpu and self.runtime in ("python", "openvino"):
            raise TritonRepoError(f"--triton-runtime {self.runtime} runs on the CPU: use "
                                  f"onnxruntime or tensorrt for a GPU")


def weights_version(weights_sha256: str) -> int:
    """The model version a checkpoint is exported as: the first 7 hex digits of its SHA-256
    as a number (1 to 2^28). Every inference response names the version that computed it, so
    a room checks on each frame that the server still runs its weights, even across a
    server restart it never noticed (over plain gRPC nothing else would tell it)."""
    return int(weights_sha256[:7], 16) or 1


def config_pbtxt(options: TritonModelOptions, size: tuple[int, int],
                 meta: dict[str, str]) -> str:
    """The model's config.pbtxt (Triton's ModelConfig in protobuf text format)."""
    h, w = size
    backend = {"python": "python", "onnxruntime": "onnxruntime", "tensorrt": "onnxruntime",
               "openvino": "openvino"}[options.runtime]
    kind = "KIND_GPU" if options.gpu or options.runtime == "tensorrt" else "KIND_CPU"
    lines = [f'name: "{options.name}"', f'backend: "{backend}"']
    if backend != "python":
        lines.append('default_model_filename: "model.onnx"')
    lines += [
        f"max_batch_size: {options.max_batch}",
        f'input [ {{ name: "{FRAMES}" data_type: TYPE_UINT8 dims: [ {h}, {w}, 3 ] }} ]',
        f'output [ {{ name: "{LABELS}" data_type: TYPE_UINT8 dims: [ {h}, {w} ] }} ]',
        f"dynamic_batching {{ max_queue_delay_microseconds: {options.queue_delay_us} }}",
        f"instance_group [ {{ kind: {kind} count: {options.instances} }} ]",
    ]
    if options.runtime == "tensorrt":
        mode = options.precision.upper()
        lines.append('optimization { execution_accelerators { gpu_execution_accelerator: '
                     f'[ {{ name: "tensorrt" parameters {{ key: "precision_mode" '
                     f'value: "{mode}" }} }} ] }} }}')
    params = dict(meta)
    if options.runtime == "python":
        params |= {"runtime": "onnxruntime", "threads": str(options.threads)}
    for key, value in params.items():
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


def export_triton_repo(weights: Path, out: Path, options: TritonModelOptions,
                       size: tuple[int, int] | None = None, cache: Path | None = None) -> Path:
    """Write (or replace) `out/<name>/` for the U-Net checkpoint `weights`; returns that
    folder. Other models already in `out` are left alone: one repository can serve many."""
    from orstream.engines import checkpoint as ckpt
    from orstream.engines.cache import EngineCache
    from orstream.engines.export import EngineSpec, export_engine

    options.check()
    try:
        info = ckpt.load_info(weights, EngineCache(cache).checkpoint_index)
    except ckpt.CheckpointError as exc:
        raise TritonRepoError(f"--weights {weights}: {exc} (Triton export serves U-Net "
                              f"checkpoints; TP-SIS runs in the pipeline)") from None
    entry = export_engine(EngineSpec(Path(weights), "onnxruntime", "fp32", size, "cpu",
                                     cache=cache))
    size = tuple(entry.meta["key"]["input_size"])  # type: ignore[assignment]
    folder = Path(out) / options.name
    if folder.exists():
        shutil.rmtree(folder)  # a stale model.py or version folder would be served too
    sha = file_sha256(Path(weights))
    version = folder / str(weights_version(sha))
    version.mkdir(parents=True)
    shutil.copyfile(entry.engine_file, version / "model.onnx")
    if options.runtime == "python":
        shutil.copyfile(MODEL_PY, version / "model.py")
    meta = {"orstream_weights_sha256": sha, "orstream_task": info.task,
            "orstream_classes": ",".join(info.classes)}
    (folder / "config.pbtxt").write_text(config_pbtxt(options, size, meta))
    logger.info("Triton model {} ({} runtime, {}, batch <= {}) -> {}", options.name,
                options.runtime, format_hw(size), options.max_batch, folder)
    return folder


__all__ = ["DEFAULT_MODEL", "RUNTIMES", "TritonModelOptions", "TritonRepoError",
           "config_pbtxt", "export_triton_repo", "weights_version"]
