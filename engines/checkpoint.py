"""Checkpoints: weights plus everything needed to use them correctly, loaded safely.

A checkpoint is a plain dict of tensors and primitives, so `torch.load(weights_only=True)`
reads it without unpickling arbitrary objects. It carries the model name and config, the
task and class table, the input size and normalisation it was trained with, and its metrics,
so a caller asking for the wrong task or model gets a clear error instead of a shape trace.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orstream.common.classes import CLASSES, Task
from orstream.common.errors import OrstreamError
from orstream.engines.registry import model_config
from orstream.engines.unet_config import UNetConfig

if TYPE_CHECKING:  # torch is imported where tensors are handled: it costs seconds at start-up
    import torch

    from orstream.engines.unet import UNet

FORMAT = "orstream.unet/1"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# ImageNet statistics: the usual choice, and what TernausNet normalised EndoVis frames with.
DEFAULT_MEAN = (0.485, 0.456, 0.406)
DEFAULT_STD = (0.229, 0.224, 0.225)


def weights_path(value: str | Path) -> Path:
    """`value` as given (relative to the working folder), else relative to the orstream package,
    so that `engines/weights/unet_xs_types.pt`, as the README and configs write it, names the
    shipped weights from any folder and in an installed wheel too."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    packaged = WEIGHTS_DIR.parents[1] / path
    if not path.is_absolute() and packaged.is_file():
        return packaged
    shipped = ", ".join(sorted(p.name for p in WEIGHTS_DIR.glob("*.pt")))
    raise CheckpointError(f"weights file {value} does not exist (the shipped weights are in "
                          f"{WEIGHTS_DIR}: {shipped})")


class CheckpointError(OrstreamError, ValueError):
    """A checkpoint that is unreadable, or not the model/task that was asked for."""


@dataclass
class Checkpoint:
    model_name: str
    config: UNetConfig
    task: Task
    classes: tuple[str, ...]
    input_size: tuple[int, int]  # (H, W) the model was trained at
    state_dict: dict[str, torch.Tensor]  # empty when loaded by load_info (metadata only)
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # training state, provenance

    @property
    def has_weights(self) -> bool:
        return bool(self.state_dict)

    def build(self) -> UNet:
        from orstream.engines.unet import UNet

        if not self.has_weights:
            raise CheckpointError("this checkpoint was read for its metadata only: load it "
                                  "with engines.checkpoint.load to build the model")
        model = UNet(self.config)
        model.load_state_dict(self.state_dict)  # copies into fp32 parameters, whatever stored
        return model.eval()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model_name": self.model_name,
            "config": asdict(self.config),
            "task": self.task,
            "classes": list(self.classes),
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "metrics": self.metrics,
            "state_dict": self.state_dict,
            **self.extra,
        }


def write_atomic(payload: dict[str, Any], path: Path | str) -> Path:
    """torch.save through a temporary file: a crash mid-write never leaves a truncated
    checkpoint behind."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_raw(path: Path | str, fmt: str, what: str) -> dict[str, Any]:
    """The checkpoint's dict, loaded with weights_only=True, or CheckpointError saying why
    not (missing, unreadable, or not of format `fmt`: `what` names the expected kind)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    import torch

    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or foreign file
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0][:200]})") from exc
    if not isinstance(raw, dict) or raw.get("format") != fmt:
        found = raw.get("format") if isinstance(raw, dict) else type(raw)
        raise CheckpointError(f"{path} is not an orstream {what} checkpoint (format "
                              f"{found!r}, expected {fmt!r})")
    return raw


def half_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating-point tensors in fp16 for shipping (half the bytes; rebuilt in fp32 on load)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state_dict.items()}


def save(ckpt: Checkpoint, path: Path) -> Path:
    return write_atomic(ckpt.to_dict(), path)


def load(path: Path | str, task: str | None = None, model_name: str | None = None) -> Checkpoint:
    """Load and check a checkpoint; `task`/`model_name`, when given, must match it."""
    path = Path(path)
    return _checked(path, read_raw(path, FORMAT, "U-Net"), task, model_name)


