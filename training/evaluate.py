"""`orstream eval`: score a checkpoint on an EndoVis-layout dataset, TernausNet-style."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orstream.common.classes import CLASSES
from orstream.engines import checkpoint as ckpt
from orstream.engines.postprocess import instance_vote
from orstream.engines.predict import predict_labels
from orstream.engines.tpsis_checkpoint import is_tpsis
from orstream.training.data import load_arrays
from orstream.training.datasets.endovis import discover, split_by_fold
from orstream.training.metrics import SegmentationMetrics


def evaluate(data: Path, weights: Path, videos: Iterable[int] | None = None,
             fold: int | None = None, batch: int = 8, workers: int = 2,
             postprocess: str = "auto", **tpsis_sets: Any) -> dict:
    """Metrics of `weights` on `data` (all videos, the given ones, or a fold's validation set).

    Frames are scored at the model's input size: the label maps are what the pipeline gets.
    A TP-SIS checkpoint is scored given the class names as prompts (training/tpsis_eval.py;
    `tpsis_sets`: its held-out `paraphrases` and `absent_prompts`, instead of the default ones).
    postprocess: "vote" (one type per connected instrument, engines/postprocess.py), "none",
    or "auto": vote for the types task, as the live pipeline does, none otherwise.
    """
    if postprocess not in ("auto", "vote", "none"):
        raise ValueError(f"postprocess {postprocess!r}: expected auto, vote or none")
    if is_tpsis(weights):  # text-promptable: scored given the class names as prompts
        from orstream.training.tpsis_eval import evaluate_tpsis

        return evaluate_tpsis(data, weights, videos, fold, batch, workers, postprocess,
                              **tpsis_sets)
    checkpoint = ckpt.load(weights)
    task = checkpoint.task
    samples = discover(Path(data), task, videos)
    if fold is not None:
        _, samples = split_by_fold(samples, fold)
    images, labels = load_arrays(samples, task, checkpoint.input_size, workers, "evaluating")
    model = checkpoint.build().to(memory_format=torch.channels_last)
    preds = predict_labels(model, images, checkpoint.mean, checkpoint.std, batch)
    if postprocess == "auto":
        postprocess = "vote" if task == "types" else "none"
    if postprocess == "vote":
        preds = np.stack([instance_vote(p, len(CLASSES[task])) for p in preds])
    metrics = SegmentationMetrics(len(CLASSES[task]), task)
    for truth, pred in zip(labels, preds, strict=True):
        metrics.update(truth, pred)
    result = metrics.compute()
    if "per_class_iou" in result:
        result["per_class_iou"] = {CLASSES[task][c]: v for c, v in result["per_class_iou"].items()}
    return {
        "task": task,
        "model": checkpoint.model_name,
        "weights": str(weights),
        "data": str(data),
        "frames": len(samples),
        "videos": sorted({s.video_id for s in samples}),
        "input_size": list(checkpoint.input_size),
        "postprocess": postprocess,
        **result,
    }


def format_table(result: dict) -> str:
    """TernausNet's table layout (IoU and Dice in %), then per-class IoU for multi-class."""
    lines = [f"{result['model']} on {result['data']} ({result['frames']} frames, videos "
             f"{result['videos']}, scored at {result['input_size'][0]}x"
             f"{result['input_size'][1]}, post-processing: {result['postprocess']})", ""]
    if result["task"] == "binary":
        lines += [f"{'Model':<12} {'Task':<8} {'IoU, %':>8} {'Dice, %':>8}",
                  f"{result['model']:<12} {'binary':<8} {100 * result['iou']:>8.2f} "
                  f"{100 * result['dice']:>8.2f}"]
        return "\n".join(lines)
    lines += [f"{'Model':<12} {'Task':<8} {'IoU, %':>8} {'Dice, %':>8} {'Ch_IoU':>8} "
              f"{'ISI_IoU':>8} {'mc_IoU':>8}",
              f"{result['model']:<12} {result['task']:<8} {100 * result['mean_iou']:>8.2f} "
              f"{100 * result['mean_dice']:>8.2f} {100 * result['ch_iou']:>8.2f} "
              f"{100 * result['isi_iou']:>8.2f} {100 * result['mc_iou']:>8.2f}", "",
              f"{'class':<28} {'IoU, %':>8}"]
    lines += [f"{name:<28} {100 * v:>8.2f}" for name, v in result["per_class_iou"].items()]
    if "paraphrase" in result:  # a TP-SIS checkpoint: what it does with unseen text
        from orstream.training.tpsis_eval import format_prompt_table

        lines.append(format_prompt_table(result))
    return "\n".join(lines)
