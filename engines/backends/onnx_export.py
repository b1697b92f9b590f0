"""ONNX export of the deployable graph, shared by the ONNX Runtime and OpenVINO backends."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch

from engines.checkpoint import Checkpoint
from engines.deploy import LabelNet, example_input

OPSET = 18  # the dynamo exporter's native opset; ONNX Runtime 1.17+ and OpenVINO read it


def export_onnx(checkpoint: Checkpoint, size: tuple[int, int], out: Path) -> Path:
    """Write `out` (.onnx): uint8 NHWC frames -> uint8 labels, batch dimension dynamic."""
    model = LabelNet(checkpoint).eval()
    # The exporter narrates every pass on stdout and warns about absent torchvision ops;
    # the caller reports progress itself.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            _export(model, size, out)
    finally:
        registration.setLevel(level)
    return out


def _export(model: LabelNet, size: tuple[int, int], out: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.onnx.export(
        model, (example_input(size, batch=2),), input_names=["frames"],
        output_names=["labels"], dynamic_shapes={"frames": {0: batch}}, dynamo=True,
        opset_version=OPSET, verbose=False, external_data=False)
    program.save(str(out))
