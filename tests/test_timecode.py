"""The timecode in the pixels: round trips through scaling, H.264 and the overlay; a damaged
code reads as nothing, never as a wrong value; and `view --measure` against the traces."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import av
import cv2
import numpy as np
import pytest

from orstream.common.classes import CLASSES, palette
from orstream.common.crop import endovis_region
from orstream.common.net import free_port
from orstream.pipeline import timecode
from orstream.pipeline.config import ConfigError, load_config
from orstream.pipeline.overlay import OverlayRenderer
from orstream.pipeline.recorder import Recorder
from orstream.pipeline.runner import Pipeline
from orstream.pipeline.view import view
from orstream.training.synth.generator import SynthConfig, SyntheticEndoscope

# Values with every byte in use, so a swapped or shifted field cannot pass by chance.
SEQ, T_CAPTURE, T_WALL = 0x89ABCDEF, 0x0123_4567_89AB_CDEF, 0x1807_F00D_CAFE_BEEF


def _picture(width: int, height: int, index: int = 7) -> np.ndarray:
    return SyntheticEndoscope(SynthConfig(width=width, height=height)).render(index).image


def test_crc_is_ccitt_false():
    assert timecode.crc16(b"123456789") == 0x29B1  # the catalogue's check value


@pytest.mark.parametrize("size", [(1920, 1080), (1280, 720), (640, 360), (480, 270)])
def test_round_trip_at_each_size(size):
    image = _picture(*size)
    timecode.write(image, SEQ, T_CAPTURE, T_WALL)
    assert timecode.read(image) == timecode.Timecode(SEQ, T_CAPTURE, T_WALL)
    # A display shows it smaller (or larger) than it was sent, RGB or BGR.
    for shown in [(640, 360), (960, 540), (2560, 1440)]:
        resized = cv2.resize(image, shown, interpolation=cv2.INTER_AREA)
        assert timecode.read(resized) == timecode.Timecode(SEQ, T_CAPTURE, T_WALL), shown
    assert timecode.read(cv2.cvtColor(image, cv2.COLOR_RGB2BGR)).seq == SEQ


def test_seq_wraps_at_32_bits():
    image = _picture(640, 360)
    timecode.write(image, 2**32 + 5, T_CAPTURE, T_WALL)
    assert timecode.read(image).seq == 5


def test_code_stays_outside_the_segmentation_crop_and_the_field_of_view():
    for w, h in [(1920, 1080), (640, 360)]:
        image = np.full((h, w, 3), 77, np.uint8)
        timecode.write(image, SEQ, T_CAPTURE, T_WALL)
        changed = np.argwhere((image != 77).any(axis=2))
        y, x, rh, rw = endovis_region(h, w)
        assert changed[:, 1].max() < x, "the model would see the code"
        # The scope's circle (the synthetic generator's): the code lies wholly outside it.
        r2 = ((changed[:, 1] - w / 2) ** 2 + (changed[:, 0] - h / 2) ** 2).min()
        assert r2 > (0.58 * h) ** 2


def test_survives_h264_at_the_recorders_crf(tmp_path):
    """Through the project's recorder (x264, CRF 23 as configured by default), then the
    decoded 1080p shown at 640x360."""
    for size in [(1920, 1080), (640, 360)]:
        path = tmp_path / f"{size[0]}.mp4"
        base = _picture(*size)
        with Recorder(path, fps=30, crf=load_config().record.crf) as rec:
            for i in range(6):
                image = base.copy()
                timecode.write(image, SEQ + i, T_CAPTURE + i * 33_333_333, T_WALL + i)
                rec.write(image)
        with av.open(str(path)) as container:
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(decoded) == 6
        for i, image in enumerate(decoded):
            expected = timecode.Timecode(SEQ + i, T_CAPTURE + i * 33_333_333, T_WALL + i)
            assert timecode.read(image) == expected, (size, i)
            small = cv2.resize(image, (640, 360), interpolation=cv2.INTER_AREA)
            assert timecode.read(small) == expected, (size, i, "downscaled")


@pytest.mark.parametrize("size", [(1920, 1080), (640, 360)])
def test_survives_the_render_overlay(size):
    """Every class in the legend, the whole crop labelled, a long caption and the status
    line: none of it covers the code."""
    w, h = size
    names, colors = CLASSES["types"], palette("types")
    image = _picture(w, h)
    timecode.write(image, SEQ, T_CAPTURE, T_WALL)
    labels = (np.arange(256 * 320).reshape(256, 320) // 997 % len(names)).astype(np.uint8)
    caption = " ".join(["a large needle driver in the upper left grasps the tissue"] * 6)
    out = OverlayRenderer(names, colors).draw(
        image, labels, endovis_region(h, w), caption=caption, caption_age_s=1.5,
        status="29.9 fps | e2e p50 25 ms p99 40 ms | dropped 0")
    assert timecode.read(out) == timecode.Timecode(SEQ, T_CAPTURE, T_WALL)


def _blocks(image: np.ndarray) -> list[tuple[slice, slice]]:
    """Pixel slices of every block, row-major (row 0 is the sync row)."""
    ys, xs = timecode._layout(image.shape[0], image.shape[1])
    return [(slice(ys[r], ys[r + 1]), slice(xs[c], xs[c + 1]))
            for r in range(timecode.ROWS) for c in range(timecode.COLS)]


def test_any_single_flipped_block_reads_as_nothing():
    image = _picture(640, 360)
    timecode.write(image, SEQ, T_CAPTURE, T_WALL)
    for block in _blocks(image):
        damaged = image.copy()
        damaged[block] = 255 - damaged[block]
        assert timecode.read(damaged) is None


def test_damage_reads_as_nothing_never_as_another_value():
    rng = np.random.default_rng(3)
    image = _picture(640, 360)
    timecode.write(image, SEQ, T_CAPTURE, T_WALL)
    blocks = _blocks(image)
    data = blocks[timecode.COLS:]
    for _ in range(300):  # two to six flipped data blocks: the CRC's job
        damaged = image.copy()
        for i in rng.choice(len(data), rng.integers(2, 7), replace=False):
            damaged[data[i]] = 255 - damaged[data[i]]
        assert timecode.read(damaged) is None
    grey = image.copy()
    grey[data[40]] = 128  # neither black nor white: an erasure, not a guess
    assert timecode.read(grey) is None
    covered = image.copy()
    covered[blocks[0][0].start:, :blocks[0][1].start + 100] = 200  # text or a box over it
    assert timecode.read(covered) is None
    for nothing in [_picture(640, 360), np.zeros((360, 640, 3), np.uint8),
                    rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)]:
        assert timecode.read(nothing) is None


def test_too_small_frames_are_refused_to_write_and_unreadable():
    with pytest.raises(timecode.TimecodeError, match="too small"):
        timecode.write(np.zeros((256, 320, 3), np.uint8), 1, 2, 3)
    assert not timecode.fits(256, 320) and timecode.fits(270, 480)
    image = _picture(1920, 1080)
    timecode.write(image, SEQ, T_CAPTURE, T_WALL)
    assert timecode.read(cv2.resize(image, (320, 180), interpolation=cv2.INTER_AREA)) is None


# ------------------------------------------------------------------ in the pipeline


def test_the_synthetic_source_stamps_by_default_with_the_headers_values():
    cfg = load_config(None, ["source.width=640", "source.height=360", "segment.enabled=false"],
                      publish__endpoint=None)
    frames = []
    Pipeline(cfg, max_frames=5, on_frame=frames.append).run()
    assert len(frames) == 5
    for frame in frames:
        code = timecode.read(frame.overlay)
        assert code == timecode.Timecode(frame.seq, frame.t_capture_ns, frame.t_wall_ns)
        assert frame.trace[0][:2] == ("capture", code.t_capture_ns)


def test_timecode_off_and_too_small_frames():
    off = load_config(None, ["source.width=640", "source.height=360", "segment.enabled=false",
                             "source.timecode=false"], publish__endpoint=None)
    frames = []
    Pipeline(off, max_frames=2, on_frame=frames.append).run()
    assert timecode.read(frames[0].overlay) is None
    # auto leaves a test feed too small for the code unmarked; true says why it cannot.
    small = ["source.width=320", "source.height=256", "segment.enabled=false"]
    Pipeline(load_config(None, small, publish__endpoint=None), max_frames=2).run()
    with pytest.raises(ConfigError, match="source.timecode: .* too small"):
        Pipeline(load_config(None, [*small, "source.timecode=true"], publish__endpoint=None),
                 max_frames=2).run()
    with pytest.raises(ConfigError, match="source.timecode"):
        load_config(None, ["source.timecode=sometimes"])


def test_view_measure_agrees_with_the_frame_traces():
    """The Done-when: `view --measure` reads capture to display from the pixels it shows,
    here at 640x360 from the default 1080p pipeline with segmentation, and each frame's
    figure is within 2 ms of the same display instant minus the trace's capture time."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = load_config(None, publish__endpoint=endpoint)
    captured: dict[int, int] = {}  # seq -> capture time in the frame's trace
    pipeline = Pipeline(cfg, max_frames=400,
                        on_frame=lambda f: captured.__setitem__(f.seq, f.trace[0][1]))
    runner = threading.Thread(target=pipeline.run)
    runner.start()
    try:
        summary = view(endpoint, frames=30, window=False, timeout_s=60, quiet=True,
                       measure=True, size=(640, 360))
    finally:
        pipeline.request_stop()
        runner.join(30)
    glass = summary.glass
    assert summary.frames == 30 and glass.unreadable == 0 and glass.seq_mismatch == 0
    assert len(glass.samples) == 30
    for seq, shown_ns, pixel_ns in glass.samples:
        from_pixels = (shown_ns - pixel_ns) / 1e6
        from_trace = (shown_ns - captured[seq]) / 1e6
        assert abs(from_pixels - from_trace) < 2.0, seq
        assert from_pixels > 0


@pytest.mark.slow
def test_view_measure_cli_reports_glass_in_json():
    """As a user runs it: `orstream view ENDPOINT --measure --json` in its own process."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = load_config(None, ["segment.enabled=false"], publish__endpoint=endpoint)
    pipeline = Pipeline(cfg)
    runner = threading.Thread(target=pipeline.run)
    runner.start()
    try:
        done = subprocess.run([sys.executable, "-m", "orstream.pipeline.cli", "view", endpoint,
                               "--measure", "--json", "--headless", "--frames", "20",
                               "--timeout", "30"], capture_output=True, text=True, timeout=90)
    finally:
        pipeline.request_stop()
        runner.join(30)
    assert done.returncode == 0, done.stderr
    glass = json.loads(done.stdout)["glass_ms"]
    assert glass["frames"] == 20 and glass["unreadable"] == 0 and glass["seq_mismatch"] == 0
    assert glass["capture_diff_ms"]["mean_abs"] < 2.0
    assert abs(glass["p50"] - glass["header"]["p50"]) < 2.0
    assert 0 < glass["p50"] < glass["max"] + 1e-9
