"""The accuracy gate: an INT8 engine is kept only if it segments the held-out frames
(nearly) as well as the float engine of the same backend.

Both engines are scored per class against the same reference: the frames' ground truth
when the calibration set has it (synthetic sources), otherwise the float engine's own
output (then the float engine scores 1 by definition and the drop is the INT8 engine's
disagreement with it). The drop is the mean foreground Dice of float minus that of INT8, in
Dice points; classes absent from the reference and from both predictions are left out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


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
class GateReport:
    backend: str
    threshold_dice_points: float
    reference: str  # "ground truth (types)" or "float engine"
    frames: int
    pixel_agreement: float  # INT8 vs float labels
    float_mean_dice: float
    int8_mean_dice: float
    drop_dice_points: float
    classes: list[dict[str, Any]] = field(default_factory=list)  # worst drop first
    latency_ms: dict[str, float] = field(default_factory=dict)
    passed: bool = False
    weight_bits: int = 8  # 7 on CPUs without an int8 dot product (calibration/quantize.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        verdict = "PASSED" if self.passed else "REFUSED"
        lines = [
            f"# INT8 accuracy gate ({self.backend}): {verdict}", "",
            f"{self.frames} held-out frames scored against {self.reference}. Mean Dice: "
            f"float {100 * self.float_mean_dice:.2f}, INT8 {100 * self.int8_mean_dice:.2f}; "
            f"drop {self.drop_dice_points:.2f} points (threshold "
            f"{self.threshold_dice_points:.2f}). Pixel agreement INT8 vs float: "
            f"{100 * self.pixel_agreement:.3f} %. Weights quantised to {self.weight_bits} bits"
            + (" (this CPU has no int8 dot-product instruction: 8-bit weights would "
               "saturate its 16-bit sums)." if self.weight_bits == 7 else "."), "",
            "| class | Dice float | Dice INT8 | drop (points) | IoU float | IoU INT8 |",
            "|---|---|---|---|---|---|",
        ]
        for c in self.classes:
            lines.append(f"| {c['name']} | {100 * c['dice_float']:.2f} | "
                         f"{100 * c['dice_int8']:.2f} | {c['drop_points']:.2f} | "
                         f"{100 * c['iou_float']:.2f} | {100 * c['iou_int8']:.2f} |")
        if self.latency_ms:
            lines += ["", "Latency on this machine (p50 ms, batch 1): " + ", ".join(
                f"{k} {v:.2f}" for k, v in self.latency_ms.items())]
        return "\n".join(lines) + "\n"


def judge(float_labels: np.ndarray, int8_labels: np.ndarray, truth: np.ndarray | None,
          classes: tuple[str, ...], backend: str, threshold: float,
          truth_name: str = "ground truth") -> GateReport:
    reference = truth if truth is not None else float_labels
    f = per_class(reference, float_labels, len(classes))
    q = per_class(reference, int8_labels, len(classes))
    rows = []
    for c in sorted(set(f) | set(q)):
        df, iof, n = f.get(c, (0.0, 0.0, 0))
        dq, ioq, _ = q.get(c, (0.0, 0.0, 0))
        rows.append({"class": c, "name": classes[c], "pixels": n, "dice_float": df,
                     "dice_int8": dq, "drop_points": 100 * (df - dq), "iou_float": iof,
                     "iou_int8": ioq})
    rows.sort(key=lambda r: -r["drop_points"])
    mean_f = float(np.mean([r["dice_float"] for r in rows])) if rows else 1.0
    mean_q = float(np.mean([r["dice_int8"] for r in rows])) if rows else 1.0
    drop = 100 * (mean_f - mean_q)
    return GateReport(backend=backend, threshold_dice_points=threshold,
                      reference=truth_name if truth is not None else "float engine",
                      frames=len(float_labels),
                      pixel_agreement=float((float_labels == int8_labels).mean()),
                      float_mean_dice=mean_f, int8_mean_dice=mean_q, drop_dice_points=drop,
                      classes=rows, passed=drop <= threshold)
