"""The recorder writes playable H.264, survives SIGKILL, and refuses what it cannot record."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from loguru import logger

from orstream.pipeline.config import load_config
from orstream.pipeline.frame import Frame
from orstream.pipeline.recorder import Recorder, RecorderError, RotatingRecorder
from orstream.pipeline.stages import RecordStage

W, H, FPS = 320, 256, 30
REPO = Path(__file__).resolve().parents[1]


def gradient(i: int, width: int = W, height: int = H) -> np.ndarray:
    """A horizontal gradient scrolling by 4 px a frame; the channels differ so a swap shows."""
    img = np.empty((height, width, 3), np.uint8)
    x = np.arange(width)[None, :] * 256 // width
    img[..., 0] = (x + 4 * i) % 256
    img[..., 1] = (np.arange(height)[:, None] * 200 // height).astype(np.uint8)
    img[..., 2] = 40
    return img


def decode(path: Path) -> tuple[av.video.stream.VideoStream, list[av.VideoFrame]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream, list(container.decode(stream))


def test_records_h264_with_explicit_pts_one_second_gop_and_faithful_colour(tmp_path):
    path = tmp_path / "sub" / "a.mp4"  # the parent is created on the first frame
    with Recorder(path, fps=FPS) as rec:
        for i in range(60):
            rec.write(gradient(i))
    assert rec.frames_written == 60 and rec.path == path

    stream, frames = decode(path)
    assert stream.codec_context.name == "h264"
    assert (stream.width, stream.height) == (W, H)
    assert len(frames) == 60
    assert all(f.format.name == "yuv420p" for f in frames)
    assert [f.time for f in frames] == pytest.approx([i / FPS for i in range(60)], abs=1e-3)
    # A keyframe each half second and no others: a player seeks to within 0.5 s.
    assert [i for i, f in enumerate(frames) if f.key_frame] == [0, 15, 30, 45]
    # Lossy codec: compare channel means loosely (R ~128, G ~100, B 40 catch a swap).
    got = frames[30].to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0)
    want = gradient(30).reshape(-1, 3).mean(axis=0)
    assert got == pytest.approx(want, abs=6)
    with av.open(str(path)) as c:  # fragmented: the header is empty, fragments follow
        assert "mp4" in c.format.name
    assert path.read_bytes().count(b"moof") == 60  # a fragment per frame


def test_fractional_fps_and_mpeg_ts(tmp_path):
    with Recorder(tmp_path / "b.ts", fps=29.97) as rec:
        for i in range(40):
            rec.write(gradient(i))
    with av.open(str(tmp_path / "b.ts")) as c:
        assert c.format.name == "mpegts"
        stream = c.streams.video[0]
        frames = list(c.decode(stream))
    assert len(frames) == 40
    # The frame counter times every frame at i / (2997/100) s, not at 1/30 s steps.
    assert float(stream.average_rate) == pytest.approx(29.97, abs=0.01)
    times = np.array([f.time for f in frames])
    assert np.diff(times) == pytest.approx(np.full(39, float(1 / Fraction(2997, 100))),
                                           abs=2e-5)
    assert times[-1] - times[0] == pytest.approx(39 * 100 / 2997, abs=1e-4)


# The child records real-time 30 fps frames until it is killed. It says "recording" after the
# first frame so that the 5 s start then, not during its imports (slow on a loaded machine).
CHILD = """
import sys, time
import numpy as np
from orstream.pipeline.recorder import Recorder
W, H, FPS = 320, 256, 30
x = np.arange(W)[None, :] * 256 // W
rec = Recorder(sys.argv[1], fps=FPS)
img = np.zeros((H, W, 3), np.uint8)
t0 = time.monotonic()
i = 0
while True:
    img[..., 0] = (x + 4 * i) % 256
    img[..., 1] = i % 256
    rec.write(img)
    i += 1
    if i == 1:
        print("recording", flush=True)
    time.sleep(max(0.0, t0 + i / FPS - time.monotonic()))  # absolute deadlines: no drift
"""


def start_child(code: str, path: Path, log: Path) -> subprocess.Popen:
    """`code` in a fresh interpreter recording to `path`, stderr to `log`."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    with open(log, "w") as err:
        return subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=err, text=True)


def wait_for_line(child: subprocess.Popen, expected: str, log: Path) -> None:
    ready, _, _ = select.select([child.stdout], [], [], 60)
    line = child.stdout.readline() if ready else ""
    assert line.strip() == expected, log.read_text()


