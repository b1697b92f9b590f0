"""VLM checkpoints: weights, config, tokenizer and metrics in one plain dict, loaded safely.

As for the U-Net (engines/checkpoint.py), everything is tensors and primitives, so
`torch.load(weights_only=True)` reads it without unpickling code. The tokenizer travels as its
word list: weights without the vocabulary they were trained with are meaningless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from orstream.engines.checkpoint import (
    DEFAULT_MEAN,
    DEFAULT_STD,
    WEIGHTS_DIR,
    CheckpointError,
    half_weights,
    read_raw,
    write_atomic,
)
from orstream.engines.vlm.model import VLM, VLMConfig, model_config
from orstream.engines.vlm.tokenizer import Tokenizer

FORMAT = "orstream.vlm/1"
SHIPPED_MODEL = "vlm_tiny"


@dataclass
class VLMCheckpoint:
    model_name: str
    config: VLMConfig
    tokenizer: Tokenizer
    state_dict: dict[str, torch.Tensor]
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # training state, provenance

    @property
    def input_size(self) -> tuple[int, int]:
        return self.config.image_size

    def build(self) -> VLM:
        model = VLM(self.config)
        model.load_state_dict(self.state_dict)  # copies into fp32 parameters, whatever stored
        return model.eval()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model_name": self.model_name,
            "config": self.config.to_dict(),
            "tokenizer": self.tokenizer.to_dict(),
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "metrics": self.metrics,
            "state_dict": self.state_dict,
            **self.extra,
        }


def save(ckpt: VLMCheckpoint, path: Path | str) -> Path:
    return write_atomic(ckpt.to_dict(), path)


def load(path: Path | str, model_name: str | None = None) -> VLMCheckpoint:
    """Load and check a VLM checkpoint; `model_name`, when given, must match it."""
    path = Path(path)
    raw = read_raw(path, FORMAT, "VLM")
    if model_name is not None and raw["model_name"] != model_name:
        raise CheckpointError(f"checkpoint {path} holds model {raw['model_name']!r} but "
                              f"{model_name!r} was asked for")
    try:
        tokenizer = Tokenizer.from_dict(raw["tokenizer"])
        config = VLMConfig.from_dict(raw["config"])
    except (KeyError, TypeError, ValueError, AssertionError) as exc:
        raise CheckpointError(f"checkpoint {path}: bad config or tokenizer ({exc})") from exc
    if config.decoder.vocab_size != len(tokenizer):
        raise CheckpointError(f"checkpoint {path}: decoder vocabulary {config.decoder.vocab_size}"
                              f" but the tokenizer has {len(tokenizer)} words")
    expected = model_config(raw["model_name"], len(tokenizer))
    if config != expected:
        raise CheckpointError(f"checkpoint {path}: model config {config} does not match the "
                              f"registry's {raw['model_name']} {expected}")
    known = {"format", "model_name", "config", "tokenizer", "input_size", "mean", "std",
             "metrics", "state_dict"}
    return VLMCheckpoint(
        model_name=raw["model_name"],
        config=config,
        tokenizer=tokenizer,
        state_dict=raw["state_dict"],
        mean=tuple(raw["mean"]),
        std=tuple(raw["std"]),
        metrics=raw.get("metrics", {}),
        extra={k: v for k, v in raw.items() if k not in known},
    )


def publish(src: Path | str, dst: Path | str) -> Path:
    """Copy a trained checkpoint for shipping: weights in fp16 (rebuilt in fp32 on load),
    training state dropped, metrics and the training config kept for provenance."""
    ck = load(src)
    half = half_weights(ck.state_dict)
    keep = {k: v for k, v in ck.extra.items() if k == "train_config"}
    return save(VLMCheckpoint(ck.model_name, ck.config, ck.tokenizer, half, ck.mean, ck.std,
                              ck.metrics, keep), dst)


def shipped(model_name: str = SHIPPED_MODEL) -> Path:
    """Path of the VLM weights shipped with orstream."""
    return WEIGHTS_DIR / f"{model_name}.pt"
