"""`orstream eval` on a TP-SIS checkpoint: the types metrics of the U-Net, given the class
names as prompts, plus what the model does with text it was never trained on.

- class names: one prompt per type, each pixel going to the most probable prompt at or above
  the threshold (0.35), then the same per-instrument vote and the same metric code as the
  types U-Net (training/evaluate.py), so the figures compare on the same frames;
- paraphrases (engines/tpsis_prompts.PARAPHRASES) in place of the names, scored the same way,
  and their mc_IoU as a fraction of the names';
- absent instruments (ABSENT), each prompt alone: the fraction of pixels it marks, per frame.

The visual encoder runs once per frame for all three sets (a prompt's map does not depend on
the other prompts).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from orstream.common.classes import CLASSES
from orstream.engines import tpsis_checkpoint as ckpt
from orstream.engines.postprocess import instance_vote
from orstream.engines.preprocess import normalize
from orstream.engines.tpsis import THRESHOLD, labels_from_logits
from orstream.engines.tpsis_prompts import ABSENT, PARAPHRASES
from orstream.training.data import load_arrays
from orstream.training.datasets.endovis import discover, split_by_fold
from orstream.training.metrics import SegmentationMetrics


def paraphrase_sets() -> list[tuple[str, ...]]:
    """Sets of seven prompts, one per type; set k takes each type's k-th paraphrase (its last
    where it has fewer), so every paraphrase is scored once."""
    n = max(len(v) for v in PARAPHRASES.values())
    return [tuple(v[min(k, len(v) - 1)] for v in PARAPHRASES.values()) for k in range(n)]


def evaluate_tpsis(data: Path, weights: Path, videos: Iterable[int] | None = None,
                   fold: int | None = None, batch: int = 8, workers: int = 2,
                   postprocess: str = "auto") -> dict:
    """Metrics of TP-SIS `weights` on `data`, as training/evaluate.evaluate reports them for a
    types U-Net, plus "paraphrase" and "absent" (see the module's docstring)."""
    if postprocess not in ("auto", "vote", "none"):
        raise ValueError(f"postprocess {postprocess!r}: expected auto, vote or none")
    postprocess = "vote" if postprocess == "auto" else postprocess
    checkpoint = ckpt.load(weights)
    classes = CLASSES["types"]
    samples = discover(Path(data), "types", videos)
    if fold is not None:
        _, samples = split_by_fold(samples, fold)
    images, labels = load_arrays(samples, "types", checkpoint.input_size, workers,
                                 "evaluating")
    model = checkpoint.build()
    names = list(classes[1:])
    sets = [tuple(names), *paraphrase_sets()]  # set 0: the class names
    texts = [t for s in sets for t in s] + list(ABSENT)
    metrics = [SegmentationMetrics(len(classes), "types") for _ in sets]
    coverage = np.empty((len(images), len(ABSENT)))
    k = len(names)
    with torch.inference_mode():
        state = model.encode_texts(texts)
        for i in range(0, len(images), batch):
            x = normalize(torch.from_numpy(images[i:i + batch]), checkpoint.mean,
                          checkpoint.std)
            logits = model(x, state)  # (B, P, H, W), every prompt its own group
            for s, m in enumerate(metrics):
                for j, pred in enumerate(labels_from_logits(logits[:, s * k:(s + 1) * k])
                                         .numpy()):
                    if postprocess == "vote":
                        pred = instance_vote(pred, len(classes))
                    m.update(labels[i + j], pred)
            absent = logits[:, len(sets) * k:].sigmoid() >= THRESHOLD  # (B, A, H, W)
            coverage[i:i + len(x)] = absent.float().mean(dim=(2, 3)).numpy()

    def named(result: dict) -> dict:
        result["per_class_iou"] = {classes[c]: v for c, v in result["per_class_iou"].items()}
        return result

    result = named(metrics[0].compute())
    para = []
    for s, m in zip(sets[1:], metrics[1:], strict=True):
        r = named(m.compute())
        para.append({"prompts": dict(zip(names, s, strict=True)), "mc_iou": r["mc_iou"],
                     "ch_iou": r["ch_iou"], "isi_iou": r["isi_iou"],
                     "per_class_iou": r["per_class_iou"],
                     "of_class_names": r["mc_iou"] / max(result["mc_iou"], 1e-12),
                     "per_class_of_class_names": {
                         c: v / max(result["per_class_iou"].get(c, 0.0), 1e-12)
                         for c, v in r["per_class_iou"].items()}})
    return {
        "task": "types",
        "model": checkpoint.model_name,
        "weights": str(weights),
        "data": str(data),
        "frames": len(samples),
        "videos": sorted({s.video_id for s in samples}),
        "input_size": list(checkpoint.input_size),
        "postprocess": postprocess,
        "prompts": names,
        "threshold": THRESHOLD,
        **result,
        "paraphrase": {
            "sets": para,
            "of_class_names": float(np.mean([p["of_class_names"] for p in para])),
        },
        "absent": {
            "prompts": {a: {"mean_coverage": float(coverage[:, j].mean()),
                            "max_coverage": float(coverage[:, j].max())}
                        for j, a in enumerate(ABSENT)},
            "mean_coverage": float(coverage.mean()),
        },
    }


def format_prompt_table(result: dict) -> str:
    """The lines `orstream eval` adds for TP-SIS under the types table."""
    lines = ["", f"prompts: the class names (threshold {result['threshold']})", "",
             "held-out paraphrases (in place of the class names):",
             f"{'class':<28} {'paraphrase':<22} {'IoU, %':>8} {'of name':>8}"]
    for s in result["paraphrase"]["sets"]:
        for cls, text in s["prompts"].items():
            iou = s["per_class_iou"].get(cls)
            ratio = s["per_class_of_class_names"].get(cls)
            lines.append(f"{cls:<28} {text:<22} "
                         f"{'-' if iou is None else f'{100 * iou:.2f}':>8} "
                         f"{'-' if ratio is None else f'{100 * ratio:.0f} %':>8}")
        lines.append(f"{'mc_IoU':<28} {'':<22} {100 * s['mc_iou']:>8.2f} "
                     f"{100 * s['of_class_names']:>6.0f} %")
    lines += ["", "absent instruments (each prompt alone): pixels marked, %",
              f"{'prompt':<28} {'mean':>8} {'worst frame':>12}"]
    for text, c in result["absent"]["prompts"].items():
        lines.append(f"{text:<28} {100 * c['mean_coverage']:>8.3f} "
                     f"{100 * c['max_coverage']:>12.3f}")
    lines.append(f"{'all absent prompts':<28} {100 * result['absent']['mean_coverage']:>8.3f}")
    return "\n".join(lines)
