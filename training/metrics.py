"""Segmentation metrics for EndoVis-style label maps (binary, parts and types tasks).

All functions take numpy label maps of shape HxW holding class ids, 0 being background. Two
families of published numbers are reproduced, because papers on EndoVis 2017 report both and
they are not comparable with each other:

* TernausNet (Shvets et al. 2018): per-image binary Dice / IoU, and for multi-class tasks the
  per-image mean IoU over the classes present in the ground truth ("mean_iou"). Its epsilon of
  1e-15 is kept so that an image empty in both maps scores 1.0, as in its evaluation script.
* ISINet's official evaluation (Gonzalez et al. 2020, reused by TP-SIS and most later work):
  Challenge IoU ("ch_iou"), ISI IoU ("isi_iou"), per-class IoU and their mean ("mc_iou").
  These differ from TernausNet in how false-positive classes and empty predictions count, so
  they are computed from scratch rather than derived from the TernausNet numbers.

The streaming accumulator `SegmentationMetrics` builds one confusion matrix per image with a
single ``np.bincount`` so that evaluating a full validation set costs a few vectorised passes
per frame and no Python loop over pixels. There is no torch dependency on purpose: the metrics
run in data-loading workers, in CLI tools and in tests without importing a deep learning stack.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "EPSILON",
    "SegmentationMetrics",
    "binary_dice",
    "binary_iou",
    "ternausnet_iou",
]

# TernausNet adds this to numerator and denominator: it makes "both empty" score 1.0 and leaves
# every other value unchanged to double precision.
EPSILON = 1e-15

_TASKS = ("binary", "parts", "types")


def _check_same_shape(y_true: np.ndarray, y_pred: np.ndarray) -> None:
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred must have the same shape, got y_true {y_true.shape} "
            f"and y_pred {y_pred.shape}"
        )


def _iou(intersection: float, union: float) -> float:
    return float((intersection + EPSILON) / (union + EPSILON))


def _dice(intersection: float, true_size: float, pred_size: float) -> float:
    return float((2.0 * intersection + EPSILON) / (true_size + pred_size + EPSILON))


def binary_iou(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """TernausNet's Jaccard index of one image, foreground being every pixel ``> 0``.

    Returns ``(|A∩B| + 1e-15) / (|A∪B| + 1e-15)``: 1.0 when both masks are empty, 0.0 when only
    one is.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    _check_same_shape(y_true, y_pred)
    a, b = y_true > 0, y_pred > 0
    intersection = int(np.count_nonzero(a & b))
    union = int(np.count_nonzero(a | b))
    return _iou(intersection, union)


