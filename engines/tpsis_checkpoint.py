"""TP-SIS checkpoints: weights plus what is needed to use them, loaded with weights_only=True.

Like engines/checkpoint.py's U-Net files: a plain dict of tensors and primitives holding the
model name and config, the class table and the prompts each class was trained with, the input
size and normalisation, and the metrics; a file of another format or model fails with a
one-line CheckpointError.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orstream.common.classes import CLASSES
from orstream.engines.checkpoint import (
    DEFAULT_MEAN,
    DEFAULT_STD,
    WEIGHTS_DIR,
    CheckpointError,
    half_weights,
    read_raw,
    write_atomic,
)
from orstream.engines.registry import tpsis_config
from orstream.engines.tpsis_config import TPSISConfig

if TYPE_CHECKING:
    import torch

    from orstream.engines.checkpoint import Checkpoint
    from orstream.engines.tpsis import TPSIS

FORMAT = "orstream.tpsis/1"
SHIPPED = WEIGHTS_DIR / "tpsis_xs.pt"


@dataclass
class TPSISCheckpoint:
    model_name: str
    config: TPSISConfig
    classes: tuple[str, ...]  # the types table: label id i is classes[i]
    prompts: dict[str, list[str]]  # class name -> the prompts it was trained with
    input_size: tuple[int, int]  # (H, W)
    state_dict: dict[str, torch.Tensor]
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # training state, provenance

    task = "types"

    @property
    def has_weights(self) -> bool:
        return bool(self.state_dict)

    def build(self) -> TPSIS:
        from orstream.engines.tpsis import TPSIS

        model = TPSIS(self.config)
        model.load_state_dict(self.state_dict)  # fp16 shipped tensors become fp32 here
        return model.eval()

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "model_name": self.model_name, "config": asdict(self.config),
                "classes": list(self.classes), "prompts": self.prompts,
                "input_size": list(self.input_size), "mean": list(self.mean),
                "std": list(self.std), "metrics": self.metrics, "state_dict": self.state_dict,
                **self.extra}


def is_tpsis(path: Path | str) -> bool:
    """Whether `path` is a readable TP-SIS checkpoint (False for U-Nets and foreign files)."""
    try:
        read_raw(path, FORMAT, "TP-SIS")
    except CheckpointError:
        return False
    return True


def save(ckpt: TPSISCheckpoint, path: Path | str) -> Path:
    return write_atomic(ckpt.to_dict(), path)


def load(path: Path | str, model_name: str | None = None) -> TPSISCheckpoint:
    path = Path(path)
    return _checked(path, read_raw(path, FORMAT, "TP-SIS"), model_name)


def load_any(path: Path | str) -> Checkpoint | TPSISCheckpoint:
    """A U-Net or a TP-SIS checkpoint, whichever `path` holds (read once), checked as
    engines.checkpoint.load and `load` check them."""
    from orstream.engines.checkpoint import FORMAT as UNET_FORMAT
    from orstream.engines.checkpoint import load as load_unet

    path = Path(path)
    try:
        raw = read_raw(path, FORMAT, "TP-SIS")
    except CheckpointError as exc:
        if f"{UNET_FORMAT!r}" not in str(exc):
            raise
        return load_unet(path)
    return _checked(path, raw, None)


def _checked(path: Path, raw: dict[str, Any], model_name: str | None) -> TPSISCheckpoint:
    if model_name is not None and raw["model_name"] != model_name:
        raise CheckpointError(f"checkpoint {path} holds model {raw['model_name']!r} but "
                              f"{model_name!r} was asked for")
    config = TPSISConfig.from_dict(raw["config"])
    try:
        expected = tpsis_config(raw["model_name"])
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    if config != expected:
        raise CheckpointError(f"checkpoint {path}: model config {config} does not match the "
                              f"registry's {raw['model_name']} {expected}")
    classes = tuple(raw["classes"])
    if classes != CLASSES["types"]:
        raise CheckpointError(f"checkpoint {path} has class table {list(classes)}, not the "
                              "types table")
    known = {"format", "model_name", "config", "classes", "prompts", "input_size", "mean",
             "std", "metrics", "state_dict"}
    return TPSISCheckpoint(raw["model_name"], config, classes,
                           {k: list(v) for k, v in raw["prompts"].items()},
                           tuple(raw["input_size"]), raw.get("state_dict", {}),
                           tuple(raw["mean"]), tuple(raw["std"]), raw.get("metrics", {}),
                           {k: v for k, v in raw.items() if k not in known})


def publish(src: Path | str, dst: Path | str) -> Path:
    """Ship a trained checkpoint: fp16 weights, training state dropped, config and metrics
    kept (as engines.checkpoint.publish does for U-Nets)."""
    c = load(src)
    keep = {k: v for k, v in c.extra.items() if k == "train_config"}
    return save(TPSISCheckpoint(c.model_name, c.config, c.classes, c.prompts, c.input_size,
                                half_weights(c.state_dict), c.mean, c.std, c.metrics, keep),
                dst)
