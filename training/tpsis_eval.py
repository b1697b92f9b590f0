"""`orstream eval` on a TP-SIS checkpoint: the types metrics of the U-Net, given the class
names as prompts, plus what the model does with text it was never trained on.

- class names: one prompt per type, each pixel going to the most probable prompt at or above
  the threshold (0.35), then the same per-instrument vote and the same metric code as the
  types U-Net (training/evaluate.py), so the figures compare on the same frames;
- paraphrases (engines/tpsis_prompts.PARAPHRASES) in place of the names, scored the same way,
  and their mc_IoU as a fraction of the names';
- absent instruments (ABSENT), each prompt alone: the fraction of pixels it marks, per frame.

The held-out prompts are scored three ways: as typed (the model alone, segment.read_prompts:
false), read against the trained prompts only, and read with the instrument vocabulary too
(engines/tpsis_vocabulary.py; the pipeline's default), so what each step adds is measured in
one run on the same frames.

The visual encoder runs once per frame for all three sets (a prompt's map does not depend on
the other prompts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from orstream.common.classes import CLASSES
from orstream.engines import tpsis_checkpoint as ckpt
from orstream.engines.postprocess import instance_vote
from orstream.engines.preprocess import normalize
from orstream.engines.tpsis import THRESHOLD, labels_from_logits
from orstream.engines.tpsis_prompts import ABSENT, PARAPHRASES
from orstream.engines.tpsis_reading import PromptReader
from orstream.engines.tpsis_vocabulary import vocabulary_for
from orstream.training.data import load_arrays
from orstream.training.datasets.endovis import discover, split_by_fold
from orstream.training.metrics import SegmentationMetrics


def paraphrase_sets(paraphrases: Mapping[str, Sequence[str]] = PARAPHRASES
                    ) -> list[tuple[str, ...]]:
    """Sets of seven prompts, one per type; set k takes each type's k-th paraphrase (its last
    where it has fewer), so every paraphrase is scored once."""
    n = max(len(v) for v in paraphrases.values())
    return [tuple(v[min(k, len(v) - 1)] for v in paraphrases.values()) for k in range(n)]


def evaluate_tpsis(data: Path, weights: Path, videos: Iterable[int] | None = None,
                   fold: int | None = None, batch: int = 8, workers: int = 2,
                   postprocess: str = "auto",
                   paraphrases: Mapping[str, Sequence[str]] = PARAPHRASES,
                   absent_prompts: Sequence[str] = ABSENT,
                   vocabulary: Path | None = None) -> dict:
    """Metrics of TP-SIS `weights` on `data`, as training/evaluate.evaluate reports them for a
    types U-Net, plus "paraphrase" and "absent" (see the module's docstring), each also as
    read against the trained prompts ("paraphrase_read_trained", "absent_read_trained") and
    with the shipped vocabulary plus `vocabulary` ("paraphrase_read", "absent_read")."""
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
    words = vocabulary_for(checkpoint.prompts, vocabulary)
    readers = [PromptReader(checkpoint.prompts), PromptReader(checkpoint.prompts,
                                                              vocabulary=words)]
    names = list(classes[1:])
    assert list(paraphrases) == names, "one paraphrase list per type, in order"
    typed = paraphrase_sets(paraphrases)
    read = [[tuple(r.read(t).text for t in s) for s in typed] for r in readers]
    sets = [tuple(names), *typed, *read[0], *read[1]]  # set 0: the class names
    absent_typed = list(absent_prompts)
    absent_read = [[r.read(a).text for a in absent_typed] for r in readers]
    texts = [t for s in sets for t in s] + absent_typed + absent_read[0] + absent_read[1]
    metrics = [SegmentationMetrics(len(classes), "types") for _ in sets]
    # Per frame, each absent prompt's coverage: as typed, then as each reader gives it
    coverage = np.empty((len(images), 3 * len(absent_typed)))
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
            absent = logits[:, len(sets) * k:].sigmoid() >= THRESHOLD  # (B, 3A, H, W)
            coverage[i:i + len(x)] = absent.float().mean(dim=(2, 3)).numpy()

    def named(result: dict) -> dict:
        result["per_class_iou"] = {classes[c]: v for c, v in result["per_class_iou"].items()}
        return result

    result = named(metrics[0].compute())

    def scored_paraphrases(shown: list[tuple[str, ...]], given: list[tuple[str, ...]],
                           scored: list[SegmentationMetrics]) -> dict:
        out = []
        for s, g, m in zip(shown, given, scored, strict=True):
            r = named(m.compute())
            out.append({"prompts": dict(zip(names, s, strict=True)),
                        "given": dict(zip(names, g, strict=True)), "mc_iou": r["mc_iou"],
                        "ch_iou": r["ch_iou"], "isi_iou": r["isi_iou"],
                        "per_class_iou": r["per_class_iou"],
                        "of_class_names": r["mc_iou"] / max(result["mc_iou"], 1e-12),
                        "per_class_of_class_names": {
                            c: v / max(result["per_class_iou"].get(c, 0.0), 1e-12)
                            for c, v in r["per_class_iou"].items()}})
        return {"sets": out, "of_class_names": float(np.mean([p["of_class_names"]
                                                               for p in out]))}

    def scored_absent(columns: np.ndarray, given: list[str]) -> dict:
        return {"prompts": {a: {"given": g, "mean_coverage": float(columns[:, j].mean()),
                                "max_coverage": float(columns[:, j].max())}
                            for j, (a, g) in enumerate(zip(absent_typed, given,
                                                           strict=True))},
                "mean_coverage": float(columns.mean())}

    n = len(typed)
    a = len(absent_typed)
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
        "read_as_min_similarity": readers[0].min_similarity,
        "vocabulary": words.source,
        **result,
        # The model alone: every prompt as typed (segment.read_prompts: false).
        "paraphrase": scored_paraphrases(typed, typed, metrics[1:1 + n]),
        "absent": scored_absent(coverage[:, :a], absent_typed),
        # Each prompt read against the trained prompts only (no vocabulary)
        "paraphrase_read_trained": scored_paraphrases(typed, read[0], metrics[1 + n:1 + 2 * n]),
        "absent_read_trained": scored_absent(coverage[:, a:2 * a], absent_read[0]),
        # What the pipeline does by default: read with the instrument vocabulary too
        "paraphrase_read": scored_paraphrases(typed, read[1], metrics[1 + 2 * n:]),
        "absent_read": scored_absent(coverage[:, 2 * a:], absent_read[1]),
    }


def format_prompt_table(result: dict) -> str:
    """The lines `orstream eval` adds for TP-SIS under the types table: each held-out prompt
    given to the model as typed, then as read against the trained prompts and the instrument
    vocabulary (the pipeline's default, engines/tpsis_reading.py), with the summary of reading
    without the vocabulary."""

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}"

    def of(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.0f} %"

    lines = ["", f"prompts: the class names (threshold {result['threshold']})", "",
             "held-out paraphrases (in place of the class names), IoU % and % of the name's; "
             f"read: given as the class of the nearest trained prompt or vocabulary name at "
             f"cosine >= {result['read_as_min_similarity']} (vocabulary: "
             f"{result['vocabulary']})",
             f"{'class':<26} {'paraphrase':<20} {'typed':>7} {'of name':>8}  "
             f"{'read as':<24} {'read':>7} {'of name':>8}"]
    for typed, read, trained in zip(result["paraphrase"]["sets"],
                                    result["paraphrase_read"]["sets"],
                                    result["paraphrase_read_trained"]["sets"], strict=True):
        for cls, text in typed["prompts"].items():
            given = read["given"][cls]
            lines.append(
                f"{cls:<26} {text:<20} {pct(typed['per_class_iou'].get(cls)):>7} "
                f"{of(typed['per_class_of_class_names'].get(cls)):>8}  "
                f"{given if given != text else '(as typed)':<24} "
                f"{pct(read['per_class_iou'].get(cls)):>7} "
                f"{of(read['per_class_of_class_names'].get(cls)):>8}")
        lines.append(f"{'mc_IoU':<26} {'':<20} {100 * typed['mc_iou']:>7.2f} "
                     f"{of(typed['of_class_names']):>8}  {'':<24} {100 * read['mc_iou']:>7.2f} "
                     f"{of(read['of_class_names']):>8}")
        lines.append(f"{'  read, trained prompts only':<64}  {'':<24} "
                     f"{100 * trained['mc_iou']:>7.2f} {of(trained['of_class_names']):>8}")
    lines += ["", "absent instruments (each prompt alone): pixels marked, % (mean / worst "
              "frame)", f"{'prompt':<26} {'typed':>16}  {'read as':<24} {'read':>16}"]
    for text, c in result["absent"]["prompts"].items():
        r = result["absent_read"]["prompts"][text]
        lines.append(f"{text:<26} {100 * c['mean_coverage']:>7.3f} / "
                     f"{100 * c['max_coverage']:>6.3f}  "
                     f"{r['given'] if r['given'] != text else '(as typed)':<24} "
                     f"{100 * r['mean_coverage']:>7.3f} / {100 * r['max_coverage']:>6.3f}")
    lines.append(f"{'all absent prompts':<26} {100 * result['absent']['mean_coverage']:>7.3f}"
                 f"{'':<35} {100 * result['absent_read']['mean_coverage']:>7.3f}")
    lines.append(f"{'  read, trained prompts only':<69} "
                 f"{100 * result['absent_read_trained']['mean_coverage']:>7.3f}")
    return "\n".join(lines)