def _checked(path: Path, raw: dict[str, Any], task: str | None,
             model_name: str | None) -> Checkpoint:
    ck_task = raw["task"]
    if task is not None and ck_task != task:
        raise CheckpointError(f"checkpoint {path} segments task {ck_task!r} but {task!r} was "
                              f"asked for: pass a {task} checkpoint or set the task to {ck_task}")
    if model_name is not None and raw["model_name"] != model_name:
        raise CheckpointError(f"checkpoint {path} holds model {raw['model_name']!r} but "
                              f"{model_name!r} was asked for")
    classes = tuple(raw["classes"])
    if classes != CLASSES[ck_task]:
        raise CheckpointError(f"checkpoint {path} has class table {list(classes)} which is not "
                              f"the {ck_task} table {list(CLASSES[ck_task])}")
    config = UNetConfig(**raw["config"])
    expected = model_config(raw["model_name"], len(classes))
    if config != expected:
        raise CheckpointError(f"checkpoint {path}: model config {config} does not match the "
                              f"registry's {raw['model_name']} {expected}")
    known = {"format", "model_name", "config", "task", "classes", "input_size", "mean", "std",
             "metrics", "state_dict"}
    return Checkpoint(
        model_name=raw["model_name"],
        config=config,
        task=ck_task,
        classes=classes,
        input_size=tuple(raw["input_size"]),
        state_dict=raw.get("state_dict", {}),
        mean=tuple(raw["mean"]),
        std=tuple(raw["std"]),
        metrics=raw.get("metrics", {}),
        extra={k: v for k, v in raw.items() if k not in known},
    )


# What load_info keeps of a checkpoint: everything but the tensors and the training state.
_INFO_KEYS = ("format", "model_name", "config", "task", "classes", "input_size", "mean", "std",
              "metrics")


def load_info(path: Path | str, index_dir: Path, task: str | None = None) -> Checkpoint:
    """The checkpoint's metadata (model, task, classes, input size, normalisation) without its
    tensors, and without importing torch when `index_dir` already holds it.

    The index holds one JSON per checkpoint, named by the file's SHA-256, so it can never
    describe another version of the file; it is written from a full, checked load the first
    time. A cached engine then starts without torch (2.5 s of the 5.4 s start-up on an AVX2
    EPYC). Returns the full checkpoint when it had to load one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    from orstream.engines.cache import file_sha256

    entry = Path(index_dir) / f"{file_sha256(path)}.json"
    try:
        raw = json.loads(entry.read_text())
        if isinstance(raw, dict) and raw.get("format") == FORMAT:
            return _checked(path, raw, task, None)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no entry yet, or an unreadable one: load the file and write it (again)
    full = load(path, task)
    raw = {k: v for k, v in full.to_dict().items() if k in _INFO_KEYS}
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(raw))
        tmp.replace(entry)
    except (OSError, TypeError, ValueError):
        pass  # a read-only cache only costs the next start the torch import
    return full


def publish(src: Path | str, dst: Path | str) -> Path:
    """Copy a trained checkpoint for shipping: weights stored as fp16 (half the bytes; the
    model is rebuilt in fp32 when loaded), training state (optimizer, history) dropped,
    metrics and the training config kept for provenance."""
    checkpoint = load(src)
    half = half_weights(checkpoint.state_dict)
    keep = {k: v for k, v in checkpoint.extra.items() if k == "train_config"}
    return save(Checkpoint(checkpoint.model_name, checkpoint.config, checkpoint.task,
                           checkpoint.classes, checkpoint.input_size, half, checkpoint.mean,
                           checkpoint.std, checkpoint.metrics, keep), Path(dst))


def shipped(task: Task, model_name: str = "unet_xs") -> Path:
    """Path of the weights shipped with orstream for a task."""
    return WEIGHTS_DIR / f"{model_name}_{task}.pt"