def kill_and_reap(child: subprocess.Popen) -> None:
    try:
        os.kill(child.pid, signal.SIGKILL)  # no close(), no trailer, no atexit
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()


def surviving_frame_times(path: Path) -> list[float]:
    """Times of the frames a killed recording still decodes to.

    Opening must work: the header was written at the start (a non-fragmented MP4 fails
    here, its moov never written). Only the tail may be broken: the kill can land while
    a fragment is half written, and decoding that one raises. Everything before it is
    complete, so count the frames decoded until the first error and stop there."""
    times = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        try:
            for packet in container.demux(stream):
                times += [f.time for f in packet.decode()]
        except av.FFmpegError:
            pass  # the truncated last fragment
    return times


def test_sigkill_after_5_s_leaves_at_least_4_s_playable(tmp_path):
    path, log = tmp_path / "x.mp4", tmp_path / "child.log"
    child = start_child(CHILD, path, log)
    try:
        wait_for_line(child, "recording", log)
        time.sleep(5.0)
        assert child.poll() is None, log.read_text()
    finally:
        kill_and_reap(child)
    times = surviving_frame_times(path)
    assert len(times) >= 4 * FPS, f"only {len(times)} frames survived the kill"
    assert times == sorted(times) and times[-1] >= 4.0 - 1.5 / FPS


