"""INT8 calibration: sets spread over their sources, engines stored only when the accuracy
gate passes, and the pipeline running the gated engine."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from loguru import logger

from orstream.calibration.build import GateRefused, build_int8
from orstream.calibration.gate import judge
from orstream.calibration.sets import CalibrationError, GroundTruth, collect, load_set
from orstream.engines import checkpoint as ckpt
from orstream.engines.backends import BackendError
from orstream.engines.backends.base import needs_reduced_int8_range
from orstream.engines.cache import EngineCache
from orstream.engines.export import EngineSpec, open_engine
from orstream.pipeline.cli import main
from orstream.pipeline.config import load_config
from orstream.pipeline.runner import Pipeline
from orstream.training.synth.writers import write_video

WEIGHTS = ckpt.shipped("types")


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    return collect(["synthetic:5"], frames=100, holdout=50).save(path)


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory):
    """The README's set: the synthetic feed and a recording (which has no ground truth)."""
    folder = tmp_path_factory.mktemp("mixed")
    video = write_video(folder / "procedure.mp4", seconds=4, width=640, height=360, fps=25)
    return collect(["synthetic:5", str(video)], frames=100).save(folder / "calib.npz")


def test_a_set_is_spread_disjoint_and_carries_ground_truth(calib_file):
    calib = load_set(calib_file)
    assert calib.frames.shape == (100, 256, 320, 3) and calib.holdout.shape[0] == 50
    assert calib.holdout_truth["types"].labels.shape == (50, 256, 320)
    assert calib.holdout_truth["types"].known.all()
    calib_at = [w["index"] for w in calib.provenance["calibration"]]
    held_at = [w["index"] for w in calib.provenance["holdout"]]
    assert not set(calib_at) & set(held_at)  # the gate never judges on calibration frames
    assert max(calib_at) - min(calib_at) > 10 * len(calib_at)  # spread, not the first N
    assert len({f.tobytes() for f in calib.frames[::10]}) == 10


def test_too_few_frames_or_a_missing_source_is_refused(tmp_path):
    with pytest.raises(CalibrationError, match="at least 100"):
        collect(["synthetic"], frames=50)
    with pytest.raises(CalibrationError, match="does not exist"):
        collect([str(tmp_path / "nope.mp4")], frames=100)
    with pytest.raises(CalibrationError, match="not an orstream calibration set"):
        (tmp_path / "bad.npz").write_bytes(b"not numpy")
        load_set(tmp_path / "bad.npz")


def test_frames_from_a_recording_come_from_across_it(tmp_path):
    video = write_video(tmp_path / "proc.mp4", seconds=8, width=640, height=360, fps=25)
    calib = collect([str(video)], frames=100, holdout=50)
    times = [w["time_s"] for w in calib.provenance["calibration"]]
    assert calib.frames.shape == (100, 256, 320, 3) and calib.holdout_truth == {}
    assert times[0] == 0 and times[-1] > 7.5


def test_a_recording_in_the_set_keeps_the_synthetic_frames_ground_truth(mixed_file):
    calib = load_set(mixed_file)
    truth = calib.holdout_truth["types"]
    # 50 held out per source by default: enough synthetic frames for the gate to judge on.
    assert calib.holdout.shape[0] == 100 and truth.frames == 50
    synthetic = [w["source"] == "synthetic:5" for w in calib.provenance["holdout"]]
    assert truth.known.tolist() == synthetic
    assert sum((labels > 0).any() for labels in truth.labels) > 25  # instruments labelled
    assert calib.provenance["holdout_ground_truth"]["types"] == 50


def test_sets_saved_before_the_per_frame_mask_still_load(tmp_path):
    """Format /1 kept held-out labels only when every held-out frame had them."""
    frames = np.zeros((4, 32, 32, 3), np.uint8)
    labels = np.ones((3, 32, 32), np.uint8)
    for name, sources, stored in (("synthetic", ["synthetic"], {"holdout_labels_types": labels}),
                                  ("mixed", ["synthetic", "procedure.mp4"], {})):
        provenance = json.dumps({"format": "orstream.calib/1", "sources": sources})
        np.savez_compressed(tmp_path / f"{name}.npz", frames=frames, holdout=frames[:3],
                            provenance=np.array(provenance), **stored)
    truth = load_set(tmp_path / "synthetic.npz").holdout_truth["types"]
    assert truth.known.tolist() == [True] * 3 and (truth.labels == labels).all()
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    try:
        assert load_set(tmp_path / "mixed.npz").holdout_truth == {}
    finally:
        logger.remove(sink)
    assert any("calibrate collect` again" in w for w in warnings)


