"""Unit tests of training.metrics on small label maps whose scores are worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from orstream.training.metrics import SegmentationMetrics, binary_dice, binary_iou, ternausnet_iou


def a(rows: list[list[int]]) -> np.ndarray:
    return np.array(rows, dtype=np.uint8)


# Two foreground classes, both partly recovered, no false-positive class.
#   class 1: GT {(0,0),(0,1),(1,0),(1,1)}, pred {(0,0),(0,1),(0,2),(1,0)} -> I=3, U=5, IoU 0.6
#            Dice 2*3/(4+4) = 3/4
#   class 2: GT {(0,2),(0,3),(1,2),(1,3)}, pred {(0,3),(1,2),(1,3)}       -> I=3, U=4, IoU 0.75
#            Dice 2*3/(4+3) = 6/7
TWO_GT = a([[1, 1, 2, 2], [1, 1, 2, 2]])
TWO_PRED = a([[1, 1, 1, 2], [1, 0, 2, 2]])
TWO_IOU = (0.6 + 0.75) / 2  # 0.675 for TernausNet, Challenge and ISI alike
TWO_DICE = (3 / 4 + 6 / 7) / 2

# Same GT, the prediction adds class 3 that the GT lacks.
#   class 1: pred {(0,0),(0,1),(0,2),(1,0)} -> I=3, U=5, IoU 0.6, Dice 6/8
#   class 2: pred {(0,3),(1,2)}             -> I=2, U=4, IoU 0.5, Dice 4/6
#   class 3: pred {(1,3)}, not in GT        -> I=0, U=1, IoU 0.0
FP_GT = TWO_GT
FP_PRED = a([[1, 1, 1, 2], [1, 0, 2, 3]])
FP_TERNAUS = (0.6 + 0.5) / 2  # 0.55: only GT classes count
FP_ISI = (0.6 + 0.5 + 0.0) / 3  # 0.3667: the false-positive class counts
FP_DICE = (3 / 4 + 2 / 3) / 2

# Instruments in the GT, nothing predicted: zeros for classes 1 and 2.
MISS_GT = a([[0, 1], [2, 2]])
MISS_PRED = a([[0, 0], [0, 0]])

EMPTY = a([[0, 0], [0, 0]])


# --- binary_dice / binary_iou ---------------------------------------------------------------


def test_binary_partial_overlap() -> None:
    # A = {(0,0),(0,1),(1,1)}, B = {(0,0),(1,1),(1,2)}: |A∩B| = 2, |A∪B| = 4, |A| = |B| = 3.
    # 255 and 3 must both count as foreground.
    y_true = a([[255, 255, 0], [0, 255, 0]])
    y_pred = a([[1, 0, 0], [0, 2, 3]])
    assert binary_iou(y_true, y_pred) == pytest.approx(2 / 4)
    assert binary_dice(y_true, y_pred) == pytest.approx(2 * 2 / (3 + 3))


def test_binary_both_empty_is_one() -> None:
    # (0 + eps) / (0 + eps) = 1
    assert binary_iou(EMPTY, EMPTY) == pytest.approx(1.0)
    assert binary_dice(EMPTY, EMPTY) == pytest.approx(1.0)


@pytest.mark.parametrize("swap", [False, True])
def test_binary_one_empty_is_zero(swap: bool) -> None:
    # (0 + eps) / (1 + eps) ~ 0, whichever of the two is empty.
    full = a([[0, 1], [0, 0]])
    y_true, y_pred = (EMPTY, full) if swap else (full, EMPTY)
    assert binary_iou(y_true, y_pred) == pytest.approx(0.0, abs=1e-12)
    assert binary_dice(y_true, y_pred) == pytest.approx(0.0, abs=1e-12)


def test_binary_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        binary_dice(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        binary_iou(np.zeros((2, 3)), np.zeros((3, 2)))


# --- ternausnet_iou -------------------------------------------------------------------------


def test_ternausnet_iou_ignores_prediction_only_classes() -> None:
    assert ternausnet_iou(TWO_GT, TWO_PRED) == pytest.approx(TWO_IOU)
    # Class 3 only in the prediction: mean over GT classes 1 and 2 only, 0.55 not 0.3667.
    assert ternausnet_iou(FP_GT, FP_PRED) == pytest.approx(FP_TERNAUS)


def test_ternausnet_iou_empty_rules() -> None:
    assert ternausnet_iou(EMPTY, EMPTY) == 1.0
    assert ternausnet_iou(EMPTY, a([[0, 0], [0, 3]])) == 0.0
    assert ternausnet_iou(MISS_GT, MISS_PRED) == pytest.approx(0.0, abs=1e-12)


def test_ternausnet_iou_is_not_binary_iou() -> None:
    # Foreground everywhere in both, but the classes are swapped: binary IoU 1, per-class IoU 0.
    y_true = a([[1, 2]])
    y_pred = a([[2, 1]])
    assert binary_iou(y_true, y_pred) == pytest.approx(1.0)
    assert ternausnet_iou(y_true, y_pred) == pytest.approx(0.0, abs=1e-12)


# --- SegmentationMetrics, binary task ------------------------------------------------------


def test_accumulator_binary() -> None:
    m = SegmentationMetrics(2, "binary")
    # Image 1 as in test_binary_partial_overlap: Dice 2/3, IoU 1/2. Image 2 empty: 1 and 1.
    m.update(a([[255, 255, 0], [0, 255, 0]]), a([[1, 0, 0], [0, 2, 3]]))
    m.update(EMPTY, EMPTY)
    out = m.compute()
    assert out["dice"] == pytest.approx((2 / 3 + 1) / 2)
    assert out["iou"] == pytest.approx((1 / 2 + 1) / 2)
    assert out["images"] == 2


def test_accumulator_binary_needs_two_classes() -> None:
    with pytest.raises(ValueError, match="num_classes=2"):
        SegmentationMetrics(3, "binary")


# --- SegmentationMetrics, multi-class tasks ------------------------------------------------


def run(*pairs: tuple[np.ndarray, np.ndarray], num_classes: int = 5) -> dict:
    m = SegmentationMetrics(num_classes, "parts")
    for y_true, y_pred in pairs:
        m.update(y_true, y_pred)
    return m.compute()


def test_two_gt_classes_partial_overlap() -> None:
    out = run((TWO_GT, TWO_PRED))
    assert out["mean_iou"] == pytest.approx(TWO_IOU)
    assert out["ch_iou"] == pytest.approx(TWO_IOU)
    assert out["isi_iou"] == pytest.approx(TWO_IOU)
    assert out["per_class_iou"] == pytest.approx({1: 0.6, 2: 0.75})
    assert out["mc_iou"] == pytest.approx(TWO_IOU)
    assert out["mean_dice"] == pytest.approx(TWO_DICE)
    assert out["images"] == 1


def test_false_positive_class_lowers_isi_not_challenge() -> None:
    out = run((FP_GT, FP_PRED))
    assert out["mean_iou"] == pytest.approx(FP_TERNAUS)
    assert out["ch_iou"] == pytest.approx(FP_TERNAUS)  # GT classes 1, 2: (0.6 + 0.5) / 2
    assert out["isi_iou"] == pytest.approx(FP_ISI)  # classes 1, 2, 3: (0.6 + 0.5 + 0) / 3
    assert out["per_class_iou"] == pytest.approx({1: 0.6, 2: 0.5, 3: 0.0})
    assert out["mc_iou"] == pytest.approx(FP_ISI)
    assert out["mean_dice"] == pytest.approx(FP_DICE)


def test_empty_prediction_scores_zero_for_gt_classes() -> None:
    out = run((MISS_GT, MISS_PRED))
    assert out["mean_iou"] == pytest.approx(0.0, abs=1e-12)
    assert out["mean_dice"] == pytest.approx(0.0, abs=1e-12)
    assert out["ch_iou"] == 0.0
    assert out["isi_iou"] == 0.0
    # One zero for each GT class, none for classes 3 and 4.
    assert out["per_class_iou"] == {1: 0.0, 2: 0.0}
    assert out["mc_iou"] == 0.0


def test_empty_image_skipped_by_isinet_metrics() -> None:
    alone = run((EMPTY, EMPTY))
    # TernausNet counts it as perfect; ISINet has nothing to average, hence the 0.0 defaults.
    assert alone["mean_iou"] == 1.0
    assert alone["mean_dice"] == 1.0
    assert alone["ch_iou"] == 0.0
    assert alone["isi_iou"] == 0.0
    assert alone["per_class_iou"] == {}
    assert alone["mc_iou"] == 0.0
    assert alone["images"] == 1

    out = run((TWO_GT, TWO_PRED), (EMPTY, EMPTY))
    # Skipped: ISINet scores are those of the first image alone, not halved.
    assert out["ch_iou"] == pytest.approx(TWO_IOU)
    assert out["isi_iou"] == pytest.approx(TWO_IOU)
    assert out["per_class_iou"] == pytest.approx({1: 0.6, 2: 0.75})
    # TernausNet's mean does count it: (0.675 + 1) / 2.
    assert out["mean_iou"] == pytest.approx((TWO_IOU + 1.0) / 2)
    assert out["images"] == 2


def test_empty_gt_with_prediction_counts_for_isi_only() -> None:
    # Image 2: GT empty, class 3 predicted -> ISI list gets IoU_3 = 0, Challenge list nothing.
    out = run((TWO_GT, TWO_PRED), (EMPTY, a([[0, 3], [0, 0]])))
    assert out["ch_iou"] == pytest.approx(TWO_IOU)  # 0.675, image 2 absent
    assert out["isi_iou"] == pytest.approx((TWO_IOU + 0.0) / 2)  # 0.3375
    assert out["mean_iou"] == pytest.approx((TWO_IOU + 0.0) / 2)  # TernausNet: empty GT -> 0
    assert out["per_class_iou"] == pytest.approx({1: 0.6, 2: 0.75, 3: 0.0})
    assert out["mc_iou"] == pytest.approx((0.6 + 0.75 + 0.0) / 3)  # 0.45


def test_per_class_and_mc_iou_across_images() -> None:
    out = run(
        (TWO_GT, TWO_PRED),  # c1 0.6, c2 0.75             ch 0.675  isi 0.675
        (FP_GT, FP_PRED),  # c1 0.6, c2 0.5, c3 0.0       ch 0.55   isi 0.3667
        (MISS_GT, MISS_PRED),  # c1 0, c2 0               ch 0      isi 0
        (EMPTY, EMPTY),  # skipped by ISINet; TernausNet IoU and Dice 1
    )
    # Per class, mean of its per-image values (not a pooled confusion matrix):
    #   c1 = (0.6 + 0.6 + 0) / 3 = 0.4; c2 = (0.75 + 0.5 + 0) / 3 = 0.41667; c3 = 0 / 1 = 0.
    # Class 4 never appears, so it is left out rather than NaN.
    c1, c2, c3 = 1.2 / 3, 1.25 / 3, 0.0
    assert out["per_class_iou"] == pytest.approx({1: c1, 2: c2, 3: c3})
    assert set(out["per_class_iou"]) == {1, 2, 3}
    assert out["mc_iou"] == pytest.approx((c1 + c2 + c3) / 3)  # 0.27222
    assert out["ch_iou"] == pytest.approx((TWO_IOU + FP_TERNAUS + 0.0) / 3)  # 0.40833
    assert out["isi_iou"] == pytest.approx((TWO_IOU + FP_ISI + 0.0) / 3)  # 0.34722
    assert out["mean_iou"] == pytest.approx((TWO_IOU + FP_TERNAUS + 0.0 + 1.0) / 4)  # 0.55625
    assert out["mean_dice"] == pytest.approx((TWO_DICE + FP_DICE + 0.0 + 1.0) / 4)
    assert out["images"] == 4


def test_mean_iou_matches_ternausnet_iou() -> None:
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 4, (6, 7)), rng.integers(0, 4, (6, 7))) for _ in range(5)]
    pairs.append((EMPTY, EMPTY))
    out = run(*pairs, num_classes=4)
    expected = np.mean([ternausnet_iou(t, p) for t, p in pairs])
    assert out["mean_iou"] == pytest.approx(expected)


def test_uint8_ids_do_not_overflow() -> None:
    # 31 * 32 + 31 overflows uint8; a perfect prediction must still give IoU 1 for class 31.
    m = SegmentationMetrics(32, "types")
    y = np.full((2, 2), 31, dtype=np.uint8)
    m.update(y, y.copy())
    out = m.compute()
    assert out["per_class_iou"] == {31: 1.0}
    assert out["ch_iou"] == pytest.approx(1.0)


def test_results_are_plain_python_and_json_serialisable() -> None:
    out = run((FP_GT, FP_PRED), (EMPTY, EMPTY))
    json.dumps(out)
    assert type(out["images"]) is int
    for key in ("mean_iou", "ch_iou", "isi_iou", "mc_iou", "mean_dice"):
        assert type(out[key]) is float
    assert all(type(k) is int and type(v) is float for k, v in out["per_class_iou"].items())


# --- errors ---------------------------------------------------------------------------------


def test_update_shape_mismatch_names_both_shapes() -> None:
    m = SegmentationMetrics(5, "parts")
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(4, 2\)"):
        m.update(np.zeros((2, 4), np.uint8), np.zeros((4, 2), np.uint8))
    assert m.images == 0  # the rejected image was not counted


def test_compute_without_images() -> None:
    m = SegmentationMetrics(5, "parts")
    with pytest.raises(ValueError, match="no images were evaluated"):
        m.compute()
    m.update(TWO_GT, TWO_PRED)
    m.reset()
    with pytest.raises(ValueError, match="no images were evaluated"):
        m.compute()


def test_rejects_out_of_range_ids_and_unknown_task() -> None:
    m = SegmentationMetrics(3, "parts")
    with pytest.raises(ValueError, match="y_pred"):
        m.update(a([[0, 1]]), a([[0, 3]]))
    with pytest.raises(ValueError, match="unknown task"):
        SegmentationMetrics(3, "instances")