# Writes 100 frames, says so, and waits to be killed: nothing closes or flushes the file.
CHILD_WRITES_100 = """
import sys, time
import numpy as np
from orstream.pipeline.recorder import Recorder
rec = Recorder(sys.argv[1], fps=30)
img = np.zeros((256, 320, 3), np.uint8)
for i in range(100):
    img[..., 0] = (np.arange(320)[None, :] + 4 * i) % 256
    rec.write(img)
print("written", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("name", ["k.mp4", "k.ts"])
def test_sigkill_loses_at_most_the_last_frame(tmp_path, name):
    """A fragment per frame: a kill costs one frame, not the rest of a keyframe interval
    (99 of 100 frames survive where fragments cut at keyframes kept 90)."""
    path, log = tmp_path / name, tmp_path / "child.log"
    child = start_child(CHILD_WRITES_100, path, log)
    try:
        wait_for_line(child, "written", log)
    finally:
        kill_and_reap(child)
    times = surviving_frame_times(path)
    assert len(times) >= 99, f"only {len(times)} of 100 frames survived the kill"
    assert times[:99] == pytest.approx([i / 30 for i in range(99)], abs=1e-3)


def test_size_change_is_refused_naming_both_sizes(tmp_path):
    path = tmp_path / "c.mp4"
    with Recorder(path, fps=FPS) as rec:
        rec.write(gradient(0))
        with pytest.raises(RecorderError, match=r"256x320.*320x256"):
            rec.write(gradient(1, width=256, height=320))
        rec.write(gradient(2))  # the recording goes on after a refused frame
        assert rec.frames_written == 2
    assert len(decode(path)[1]) == 2


def test_odd_size_is_cropped_by_its_last_row_and_column(tmp_path):
    path = tmp_path / "d.mp4"
    odd = np.full((H + 1, W + 1, 3), 100, np.uint8)
    odd[-1, :] = odd[:, -1] = (255, 0, 0)  # the row and column that must go
    with Recorder(path, fps=FPS) as rec:
        for _ in range(3):
            rec.write(odd)
        # The first frame's size, as given, is the size every frame must have.
        with pytest.raises(RecorderError, match=r"320x256.*321x257"):
            rec.write(gradient(0))
    stream, frames = decode(path)
    assert (stream.width, stream.height) == (W, H) and len(frames) == 3
    rgb = frames[-1].to_ndarray(format="rgb24").astype(float)
    # Cropped, not resized or cropped on the other side: no red left anywhere.
    assert np.abs(rgb - 100).max() < 12


def test_close_is_idempotent_and_nothing_is_created_before_the_first_frame(tmp_path):
    path = tmp_path / "new" / "e.mp4"
    rec = Recorder(path, fps=FPS)
    assert not path.parent.exists()
    rec.close()
    rec.close()
    assert not path.parent.exists()

    rec = Recorder(path, fps=FPS)
    for i in range(5):
        rec.write(gradient(i))
    rec.close()
    size = path.stat().st_size
    rec.close()
    assert path.stat().st_size == size and len(decode(path)[1]) == 5
    with pytest.raises(RecorderError, match="closed"):
        rec.write(gradient(5))


@pytest.mark.parametrize("where", ["under_a_file", "deep_under_a_file", "proc"])
def test_unwritable_path_names_the_path(tmp_path, where):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    path = {"under_a_file": a_file / "x.mp4",
            "deep_under_a_file": a_file / "sub" / "x.mp4",
            "proc": Path("/proc/orstream-no-such-dir/y.mp4")}[where]
    # Refused when built if foreseeable, else on the first frame (when it opens the file).
    with pytest.raises(RecorderError, match=re.escape(str(path))):
        Recorder(path, fps=FPS).write(gradient(0))
    assert not path.exists()


@pytest.mark.parametrize("bad", [
    np.zeros((H, W), np.uint8),
    np.zeros((H, W, 4), np.uint8),
    np.zeros((H, W, 3), np.float32),
])
def test_bad_frames_and_arguments_are_refused(tmp_path, bad):
    with pytest.raises(RecorderError, match="uint8"):
        Recorder(tmp_path / "f.mp4", fps=FPS).write(bad)
    for kwargs in ({"fps": 0}, {"fps": float("nan")}, {"fps": FPS, "crf": 52},
                   {"fps": FPS, "preset": "warp"}):
        with pytest.raises(RecorderError):
            Recorder(tmp_path / "f.mp4", **kwargs)
    with pytest.raises(RecorderError, match="f.avi"):
        Recorder(tmp_path / "f.avi", fps=FPS)


def test_keyframes_follow_media_time_when_frames_are_dropped(tmp_path):
    path = tmp_path / "sparse.mp4"
    frame = np.zeros((64, 96, 3), np.uint8)
    with Recorder(path, fps=30) as rec:
        for i in range(40):  # a pipeline keeping up at 10 fps: every third frame
            rec.write(frame, time_s=i / 10)
    with av.open(str(path)) as container:
        keys = [round(float(f.pts * f.time_base), 2) for f in container.decode(video=0)
                if f.key_frame]
    assert keys == [k / 2 for k in range(8)]  # every 0.5 s of video, not every 15 frames


def test_capture_times_keep_a_recording_with_drops_in_real_time(tmp_path):
    path = tmp_path / "drops.mp4"
    frame = np.zeros((64, 96, 3), np.uint8)
    with Recorder(path, fps=30) as rec:
        for t in (0.0, 0.1, 0.2, 0.2, 0.5):  # frames dropped in between; two in one tick
            rec.write(frame, time_s=t)
    with av.open(str(path)) as container:
        times = [float(f.pts * f.time_base) for f in container.decode(video=0)]
    assert times == pytest.approx([0.0, 0.1, 0.2, 0.2 + 1 / 30, 0.5], abs=1e-6)


# ------------------------------------------------------------------ rotation, names, failure


def frame_times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        return [float(f.pts * f.time_base) for f in container.decode(video=0)]


def test_rotation_writes_numbered_files_each_playable_alone_from_time_0(tmp_path):
    with RotatingRecorder(tmp_path / "proc.mp4", fps=FPS, rotate_s=1.0) as rec:
        for i in range(75):  # 2.5 s
            rec.write(gradient(i), time_s=i / FPS)
        for i in range(3):  # a stall: nothing from 2.5 to 5.2 s, then three frames
            rec.write(gradient(i), time_s=5.2 + i / FPS)
    names = ["proc-0001.mp4", "proc-0002.mp4", "proc-0003.mp4", "proc-0004.mp4"]
    assert [p.name for p in rec.paths] == names  # numbered on without a gap
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no proc.mp4, no .part
    assert rec.frames_written == 78
    for name, count in zip(names, [30, 30, 15, 3], strict=True):
        stream, frames = decode(tmp_path / name)
        assert len(frames) == count and frames[0].key_frame, name
        assert frame_times(tmp_path / name) == pytest.approx([i / FPS for i in range(count)],
                                                             abs=1e-3), name


def test_rotate_s_0_is_one_file_under_the_name_given_and_bad_values_are_refused(tmp_path):
    with RotatingRecorder(tmp_path / "one.ts", fps=FPS) as rec:
        for i in range(40):
            rec.write(gradient(i))
    assert [p.name for p in tmp_path.iterdir()] == ["one.ts"] and rec.paths == [
        tmp_path / "one.ts"]
    assert len(decode(tmp_path / "one.ts")[1]) == 40
    for bad in (-1, float("inf"), float("nan"), True):
        with pytest.raises(RecorderError, match="rotate_s"):
            RotatingRecorder(tmp_path / "x.mp4", fps=FPS, rotate_s=bad)
    with pytest.raises(ValueError, match=r"record\.rotate_s"):
        load_config(None, ["record.rotate_s=-5"])


def test_a_file_takes_its_name_only_once_a_frame_of_it_plays(tmp_path):
    """Killed in its first frames, a file leaves NAME.part, never a NAME that players refuse."""
    path = tmp_path / "a.mp4"
    part = tmp_path / "a.mp4.part"
    rec = Recorder(path, fps=FPS)
    rec.write(gradient(0))
    assert part.exists() and not path.exists()  # a header, the first frame not yet out
    rec.write(gradient(1))
    assert path.exists() and not part.exists()
    assert len(surviving_frame_times(path)) == 1  # plays while still being written
    rec.close()
    assert len(decode(path)[1]) == 2

    one = Recorder(tmp_path / "b.mp4", fps=FPS)
    one.write(gradient(0))
    one.close()  # a one-frame recording is complete at close
    assert [p.name for p in tmp_path.glob("b.mp4*")] == ["b.mp4"]
    assert len(decode(tmp_path / "b.mp4")[1]) == 1


def test_an_encoder_that_holds_frames_back_never_names_a_file_without_a_frame(tmp_path,
                                                                            monkeypatch):
    """A hardware encoder, or x264 with lookahead, returns a frame's packet frames later: the
    file is named only once a frame of it is on disk, whatever the encoder's delay."""
    from orstream.pipeline import recorder as recorder_module

    delayed = {"preset": "ultrafast", "x264-params": "rc-lookahead=8:sync-lookahead=8"
               ":bframes=0:keyint=15:min-keyint=15"}
    monkeypatch.setattr(recorder_module, "_x264_options", lambda *_: delayed)
    path = tmp_path / "a.mp4"
    rec = Recorder(path, fps=FPS)
    named_at = None
    for i in range(20):
        rec.write(gradient(i))
        if path.exists():
            named_at = i if named_at is None else named_at
            assert len(surviving_frame_times(path)) >= 1, f"named after frame {i}, no frame"
    rec.close()
    assert named_at is not None and named_at >= 2, named_at  # the encoder did hold frames
    assert len(decode(path)[1]) == 20


