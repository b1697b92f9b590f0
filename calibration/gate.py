"""The accuracy gate: an INT8 engine is kept only if it segments the held-out frames
(nearly) as well as the float engine of the same backend.

Two references, each scored per class in mean foreground Dice (classes absent from the
reference and from both predictions are left out), the drop being float minus INT8 in Dice
points:

- ground truth, on the held-out frames that have it (synthetic sources): the accuracy INT8
  loses, which is what the threshold is for;
- the float engine's own labels, on all held-out frames (and, reported apart, on those without
  ground truth): the float engine then scores 1 by definition and the drop is INT8's
  disagreement with it. It is stricter than the accuracy loss (where the float engine is wrong
  INT8 is charged for differing from it), by about five times on the shipped weights.

The verdict is on ground truth when at least MIN_TRUTH_FRAMES held-out frames have it (or all
of them do), otherwise on the float engine; the report names which reference decided and why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from orstream.calibration.sets import GroundTruth

# Fewer frames with ground truth than this, and the score on them is a few frames' luck: the
# verdict falls back to agreement with the float engine over all held-out frames.
MIN_TRUTH_FRAMES = 50
FLOAT_ENGINE = "float engine"
# Against the float engine, a class that it and INT8 both put on fewer than this fraction of
# the pixels is a few specks of noise (on a real recording the float engine's stray pixels of
# a class that is not there): its Dice swings by tens of points when one speck moves (a
# 34-point "drop" was seen at 99.92 % pixel agreement), so it is listed but not averaged.
# Against ground truth every class counts: a small instrument there is real.
MIN_FLOAT_CLASS_FRACTION = 1e-3


def per_class(reference: np.ndarray, predicted: np.ndarray,
              num_classes: int) -> dict[int, tuple[float, float, int]]:
    """class -> (Dice, IoU, reference pixels), over all frames at once."""
    out = {}
    for c in range(1, num_classes):  # 0 is background
        r, p = reference == c, predicted == c
        inter = float(np.count_nonzero(r & p))
        r_n, p_n = float(np.count_nonzero(r)), float(np.count_nonzero(p))
        if r_n + p_n == 0:
            continue
        out[c] = (2 * inter / (r_n + p_n), inter / (r_n + p_n - inter), int(r_n))
    return out


@dataclass
class Comparison:
    """Both engines scored against one reference on some of the held-out frames."""

    reference: str  # "ground truth (types)" or "float engine"
    frames: int
    float_mean_dice: float  # 1 against the float engine itself
    int8_mean_dice: float
    drop_dice_points: float
    classes: list[dict[str, Any]] = field(default_factory=list)  # worst drop first


def compare(reference: np.ndarray, float_labels: np.ndarray, int8_labels: np.ndarray,
            classes: tuple[str, ...], name: str) -> Comparison:
    f = per_class(reference, float_labels, len(classes))
    q = per_class(reference, int8_labels, len(classes))
    # Pixels below which a class is noise; 0 against ground truth (every class counts).
    floor = MIN_FLOAT_CLASS_FRACTION * reference.size if name == FLOAT_ENGINE else 0
    rows = []
    for c in sorted(set(f) | set(q)):
        df, iof, n = f.get(c, (0.0, 0.0, 0))
        dq, ioq, _ = q.get(c, (0.0, 0.0, 0))
        largest = max(n, np.count_nonzero(int8_labels == c))
        rows.append({"class": c, "name": classes[c], "pixels": n, "dice_float": df,
                     "dice_int8": dq, "drop_points": 100 * (df - dq), "iou_float": iof,
                     "iou_int8": ioq, "averaged": bool(largest >= floor)})
    rows.sort(key=lambda r: -r["drop_points"])
    scored = [r for r in rows if r["averaged"]]
    mean_f = float(np.mean([r["dice_float"] for r in scored])) if scored else 1.0
    mean_q = float(np.mean([r["dice_int8"] for r in scored])) if scored else 1.0
    return Comparison(name, len(reference), mean_f, mean_q, 100 * (mean_f - mean_q), rows)


@dataclass
class GateReport:
    backend: str
    threshold_dice_points: float
    frames: int  # held out
    truth_frames: int  # of those, with ground truth for the model's task
    decided_by: str  # the reference of the comparison the verdict is on
    why: str  # why that reference decided
    against_float: Comparison  # all held-out frames
    against_truth: Comparison | None = None  # the frames with ground truth
    against_float_without_truth: Comparison | None = None  # only when some frames have it
    pixel_agreement: float = 0.0  # INT8 vs float labels, all held-out frames
    latency_ms: dict[str, float] = field(default_factory=dict)
    passed: bool = False
    weight_bits: int = 8  # 7 on CPUs without an int8 dot product (calibration/quantize.py)

    @property
    def decision(self) -> Comparison:
        return (self.against_truth if self.decided_by != FLOAT_ENGINE
                else self.against_float)

    # The deciding comparison's figures, as the engine cache and the CLI read them.
    @property
    def reference(self) -> str:
        return self.decision.reference

    @property
    def drop_dice_points(self) -> float:
        return self.decision.drop_dice_points

    @property
    def float_mean_dice(self) -> float:
        return self.decision.float_mean_dice

    @property
    def int8_mean_dice(self) -> float:
        return self.decision.int8_mean_dice

    @property
    def classes(self) -> list[dict[str, Any]]:
        return self.decision.classes

    def comparisons(self) -> list[tuple[str, Comparison]]:
        """(what was compared, comparison), the deciding one first."""
        found = [(f"{self.against_truth.reference}, frames that have it", self.against_truth)
                 if self.against_truth else None,
                 ("float engine, all frames", self.against_float),
                 ("float engine, frames without ground truth", self.against_float_without_truth)
                 if self.against_float_without_truth else None]
        found = [c for c in found if c is not None]
        return sorted(found, key=lambda c: c[1] is not self.decision)

    def to_dict(self) -> dict[str, Any]:
        # The verdict's figures flat at the top: readers of older reports keep working.
        return {"reference": self.reference, "drop_dice_points": self.drop_dice_points,
                "float_mean_dice": self.float_mean_dice,
                "int8_mean_dice": self.int8_mean_dice, **asdict(self)}

    def markdown(self) -> str:
        verdict = "PASSED" if self.passed else "REFUSED"
        lines = [
            f"# INT8 accuracy gate ({self.backend}): {verdict}", "",
            f"Decided on mean Dice against {self.reference}: dropped "
            f"{self.drop_dice_points:.2f} points (threshold "
            f"{self.threshold_dice_points:.2f}). {self.why}", "",
            f"{self.frames} held-out frames, {self.truth_frames} with ground truth. Pixel "
            f"agreement INT8 vs float: {100 * self.pixel_agreement:.3f} %. Weights quantised "
            f"to {self.weight_bits} bits"
            + (" (this CPU has no int8 dot-product instruction: 8-bit weights would "
               "saturate its 16-bit sums)." if self.weight_bits == 7 else "."), "",
            "| scored against | frames | Dice float | Dice INT8 | drop (points) | decides |",
            "|---|---|---|---|---|---|",
        ]
        for what, c in self.comparisons():
            lines.append(f"| {what} | {c.frames} | {100 * c.float_mean_dice:.2f} | "
                         f"{100 * c.int8_mean_dice:.2f} | {c.drop_dice_points:.2f} | "
                         f"{'yes' if c is self.decision else ''} |")
        lines += ["", f"Per class, against {self.reference}:", "",
                  "| class | Dice float | Dice INT8 | drop (points) | IoU float | IoU INT8 |",
                  "|---|---|---|---|---|---|"]
        for c in self.classes:
            name = c["name"] if c.get("averaged", True) else f"{c['name']} (not averaged)"
            lines.append(f"| {name} | {100 * c['dice_float']:.2f} | "
                         f"{100 * c['dice_int8']:.2f} | {c['drop_points']:.2f} | "
                         f"{100 * c['iou_float']:.2f} | {100 * c['iou_int8']:.2f} |")
        if any(not c.get("averaged", True) for _, cmp in self.comparisons()
               for c in cmp.classes):
            lines += ["", f"Against the float engine, classes that cover under "
                          f"{100 * MIN_FLOAT_CLASS_FRACTION:g} % of the pixels in both "
                          f"engines' labels are specks of noise: listed, not averaged."]
        if self.latency_ms:
            lines += ["", "Latency on this machine (p50 ms, batch 1): " + ", ".join(
                f"{k} {v:.2f}" for k, v in self.latency_ms.items())]
        return "\n".join(lines) + "\n"


def judge(float_labels: np.ndarray, int8_labels: np.ndarray, truth: GroundTruth | None,
          classes: tuple[str, ...], backend: str, threshold: float,
          truth_name: str = "ground truth") -> GateReport:
    """Score INT8 and float labels (M, H, W) of the held-out frames; `truth` is the set's
    ground truth for the model's task (None: no frame has any)."""
    frames = len(float_labels)
    against_float = compare(float_labels, float_labels, int8_labels, classes, FLOAT_ENGINE)
    against_truth = without_truth = None
    truth_frames = truth.frames if truth is not None else 0
    if truth_frames:
        known = truth.known
        against_truth = compare(truth.labels, float_labels[known], int8_labels[known], classes,
                                truth_name)
        if truth_frames < frames:
            without_truth = compare(float_labels[~known], float_labels[~known],
                                    int8_labels[~known], classes, FLOAT_ENGINE)
    if truth_frames and truth_frames >= min(MIN_TRUTH_FRAMES, frames):
        decided_by = truth_name
        why = (f"{truth_frames} of {frames} held-out frames have ground truth "
               f"({MIN_TRUTH_FRAMES} or all needed), so INT8 is judged on the accuracy it "
               f"loses there.")
    else:
        decided_by = FLOAT_ENGINE
        why = (f"{'Only ' if truth_frames else ''}{truth_frames} of {frames} held-out frames "
               f"have ground truth ({min(MIN_TRUTH_FRAMES, frames)} needed to decide on it), "
               f"so INT8 is judged on its disagreement with the float engine's own labels, "
               f"which is stricter than the accuracy it loses.")
    report = GateReport(backend=backend, threshold_dice_points=threshold, frames=frames,
                        truth_frames=truth_frames, decided_by=decided_by, why=why,
                        against_float=against_float, against_truth=against_truth,
                        against_float_without_truth=without_truth,
                        pixel_agreement=float((float_labels == int8_labels).mean()))
    report.passed = report.drop_dice_points <= threshold
    return report
