"""Inference backends behind one interface (engines/backends/base.py), chosen by name.

This registry is the one list of backend names: the config's `segment.backend`, the CLI's
`--backend` choices and the `auto` order all read it.

Each backend's module is imported when the backend is first asked for: the torch-based ones
import torch, which costs seconds, and a pipeline running a cached OpenVINO engine never needs
it."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from orstream.engines.backends.base import BackendError, Engine

_MODULES = {
    "torch": ("orstream.engines.backends.torch_backend", "TorchSegmenter"),
    "compile": ("orstream.engines.backends.compile_backend", "CompiledEngine"),
    "onnxruntime": ("orstream.engines.backends.onnxruntime_backend", "OnnxRuntimeEngine"),
    "openvino": ("orstream.engines.backends.openvino_backend", "OpenVinoEngine"),
    "tensorrt": ("orstream.engines.backends.tensorrt_backend", "TensorRtEngine"),
}


# Fastest first, as benchmarks/engines.py measured them (reports in benchmarks/reports/):
# what `backend: auto` walks when the config gives no list of its own.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cpu": ("openvino", "onnxruntime", "compile", "torch"),
    "cuda": ("tensorrt", "compile", "torch"),
}
# The backends `orstream calibrate build` makes gated INT8 engines for, and the device each
# quantises for.
INT8_DEVICE: dict[str, str] = {"onnxruntime": "cpu", "openvino": "cpu", "tensorrt": "cuda"}
assert set(INT8_DEVICE) <= set(_MODULES), INT8_DEVICE
assert all(n in _MODULES for names in AUTO_ORDER.values() for n in names), AUTO_ORDER


class _Registry(Mapping[str, type[Engine]]):
    """name -> backend class, importing the class's module on first access."""

    def __getitem__(self, name: str) -> type[Engine]:
        module, attr = _MODULES[name]
        cls = getattr(importlib.import_module(module), attr)
        assert cls.name == name, (name, cls.name)
        return cls

    def __contains__(self, name: object) -> bool:  # without importing the module
        return name in _MODULES

    def __iter__(self) -> Iterator[str]:
        return iter(_MODULES)

    def __len__(self) -> int:
        return len(_MODULES)


BACKENDS: Mapping[str, type[Engine]] = _Registry()

NAMES: tuple[str, ...] = tuple(_MODULES)  # every backend, for choices and validation
# The remote backend: a Triton Inference Server holds the model, so nothing is built or cached
# here and it is not in the registry (engines/backends/triton_backend.py, segment.triton).
TRITON = "triton"

__all__ = ["AUTO_ORDER", "BACKENDS", "INT8_DEVICE", "NAMES", "TRITON", "BackendError", "Engine",
           "backend_class"]


def backend_class(name: str) -> type[Engine]:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}: choose one of {', '.join(NAMES)}")
    return BACKENDS[name]