def _gate(truth_frames: int) -> dict:
    """Judge an INT8 engine as accurate as float that misses other pixels than float does
    (60 frames of 40 px, one instrument class), `truth_frames` of them with ground truth."""
    truth = np.zeros((60, 40), np.uint8)
    truth[:, :20] = 1
    float_labels = truth.copy()
    float_labels[:, 18:22] = 0  # float misses 2 px of the instrument, adds none
    int8 = float_labels.copy()
    int8[:, 18:22] = [1, 1, 0, 0]  # INT8 gets those 2 px right, misses 2 others
    int8[:, 16:18] = 0
    known = np.arange(60) < truth_frames
    report = judge(float_labels, int8, GroundTruth(known, truth[known]) if truth_frames
                   else None, ("background", "scissors"), "openvino", 1.0, "ground truth")
    return report.to_dict() | {"report": report}


def test_the_gate_decides_on_ground_truth_where_enough_frames_have_it():
    # Against ground truth INT8 is exactly as good as float; against float it lost ~11 points.
    enough = _gate(truth_frames=50)
    assert enough["passed"] and enough["reference"] == "ground truth"
    assert abs(enough["drop_dice_points"]) < 1e-9 and enough["truth_frames"] == 50
    assert enough["against_float"]["drop_dice_points"] > 10
    assert enough["against_float_without_truth"]["frames"] == 10
    assert "| ground truth, frames that have it | 50 |" in enough["report"].markdown()
    # Too few frames with ground truth to judge on: the float engine decides, and refuses.
    for few in (10, 0):
        report = _gate(truth_frames=few)
        assert not report["passed"] and report["reference"] == "float engine"
        assert report["drop_dice_points"] == report["against_float"]["drop_dice_points"]
        assert f"{few} of 60 held-out frames have ground truth" in report["why"]


def test_specks_of_a_class_do_not_swing_the_mean_against_the_float_engine():
    """Float labels 6 px of a class on one frame that INT8 does not (a recording's noise):
    against the float engine that class is listed with its 100-point drop but not averaged,
    so 99.99 % pixel agreement no longer reads as a 50-point drop. Against ground truth the
    same small class is real and counts."""
    float_labels = np.zeros((50, 64, 64), np.uint8)
    float_labels[:, 10:40, 10:30] = 1  # the instrument, identical in both engines
    int8 = float_labels.copy()
    float_labels[7, 50:52, 50:53] = 2  # 6 px of "clasper" only the float engine sees
    classes = ("background", "shaft", "clasper")
    report = judge(float_labels, int8, None, classes, "openvino", 1.0)
    rows = {c["name"]: c for c in report.against_float.classes}
    assert rows["clasper"]["drop_points"] == 100 and not rows["clasper"]["averaged"]
    assert rows["shaft"]["averaged"] and report.drop_dice_points == 0 and report.passed
    assert "clasper (not averaged)" in report.markdown()
    truth = GroundTruth(np.ones(50, bool), float_labels.copy())
    with_truth = judge(float_labels, int8, truth, classes, "openvino", 1.0)
    assert with_truth.reference == "ground truth" and with_truth.drop_dice_points == 50
    assert not with_truth.passed