def test_a_failing_recording_stops_with_one_error_and_keeps_taking_frames(tmp_path):
    """A camera that changes size mid-procedure: the recording stops (one error line), what
    it holds is finalised, and the stage keeps draining its lossless input so render never
    waits on it. (A full disk takes the same path: tests/test_recording_faults.py.)"""
    path = tmp_path / "r.mp4"
    stage = RecordStage(load_config(None, record__path=str(path)), fps=FPS)
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="ERROR")
    try:
        for seq in range(20):
            image = gradient(seq) if seq < 10 else gradient(seq, width=W // 2, height=H // 2)
            frame = Frame("or-1", seq, seq * 33_333_333, 0, image)
            stage.process(frame)
        stage.close()
    finally:
        logger.remove(sink)
    assert len(lines) == 1 and re.match(r"recording stopped \(at seq 10\): frame 10 of .*r\.mp4 "
                                        r"is 160x128, but the first frame was 320x256", lines[0])
    assert "what was recorded before it stays playable" in lines[0]
    assert stage.unrecorded == 10
    assert len(decode(path)[1]) == 10


def test_a_recording_that_fails_at_its_first_frame_says_nothing_was_recorded(tmp_path):
    stage = RecordStage(load_config(None, record__path=str(tmp_path / "r.mp4")), fps=FPS)
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="ERROR")
    try:
        stage.process(Frame("or-1", 0, 0, 0, gradient(0, width=1, height=1)))  # too small
        stage.process(Frame("or-1", 1, 33_333_333, 0, gradient(1)))
        stage.close()
    finally:
        logger.remove(sink)
    assert len(lines) == 1 and "too small" in lines[0], lines
    assert "nothing was recorded" in lines[0] and "stays playable" not in lines[0]
    assert stage.unrecorded == 2 and not list(tmp_path.iterdir())
