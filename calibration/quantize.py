"""Static INT8 post-training quantisation of the deployable graph with ONNX Runtime's tools:
QDQ format (QuantizeLinear/DequantizeLinear pairs around each quantised op, which both ONNX
Runtime and OpenVINO execute as int8 kernels), per-channel int8 weights, uint8 activations
with ranges from the calibration frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from loguru import logger
from tqdm import tqdm


def quantize_onnx(float_onnx: Path, frames: np.ndarray, out: Path,
                  method: str = "minmax", weight_bits: int = 8) -> Path:
    """Write the INT8 QDQ model for `float_onnx` calibrated on `frames` (N, H, W, 3) uint8.

    weight_bits 7 keeps weights in [-64, 64] (ONNX Runtime's reduce_range) for CPUs whose int8
    kernels sum in saturating 16-bit registers (engines.backends.base.needs_reduced_int8_range).
    """
    if weight_bits not in (7, 8):
        raise ValueError(f"weight_bits {weight_bits}: 7 or 8")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self._bar = tqdm(total=len(frames), desc="calibrating", unit="frame")
            self._items = iter(frames)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._items, None)
            if item is None:
                self._bar.close()
                return None
            self._bar.update()
            return {"frames": item[None]}

    prepared = out.with_name(out.stem + ".prepared.onnx")
    # Shape inference and graph fusions first (batch norm into conv): the quantiser then
    # sees the graph the runtime will execute, not the exporter's.
    quant_pre_process(str(float_onnx), str(prepared), skip_symbolic_shape=True)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    logger.info("quantising to INT8 (QDQ, per-channel {}-bit weights, {} ranges) on {} frames",
                weight_bits, method, len(frames))
    quantize_static(str(prepared), str(out), Frames(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=methods[method],
                    reduce_range=weight_bits == 7)
    prepared.unlink(missing_ok=True)
    return out