@pytest.mark.parametrize("bits", [7, 8])
def test_weights_are_quantised_to_the_bits_asked_for(tmp_path, calib_file, bits):
    """7-bit weights (CPUs without VNNI) must stay within [-64, 64] so that two u8 x s8
    products never saturate a 16-bit sum; 8-bit ones use the full int8 range."""
    import onnx
    from onnx import numpy_helper

    from orstream.calibration.quantize import quantize_onnx
    from orstream.engines.backends.onnx_export import export_onnx

    checkpoint = ckpt.load(WEIGHTS)
    float_onnx = export_onnx(checkpoint, (256, 320), tmp_path / "float.onnx")
    out = quantize_onnx(float_onnx, load_set(calib_file).frames[:20], tmp_path / "int8.onnx",
                        weight_bits=bits)
    weights = [numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and t.dims and len(t.dims) == 4]
    assert len(weights) > 10  # every convolution's kernel
    low, high = min(int(w.min()) for w in weights), max(int(w.max()) for w in weights)
    if bits == 7:
        assert low >= -64 and high <= 64  # 2 x 255 x 64 = 32640 <= 32767
    else:
        assert high == 127 or low == -127  # per-channel scales use the full range


def test_a_gated_int8_engine_is_stored_and_runs_the_pipeline(tmp_path, mixed_file,
                                                            monkeypatch):
    """The README's sequence: a set of synthetic frames and a recording, built, then run."""
    monkeypatch.setenv("ORSTREAM_ENGINE_CACHE", str(tmp_path / "engines"))
    with pytest.raises(BackendError) as missing:  # nothing calibrated yet: say how
        open_engine(EngineSpec(WEIGHTS, "openvino", "int8"))
    assert (f"`orstream calibrate collect --source synthetic --frames 300 --size 320x256 "
            f"--out calib.npz && orstream calibrate build --weights {WEIGHTS} --backend "
            f"openvino --calib calib.npz`") in str(missing.value)
    assert "\n" not in str(missing.value) and missing.value.exit_code == 2

    # The stored build time is the quantisation's and the compile's, not the copy's.
    import orstream.calibration.build as build_module

    quantising: list[float] = []

    def timed_quantize(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return quantize_onnx(*args, **kwargs)
        finally:
            quantising.append(time.perf_counter() - t0)

    quantize_onnx = build_module.quantize_onnx
    monkeypatch.setattr(build_module, "quantize_onnx", timed_quantize)
    assert main(["calibrate", "build", "--weights", str(WEIGHTS), "--backend", "openvino",
                 "--calib", str(mixed_file)]) == 0
    (entry,) = [e for e in EngineCache().entries() if "int8" in e.folder.name]
    assert len(quantising) == 1 and entry.meta["build_s"] >= quantising[0] > 0.1
    report = json.loads((entry.folder / "report.json").read_text())
    assert report["passed"] and report["drop_dice_points"] <= 1.0
    # Judged on the synthetic frames' ground truth, though a recording is in the set.
    assert report["reference"] == "ground truth (types)" and report["truth_frames"] == 50
    assert report["against_float_without_truth"]["frames"] == 50
    assert report["pixel_agreement"] > 0.98
    assert report["weight_bits"] == (7 if needs_reduced_int8_range() else 8)
    assert (entry.folder / "report.md").read_text().startswith("# INT8 accuracy gate")

    cfg = load_config(None, ["segment.precision=int8", "source.width=640",
                             "source.height=360"], publish__endpoint=None)
    result = Pipeline(cfg, max_frames=10).run()
    assert result.frames_out == 10


def test_a_bad_calibration_set_is_refused_and_nothing_is_stored(tmp_path, calib_file):
    bad = load_set(calib_file)
    # Calibrated on black frames: activation ranges that real video saturates.
    bad.frames = np.zeros_like(bad.frames)
    bad.save(tmp_path / "black.npz")
    cache = EngineCache(tmp_path / "engines")
    with pytest.raises(GateRefused, match="refused: mean Dice against ground truth") as refused:
        build_int8(WEIGHTS, "onnxruntime", tmp_path / "black.npz", cache=cache,
                   report_dir=tmp_path / "report")
    assert refused.value.report.drop_dice_points > 1.0
    message = str(refused.value)  # one line: the classes lost, and what to do about it
    worst = refused.value.report.classes[0]["name"]
    assert "\n" not in message and worst in message and refused.value.exit_code == 1
    for advice in ("--frames", "--method entropy or percentile", "--threshold", "fp32"):
        assert advice in message
    assert not [e for e in cache.entries() if "int8" in e.folder.name]
    assert "REFUSED" in (tmp_path / "report" / "report.md").read_text()