def binary_dice(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """TernausNet's Dice coefficient of one image, foreground being every pixel ``> 0``.

    Returns ``(2|A∩B| + 1e-15) / (|A| + |B| + 1e-15)``: 1.0 when both masks are empty, 0.0 when
    only one is.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    _check_same_shape(y_true, y_pred)
    a, b = y_true > 0, y_pred > 0
    intersection = int(np.count_nonzero(a & b))
    return _dice(intersection, int(np.count_nonzero(a)), int(np.count_nonzero(b)))


def ternausnet_iou(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """TernausNet's per-image mean IoU over the foreground classes in the ground truth.

    Classes that appear only in the prediction are ignored (they lower the IoU of the GT class
    they overlap, but are not scored on their own). An image without GT foreground scores 1.0
    if the prediction has no foreground either, else 0.0.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    _check_same_shape(y_true, y_pred)
    classes = [int(c) for c in np.unique(y_true) if c != 0]
    if not classes:
        return 1.0 if not np.any(y_pred != 0) else 0.0
    values = []
    for c in classes:
        t, p = y_true == c, y_pred == c
        values.append(_iou(int(np.count_nonzero(t & p)), int(np.count_nonzero(t | p))))
    return float(np.mean(values))


class SegmentationMetrics:
    """Streaming accumulator of segmentation metrics over a set of images.

    Call `update` once per image, then `compute`. For ``task="binary"`` both maps are read as
    ``> 0`` and ``num_classes`` must be 2; for ``"parts"`` and ``"types"`` the maps hold class
    ids in ``[0, num_classes)``.

    `compute` returns, for "binary": ``dice`` and ``iou`` (means of the per-image TernausNet
    values) and ``images``. For "parts"/"types":

    * ``mean_iou``: mean over images of `ternausnet_iou`;
    * ``mean_dice``: the same with Dice instead of IoU (same empty-image rule);
    * ``ch_iou``, ``isi_iou``, ``per_class_iou``, ``mc_iou``: ISINet's official evaluation.
      Per image, a prediction without foreground scores 0 for the Challenge and ISI lists and
      for every GT class (nothing at all if the GT is empty too: such an image is skipped).
      Otherwise each class present in the prediction or the GT gets its IoU; the ISI score of
      the image is the mean over those classes, the Challenge score the mean over those present
      in the GT only, so a false-positive class lowers ISI but not Challenge IoU, and an image
      with an empty GT counts towards ISI only. ``per_class_iou`` maps each class that ever
      appeared (in a GT or a prediction) to the mean of its IoUs, and ``mc_iou`` is the mean
      of those; classes that never appeared are left out instead of being NaN. When no image
      contributed to a list (e.g. every image empty in both maps) ``ch_iou``, ``isi_iou`` and
      ``mc_iou`` are 0.0, so the result stays JSON-serialisable.
    * ``images``: the number of images passed to `update`.

    Every value is a plain Python ``float`` or ``int``.
    """

    def __init__(self, num_classes: int, task: str) -> None:
        if task not in _TASKS:
            raise ValueError(f"unknown task {task!r}: expected one of {', '.join(_TASKS)}")
        if task == "binary" and num_classes != 2:
            raise ValueError(f"task 'binary' needs num_classes=2, got {num_classes}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.task = task
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far (e.g. at the start of a validation epoch)."""
        self._images = 0
        # Per-image values are kept as lists rather than running sums so that the means are
        # computed by numpy in one go, exactly as the reference scripts average their lists.
        self._dice: list[float] = []
        self._iou: list[float] = []
        self._isi: list[float] = []
        self._ch: list[float] = []
        # Per-class lists only ever grow by one value per class per image, so a sum and a count
        # per class are enough and avoid num_classes Python lists.
        self._class_sum = np.zeros(self.num_classes, dtype=np.float64)
        self._class_count = np.zeros(self.num_classes, dtype=np.int64)

    @property
    def images(self) -> int:
        return self._images

    def _confusion(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        """Confusion matrix of one image: rows are GT classes, columns predicted classes."""
        k = self.num_classes
        # Out-of-range ids would silently land in another cell of the flattened matrix, so they
        # are rejected here instead of producing wrong numbers.
        for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
            if arr.dtype.kind not in "biu":
                raise TypeError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
            if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= k):
                raise ValueError(
                    f"{name} holds ids in [{int(arr.min())}, {int(arr.max())}], "
                    f"expected [0, {k - 1}]"
                )
        # int64 before multiplying: uint8 maps would overflow in y_true * k.
        flat = y_true.astype(np.int64, copy=False).ravel() * k + y_pred.ravel()
        return np.bincount(flat, minlength=k * k).reshape(k, k)

    def update(self, y_true: np.ndarray, y_pred: np.ndarray) -> None:
        """Add one image: ``y_true`` the ground-truth label map, ``y_pred`` the prediction."""
        y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
        _check_same_shape(y_true, y_pred)
        if self.task == "binary":
            # Binary maps may come as 0/255 masks or as part/type ids: anything > 0 is
            # instrument, as in TernausNet's evaluation.
            y_true = (y_true > 0).astype(np.uint8)
            y_pred = (y_pred > 0).astype(np.uint8)
        cm = self._confusion(y_true, y_pred)
        self._images += 1

        intersection = np.diag(cm)
        true_size = cm.sum(axis=1)
        pred_size = cm.sum(axis=0)
        union = true_size + pred_size - intersection

        if self.task == "binary":
            self._iou.append(_iou(int(intersection[1]), int(union[1])))
            self._dice.append(_dice(int(intersection[1]), int(true_size[1]), int(pred_size[1])))
            return

        fg = slice(1, None)  # background is never scored
        in_true = true_size[fg] > 0
        in_pred = pred_size[fg] > 0
        true_has_fg = bool(in_true.any())
        pred_has_fg = bool(in_pred.any())

        # TernausNet: mean over the GT classes, with its rule for an empty GT.
        if not true_has_fg:
            empty_score = 0.0 if pred_has_fg else 1.0
            self._iou.append(empty_score)
            self._dice.append(empty_score)
        else:
            inter, t, p, u = (a[fg][in_true] for a in (intersection, true_size, pred_size, union))
            self._iou.append(float(np.mean((inter + EPSILON) / (u + EPSILON))))
            self._dice.append(float(np.mean((2.0 * inter + EPSILON) / (t + p + EPSILON))))

        # ISINet: an empty prediction scores 0 everywhere the GT has an instrument; it has no
        # IoU to compute (the union of a class absent from the prediction is just the GT).
        if not pred_has_fg:
            if true_has_fg:
                self._isi.append(0.0)
                self._ch.append(0.0)
                gt_classes = np.flatnonzero(in_true) + 1
                self._class_count[gt_classes] += 1  # adds a 0 to each of these classes' lists
            return

        present = in_true | in_pred
        classes = np.flatnonzero(present) + 1
        # Union is positive for every class present in either map, so no epsilon is needed.
        ious = intersection[classes] / union[classes]
        self._class_sum[classes] += ious
        self._class_count[classes] += 1
        self._isi.append(float(np.mean(ious)))
        ch = ious[in_true[present]]
        if ch.size:
            self._ch.append(float(np.mean(ch)))

    def compute(self) -> dict:
        """Metrics over every image seen since construction or the last `reset`."""
        if self._images == 0:
            raise ValueError("no images were evaluated")
        if self.task == "binary":
            return {
                "dice": float(np.mean(self._dice)),
                "iou": float(np.mean(self._iou)),
                "images": self._images,
            }
        seen = np.flatnonzero(self._class_count > 0)
        per_class = {int(c): float(self._class_sum[c] / self._class_count[c]) for c in seen}
        return {
            "mean_iou": float(np.mean(self._iou)),
            "ch_iou": float(np.mean(self._ch)) if self._ch else 0.0,
            "isi_iou": float(np.mean(self._isi)) if self._isi else 0.0,
            "mc_iou": float(np.mean(list(per_class.values()))) if per_class else 0.0,
            "per_class_iou": per_class,
            "mean_dice": float(np.mean(self._dice)),
            "images": self._images,
        }
