"""ONNX export of the deployable graph, shared by the ONNX Runtime and OpenVINO backends."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orstream.engines.checkpoint import Checkpoint
from orstream.engines.deploy import LabelNet, example_input

OPSET = 18  # the dynamo exporter's native opset; ONNX Runtime 1.17+ and OpenVINO read it


def export_onnx(checkpoint: Checkpoint, size: tuple[int, int], out: Path) -> Path:
    """Write `out` (.onnx): uint8 NHWC frames -> uint8 labels, batch dimension dynamic."""
    with _quiet():
        batch = torch.export.Dim("batch", min=1, max=64)
    return export_module(LabelNet(checkpoint).eval(), (example_input(size, batch=2),),
                         ["frames"], ["labels"], out, dynamic_shapes={"frames": {0: batch}})


def export_module(model: nn.Module, args: tuple[torch.Tensor, ...], input_names: Sequence[str],
                  output_names: Sequence[str], out: Path,
                  dynamic_shapes: dict[str, Any] | None = None) -> Path:
    """Write `out` (.onnx) for `model(*args)`; shapes are static except `dynamic_shapes`."""
    with _quiet():
        program = torch.onnx.export(
            model.eval(), args, input_names=list(input_names), output_names=list(output_names),
            dynamic_shapes=dynamic_shapes, dynamo=True, opset_version=OPSET, verbose=False,
            external_data=False)
        program.save(str(out))
    return out


@contextlib.contextmanager
def _quiet():
    # The exporter narrates every pass on stdout and warns about absent torchvision ops;
    # the caller reports progress itself.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        registration.setLevel(level)
