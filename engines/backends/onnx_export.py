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
from orstream.engines.deploy import LabelNet, PromptLabelNet, example_input
from orstream.engines.tpsis_checkpoint import TPSISCheckpoint

OPSET = 18  # the dynamo exporter's native opset; ONNX Runtime 1.17+ and OpenVINO read it


def export_onnx(checkpoint: Checkpoint | TPSISCheckpoint, size: tuple[int, int],
                out: Path) -> Path:
    """Write `out` (.onnx): uint8 NHWC frames -> uint8 labels, batch dimension dynamic.
    TP-SIS: the prompt state is an input too, its number of prompts dynamic."""
    if isinstance(checkpoint, TPSISCheckpoint):
        return _export_tpsis(checkpoint, size, out)
    with _quiet():
        batch = torch.export.Dim("batch", min=1, max=64)
    return export_module(LabelNet(checkpoint).eval(), (example_input(size, batch=2),),
                         ["frames"], ["labels"], out, dynamic_shapes={"frames": {0: batch}})


def _export_tpsis(checkpoint: TPSISCheckpoint, size: tuple[int, int], out: Path) -> Path:
    from orstream.engines.tpsis_engine import (
        ENGINE_STATE,
        FRAMES_INPUT,
        MAX_PROMPTS,
        example_inputs,
    )

    # Three prompts and two frames: both above 1 in the example, so the exporter keeps the
    # axes symbolic instead of specialising them.
    state = example_inputs(checkpoint, ["Bipolar Forceps", "scissors", "needle holder"])
    with _quiet():
        batch = torch.export.Dim("batch", min=1, max=64)
        prompts = torch.export.Dim("prompts", min=1, max=MAX_PROMPTS)
    dynamic = {FRAMES_INPUT: {0: batch}, "keys": {1: prompts}, "values": {1: prompts},
               "key_bias": {0: prompts}, "fine_kernel": {0: prompts},
               "coarse_kernel": {0: prompts}, "bias": {0: prompts}}
    args = (example_input(size, batch=2),
            *(torch.from_numpy(state[name]) for name in ENGINE_STATE))
    return export_module(PromptLabelNet(checkpoint).eval(), args,
                         [FRAMES_INPUT, *ENGINE_STATE], ["labels"], out, dynamic_shapes=dynamic)


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
