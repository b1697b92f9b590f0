"""`orstream train unet`: train a U-Net on an EndoVis-layout dataset, with checkpoints and plots.

The run directory holds `last.pt` (with optimizer state, for --resume), `best.pt` (weights,
config, class table and metrics of the best validation epoch), `history.json`, `curves.png`
and `predictions.png`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm import tqdm

from orstream.common.classes import CLASSES, palette
from orstream.common.sizes import check_unet_input, parse_hw
from orstream.engines import checkpoint as ckpt
from orstream.engines.postprocess import instance_vote
from orstream.engines.predict import predict_labels
from orstream.engines.preprocess import normalize
from orstream.engines.registry import build_model, model_config
from orstream.training.augment import AugmentConfig
from orstream.training.data import SegmentationSet, load_arrays
from orstream.training.datasets.endovis import discover, split_by_fold
from orstream.training.losses import dice_ce_loss
from orstream.training.metrics import SegmentationMetrics
from orstream.training.plots import plot_curves, plot_predictions

PRIMARY_METRIC = {"binary": "dice", "parts": "mc_iou", "types": "mc_iou"}


class TrainConfig(BaseModel):
    """Everything a training run depends on; saved into its checkpoints."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: Path  # EndoVis 2017/2018-layout dataset root
    task: Literal["binary", "parts", "types"] = "binary"
    model: str = "unet_xs"  # a name from engines.registry.VARIANTS
    epochs: int = Field(20, ge=1)
    batch: int = Field(16, ge=1)
    lr: float = Field(3e-3, gt=0)  # Adam; peak of a warm-up + cosine schedule
    weight_decay: float = Field(1e-4, ge=0)
    # (H, W) frames are resized to, the 1280x1024 (WxH) crop / 4; strings are WxH (320x256)
    size: tuple[int, int] = (256, 320)
    crop: tuple[int, int] | None = (128, 160)  # (H, W) training crop at full scale; None = whole
    fold: int = Field(0, ge=0, le=3)  # TernausNet fold: its two videos are the validation set
    out: Path = Path("runs/unet")
    resume: bool = False
    # Warm start: the weights of this checkpoint (same task and model), fresh optimizer and
    # schedule. How a crop-trained model is fine-tuned on whole frames for context.
    init: Path | None = None
    seed: int = 0
    workers: int = Field(2, ge=1)  # threads that decode the dataset
    steps_per_epoch: int | None = Field(None, ge=1)  # cap, for quick runs; None = full epoch

    @field_validator("size", "crop", mode="before")
    @classmethod
    def _hw(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("none", "full"):
            return None  # `--crop none`: train on whole frames
        # Written WxH (`--size 320x256`) like every size; held as (H, W)
        return parse_hw(value) if isinstance(value, str) else value

    @field_validator("size")
    @classmethod
    def _multiple_of_32(cls, value: tuple[int, int]) -> tuple[int, int]:
        return check_unet_input(value)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        model_config(value, 2)  # raises with the list of known names
        return value

    def to_json(self) -> dict:
        return json.loads(self.model_dump_json())


def lr_schedule(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 2 % of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.inference_mode()
def _validate(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, task: str,
              batch: int) -> tuple[float, dict]:
    model.eval()
    metrics = SegmentationMetrics(len(CLASSES[task]), task)
    losses = []
    mean, std = ckpt.DEFAULT_MEAN, ckpt.DEFAULT_STD
    for i in range(0, len(images), batch):
        x = normalize(torch.from_numpy(images[i:i + batch]), mean, std)
        target = torch.from_numpy(labels[i:i + batch].astype(np.int64))
        logits = model(x)
        losses.append(float(dice_ce_loss(logits, target)) * len(x))
        for t, p in zip(labels[i:i + batch], logits.argmax(1).to(torch.uint8).numpy(),
                        strict=True):
            # Types are scored after the per-instrument vote, as `orstream eval` and the
            # pipeline use them: the best epoch is the best one as deployed.
            metrics.update(t, instance_vote(p, len(CLASSES[task])) if task == "types" else p)
    return sum(losses) / len(images), metrics.compute()


def train_unet(cfg: TrainConfig) -> Path:
    """Train, validate every epoch, keep the best checkpoint; returns the path of best.pt."""
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    classes = CLASSES[cfg.task]
    metric_name = PRIMARY_METRIC[cfg.task]

    # A wrong --init fails here, in a second, not after minutes of decoding the dataset.
    init = (ckpt.load(cfg.init, task=cfg.task, model_name=cfg.model)
            if cfg.init is not None and not cfg.resume else None)
    samples = discover(cfg.data, cfg.task)
    train_samples, val_samples = split_by_fold(samples, cfg.fold)
    logger.info("{}: {} training frames, {} validation frames (fold {})", cfg.data,
                len(train_samples), len(val_samples), cfg.fold)
    # Reading everything up front is also the check of the data: a bad file stops the run
    # here, naming itself, before any time is spent training.
    train_images, train_labels = load_arrays(train_samples, cfg.task, cfg.size, cfg.workers,
                                             "loading training frames")
    val_images, val_labels = load_arrays(val_samples, cfg.task, cfg.size, cfg.workers,
                                         "loading validation frames")
    train_set = SegmentationSet(train_images, train_labels, AugmentConfig(), cfg.crop, cfg.seed)

    model = build_model(cfg.model, len(classes)).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.steps_per_epoch or max(1, len(train_set) // cfg.batch)
    total = steps * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_schedule(s, total, warmup=min(200, total // 10 + 1)))
    history: list[dict] = []
    best = -1.0
    start_epoch = 1

    last_path, best_path = out / "last.pt", out / "best.pt"
    if init is not None:
        model.load_state_dict(init.state_dict)  # fp16 shipped weights become fp32 here
        logger.info("starting from the weights of {}", cfg.init)
    if cfg.resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"--resume: no {last_path} to resume from; drop --resume "
                                    "to start a new run")
        state = ckpt.load(last_path, task=cfg.task, model_name=cfg.model)
        model.load_state_dict(state.state_dict)
        optimizer.load_state_dict(state.extra["optimizer"])
        scheduler.load_state_dict(state.extra["scheduler"])
        history = list(state.extra["history"])
        best = float(state.extra["best"])
        start_epoch = int(state.extra["epoch"]) + 1
        train_set.rng = np.random.default_rng([cfg.seed, start_epoch])
        logger.info("resuming {} at epoch {}", last_path, start_epoch)

    generator = torch.Generator().manual_seed(cfg.seed + start_epoch)
    started = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch, shuffle=True,
                                             drop_last=True, generator=generator)
        running, seen = 0.0, 0
        bar = tqdm(total=steps, desc=f"epoch {epoch}/{cfg.epochs}", unit="step", leave=False)
        batches = iter(loader)
        for _ in range(steps):
            try:
                images, labels = next(batches)
            except StopIteration:  # a capped epoch longer than the data: go round again
                batches = iter(loader)
                images, labels = next(batches)
            x = normalize(images, ckpt.DEFAULT_MEAN, ckpt.DEFAULT_STD)
            loss = dice_ce_loss(model(x), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item() * len(images)
            seen += len(images)
            bar.update()
            bar.set_postfix(loss=f"{running / seen:.4f}")
        bar.close()

        val_loss, val = _validate(model, val_images, val_labels, cfg.task, cfg.batch)
        record = {"epoch": epoch, "train_loss": running / seen, "val_loss": val_loss, "val": val,
                  "lr": scheduler.get_last_lr()[0],
                  "elapsed_s": round(time.perf_counter() - started, 1)}
        history.append(record)
        improved = val[metric_name] > best
        best = max(best, val[metric_name])
        logger.info("epoch {}/{}: train loss {:.4f}, val loss {:.4f}, val {} {:.4f}{}", epoch,
                    cfg.epochs, record["train_loss"], val_loss, metric_name, val[metric_name],
                    " (best)" if improved else "")

        common = dict(model_name=cfg.model, config=model_config(cfg.model, len(classes)),
                      task=cfg.task, classes=classes, input_size=cfg.size,
                      state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
                      metrics={"epoch": epoch, **val})
        if improved:
            ckpt.save(ckpt.Checkpoint(**common, extra={"train_config": cfg.to_json()}),
                      best_path)
        ckpt.save(ckpt.Checkpoint(**common, extra={
            "train_config": cfg.to_json(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "history": history, "best": best,
            "epoch": epoch}), last_path)
        (out / "history.json").write_text(json.dumps(history, indent=1))
        plot_curves(history, out / "curves.png", metric_name)

    best_ckpt = ckpt.load(best_path)
    pick = np.linspace(0, len(val_images) - 1, min(4, len(val_images))).astype(int)
    preds = predict_labels(best_ckpt.build().to(memory_format=torch.channels_last),
                           val_images[pick], best_ckpt.mean, best_ckpt.std)
    if cfg.task == "types":  # as validated and deployed: after the per-instrument vote
        preds = np.stack([instance_vote(p, len(classes)) for p in preds])
    plot_predictions(val_images[pick], val_labels[pick], preds, palette(cfg.task),
                     out / "predictions.png")
    logger.info("done in {:.0f} s: best validation {} {:.4f} -> {}",
                time.perf_counter() - started, metric_name, best, best_path)
    return best_path
