"""Recorded procedures as sources: every frame once (lossless), the recording's own clock
(paced, VFR), loop/start/end, the factory's choices, and damaged files."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from loguru import logger

from orstream.common.errors import OrstreamError
from orstream.engines.checkpoint import shipped
from orstream.pipeline.capture import CaptureThread
from orstream.pipeline.cli import main
from orstream.pipeline.config import SourceConfig, load_config
from orstream.pipeline.runner import Pipeline
from orstream.pipeline.sources import (
    Captured,
    Source,
    SourceError,
    SourceInfo,
    SyntheticSource,
    VideoFileSource,
    open_source,
    source_kind,
)

W, H, FPS = 160, 128, 30


# ------------------------------------------------------------------ helpers


def picture(i: int) -> np.ndarray:
    """A gradient scrolling 4 px a frame and a bright square moving across: each frame
    differs, so an out-of-order or repeated frame shows."""
    img = np.empty((H, W, 3), np.uint8)
    img[..., 0] = (np.arange(W)[None, :] * 256 // W + 4 * i) % 256
    img[..., 1] = (np.arange(H)[:, None] * 200 // H).astype(np.uint8)
    img[..., 2] = 40
    x = (6 * i) % (W - 16)
    img[40:56, x:x + 16] = 250
    return img


def encode(path: Path, frames: int = 60, codec: str = "libx264", pix_fmt: str = "yuv420p",
           pts_ms: list[int] | None = None, options: dict[str, str] | None = None) -> Path:
    """`frames` pictures at 30 fps, or at `pts_ms` (milliseconds) for variable frame rate."""
    times = pts_ms if pts_ms is not None else [round(i * 1000 / FPS) for i in range(frames)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        stream.codec_context.time_base = Fraction(1, 1000)
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", **(options or {})}
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(picture(i), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def reference(path: Path) -> list[np.ndarray]:
    """What a plain, separate PyAV decode gets: the frame count ffprobe -count_frames gives."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def take(source: Source, limit: int | None = None) -> list[Captured]:
    """Frames through the real capture thread, until the end or `limit`."""
    stop = threading.Event()
    got = []
    with CaptureThread(source) as capture:
        for item in capture.frames(stop):
            got.append(item)
            if limit is not None and len(got) >= limit:
                stop.set()
    return got


def file_source(path: Path, **kw) -> VideoFileSource:
    source = open_source(SourceConfig(spec=str(path), **kw))
    assert isinstance(source, VideoFileSource)
    return source


def weights() -> str:
    """The shipped types model, or the binary one while the types model is being trained."""
    for task in ("types", "binary"):
        if shipped(task).is_file():
            return str(shipped(task))
    pytest.skip("no shipped weights")


def pipeline_config(path: Path, *overrides: str):
    # One torch thread: on a busy 2-core box it is several times faster than two.
    return load_config(None, [f"source.spec={path}", f"segment.weights={weights()}",
                              "segment.threads=1", "publish.endpoint=null", *overrides])


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """2 s at 30 fps, H.264 in MP4 with a keyframe every 10 frames (so seeks really jump)."""
    return encode(tmp_path_factory.mktemp("clip") / "clip.mp4", 60, options={"g": "10"})


@pytest.fixture()
def warnings() -> Iterator[list[str]]:
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
    yield messages
    logger.remove(sink)


# ------------------------------------------------------------------ lossless


def test_lossless_replay_through_the_pipeline_renders_every_frame_once(tmp_path):
    path = encode(tmp_path / "n.mp4", 20)
    cfg = pipeline_config(path, "source.mode=lossless")
    assert cfg.edges["capture->segment"].mode == "latest"  # the default, not overridden
    pipeline = Pipeline(cfg)
    result = pipeline.run()
    count = len(reference(path))
    assert count == 20
    assert result.frames_out == count and result.dropped == 0
    # The source made the capture edge lossless, and order was kept end to end.
    assert pipeline.graph.edge("capture->segment").mode == "lossless"
    assert result.stages == {"segment": count, "render": count, "null": count}


@pytest.mark.parametrize("name,codec,pix_fmt", [
    ("a.ts", "libx264", "yuv420p"),
    ("a.mkv", "ffv1", "gray"),
    ("a.mov", "prores_ks", "yuv422p10le"),
    ("a.avi", "mjpeg", "yuvj420p"),
    ("a.webm", "libvpx-vp9", "yuv420p"),
])
def test_any_container_codec_and_pixel_format_replays_losslessly_as_rgb(tmp_path, name, codec,
                                                                         pix_fmt):
    path = encode(tmp_path / name, 12, codec=codec, pix_fmt=pix_fmt)
    want = reference(path)
    got = take(file_source(path, mode="lossless"))
    assert len(want) == 12 and len(got) == len(want)
    assert [g.index for g in got] == list(range(12))
    assert [g.media_s for g in got] == pytest.approx([i / FPS for i in range(12)], abs=2e-3)
    for g, w in zip(got, want, strict=True):
        assert g.image.shape == (H, W, 3) and g.image.dtype == np.uint8
        assert np.array_equal(g.image, w)


# ------------------------------------------------------------------ paced, VFR


def test_paced_replay_runs_at_the_recordings_rate_and_counts_drops(clip):
    cfg = pipeline_config(clip)  # paced is the default mode
    pipeline = Pipeline(cfg, keep_traces=True)
    result = pipeline.run()
    assert pipeline.graph.edge("capture->segment").mode == "latest"
    captured = sorted(t[0][1] for t in result.traces)  # capture times of rendered frames
    span = (captured[-1] - captured[0]) / 1e9
    assert 1.5 <= span <= 3.5, f"2 s of video took {span:.2f} s"
    # Every frame of the recording was either rendered or counted as dropped (the first
    # few may go uncounted: a gap is only seen after the first frame received).
    assert 55 <= result.frames_out + result.dropped <= 60
    assert result.frames_out >= 5


def test_variable_frame_rate_is_replayed_on_its_own_timestamps(tmp_path):
    pts_ms = [0, 40, 60, 200, 230, 500, 520, 540, 800, 1000]
    path = encode(tmp_path / "vfr.mkv", pts_ms=pts_ms)
    got = take(file_source(path, mode="paced"))
    assert [g.media_s for g in got] == pytest.approx([t / 1000 for t in pts_ms], abs=1e-3)
    released = [(g.t_capture_ns - got[0].t_capture_ns) / 1e9 for g in got]
    # Each frame goes out at its own time, not at the nominal 30 fps (which would end at
    # 0.3 s); the slack allows for a busy machine.
    assert released == pytest.approx([t / 1000 for t in pts_ms], abs=0.03)


# ------------------------------------------------------------------ loop, start, end


def test_loop_restarts_at_the_end_and_pacing_continues_smoothly(tmp_path):
    path = encode(tmp_path / "short.mp4", 15)  # 0.5 s
    got = take(file_source(path, mode="paced", loop=True), limit=40)
    assert [g.index for g in got] == list(range(40))  # the index runs on across passes
    media = [g.media_s for g in got]
    assert media[:15] == media[15:30] and media[0] == 0 and media[15] == 0
    gaps = np.diff([g.t_capture_ns for g in got]) / 1e9
    # The restart comes one frame after the last, like every other step (lenient: busy CI).
    assert gaps[14] == pytest.approx(1 / FPS, abs=0.02)
    assert gaps.sum() == pytest.approx(39 / FPS, abs=0.25)
    assert np.array_equal(got[15].image, got[0].image)


@pytest.mark.parametrize("name", ["range.mp4", "range.ts"])
def test_start_and_end_select_the_range_by_timestamp(tmp_path, name):
    # keyframes every 10 frames: the seek lands on one before 0.5 s; MPEG-TS seeks land
    # past it, and the source falls back to decoding from the first packet
    path = encode(tmp_path / name, 60, options={"g": "10"})
    want = reference(path)
    got = take(file_source(path, mode="lossless", start=0.5, end=1.5))
    assert len(got) == 30
    assert got[0].media_s == pytest.approx(0.5, abs=2e-3)
    assert got[-1].media_s == pytest.approx(1.5 - 1 / FPS, abs=2e-3)
    for g, w in zip(got, want[15:45], strict=True):
        assert np.array_equal(g.image, w)


def test_start_past_the_end_and_an_empty_range_are_refused(clip):
    with pytest.raises(SourceError, match=r"clip\.mp4: start 5 s is past the end"):
        file_source(clip, start=5)
    with pytest.raises(ValueError, match="end .* must be after start"):
        SourceConfig(spec=str(clip), start=1.0, end=0.5)


def test_decoder_threading_defaults_per_mode_and_overrides(clip):
    for mode in ("paced", "lossless"):  # measured: frame threading wins in both modes
        source = file_source(clip, mode=mode)
        assert (source.thread_type, source.threads) == ("AUTO", 0)
    single = file_source(clip, thread_type="none")
    assert (single.thread_type, single.threads) == ("NONE", 0)
    tuned = file_source(clip, mode="lossless", thread_type="frame", decoder_threads=2)
    assert (tuned.thread_type, tuned.threads) == ("FRAME", 2)
    assert len(take(tuned)) == 60


# ------------------------------------------------------------------ the factory


def test_factory_picks_the_source_from_the_spec(clip):
    synthetic = open_source(SourceConfig(spec="synthetic", width=64, height=64))
    assert isinstance(synthetic, SyntheticSource) and synthetic.info.live
    paced = file_source(clip)
    info = paced.info
    assert (info.name, info.live, info.width, info.height) == (str(clip), True, W, H)
    assert info.fps == pytest.approx(FPS, rel=1e-3)
    assert not file_source(clip, mode="lossless").info.live
    kinds = {spec: source_kind(spec) for spec in [
        "synthetic", str(clip), "rtsp://10.0.0.2/or1", "SRT://host:9000", "udp://@:1234",
        "http://x/a.m3u8", "https://x/a.mp4", "camera:0", "/dev/video2", "ftp://x/a.mp4"]}
    assert list(kinds.values()) == ["synthetic", "file", "network", "network", "network",
                                    "network", "network", "camera", "camera", "unknown"]


# ------------------------------------------------------------------ bad input


def test_a_spec_no_source_serves_is_an_expected_error_naming_the_choices():
    with pytest.raises(SourceError, match="ftp://x/a.mp4: unknown scheme.*rtsp://") as err:
        open_source(SourceConfig(spec="ftp://x/a.mp4"))
    assert isinstance(err.value, OrstreamError) and err.value.exit_code == 2


def test_unopenable_files_fail_before_the_pipeline_starts_naming_file_and_fix(tmp_path, clip):
    random_bytes = tmp_path / "noise.mp4"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(200_000))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    cut = tmp_path / "cut.mp4"  # the moov index is at the end: cut in half, it is gone
    data = clip.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    cases = {
        tmp_path / "missing.mp4": r"no such file \(give a video path",
        random_bytes: r"cannot be read as video .*is it a video\?",
        empty: r"the file is empty \(0 bytes\).*Give another file",
        cut: r"cannot be read as video .*cut short.*record to \.ts or fragmented MP4",
        tmp_path: r"not a regular file",
    }
    for path, message in cases.items():
        with pytest.raises(SourceError, match=rf"^source {re.escape(str(path))}: {message}"):
            open_source(SourceConfig(spec=str(path)))


def test_replay_command_reports_a_bad_file_without_a_traceback(tmp_path, capsys):
    code = main(["replay", str(tmp_path / "missing.mp4"), "--set",
                 f"segment.weights={weights()}", "--set", "publish.endpoint=null"])
    assert code == 2
    assert "missing.mp4: no such file" in capsys.readouterr().err


def test_replay_command_runs_the_pipeline_with_the_run_options(tmp_path, clip):
    out = tmp_path / "overlay.mp4"
    code = main(["replay", str(clip), "--mode", "lossless", "--start", "1", "--frames", "8",
                 "--record", str(out), "--set", f"segment.weights={weights()}",
                 "--set", "segment.threads=1", "--publish", "null"])
    assert code == 0
    assert len(reference(out)) == 8
    # Lossless replay runs as fast as the model allows, yet the recording keeps the
    # source's timing: 8 frames of a 30 fps clip span 7/30 s.
    import av

    with av.open(str(out)) as container:
        times = [float(f.pts * f.time_base) for f in container.decode(video=0)]
    assert times[-1] - times[0] == pytest.approx(7 / 30, abs=0.01)


def test_a_truncated_transport_stream_replays_what_is_there(tmp_path, warnings):
    whole = encode(tmp_path / "whole.ts", 60)
    cut = tmp_path / "cut.ts"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    want = reference(whole)
    got = take(file_source(cut, mode="lossless"))
    assert 20 <= len(got) < 60
    for g, w in zip(got, want, strict=False):  # nothing decoded before the cut is lost
        assert np.array_equal(g.image, w)


@pytest.mark.parametrize("name", ["damaged.ts", "damaged.mp4"])
def test_corruption_in_the_middle_is_skipped_counted_and_the_replay_goes_on(tmp_path, name,
                                                                           warnings):
    path = encode(tmp_path / name, 60, options={"g": "15"})
    want = reference(path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 3000] = np.random.default_rng(1).bytes(3000)
    path.write_bytes(bytes(data))
    source = file_source(path, mode="lossless")
    got = take(source)
    media = [g.media_s for g in got]
    assert media == sorted(media)
    assert 40 <= len(got) < 60
    assert media[-1] == pytest.approx(59 / FPS, abs=2e-3)  # went on to the end
    assert source.stats.skipped >= 1
    assert any("skipped" in m for m in warnings)
    # Frames well before the damage are all there, exactly as a clean decode gives them.
    for g, w in zip(got[:20], want[:20], strict=True):
        assert np.array_equal(g.image, w)


# ------------------------------------------------------------------ the capture thread


class _Burst(Source):
    """A test source: `n` frames as fast as it can, or `after` frames then an error."""

    def __init__(self, n: int, live: bool, error_after: int | None = None) -> None:
        self.info = SourceInfo("burst", live, 1000.0, 8, 8)
        self.n, self.error_after = n, error_after
        self.produced = 0
        self.closed = threading.Event()

    def frames(self, stop: threading.Event) -> Iterator[Captured]:
        try:
            for i in range(self.n):
                if self.error_after is not None and i == self.error_after:
                    raise OSError("device unplugged")
                self.produced += 1
                yield Captured(i, np.zeros((8, 8, 3), np.uint8))
        finally:
            self.closed.set()


def test_live_capture_keeps_the_newest_frame_and_counts_what_it_replaced():
    source = _Burst(200, live=True)
    stop = threading.Event()
    got = []
    with CaptureThread(source) as capture:
        for item in capture.frames(stop):
            got.append(item.index)
            time.sleep(0.002)  # a slow consumer
    assert got[-1] == 199 and got == sorted(got)
    assert capture.overwritten == 200 - len(got) > 0  # replaced frames show as index gaps


def test_lossless_capture_applies_backpressure_and_close_unblocks_the_decoder():
    source = _Burst(1000, live=False)
    capture = CaptureThread(source, depth=4).start()
    stop = threading.Event()
    first = next(capture.frames(stop))
    assert first.index == 0
    time.sleep(0.2)
    assert source.produced <= 6  # one taken, four queued, one waiting for room
    started = time.monotonic()
    capture.close()
    assert source.closed.wait(1) and time.monotonic() - started < 1


def test_a_source_error_reaches_the_consumer_after_the_frames_before_it():
    source = _Burst(10, live=False, error_after=5)
    got = []
    with pytest.raises(OSError, match="unplugged"), CaptureThread(source) as capture:
        for item in capture.frames(threading.Event()):
            got.append(item.index)
    assert got == [0, 1, 2, 3, 4]


def test_stopping_a_paced_replay_does_not_wait_for_the_next_frame(tmp_path):
    path = encode(tmp_path / "slow.mkv", pts_ms=[0, 5000])  # the second frame is 5 s away
    source = file_source(path, mode="paced")
    capture = CaptureThread(source).start()
    next(capture.frames(threading.Event()))
    started = time.monotonic()
    capture.close()
    assert time.monotonic() - started < 1


def test_random_bytes_in_a_file_with_a_video_extension_never_crash(tmp_path):
    # Any garbage: either refused at open with SourceError, or replayed to a clean end.
    path = tmp_path / "x.ts"
    path.write_bytes(b"G" + np.random.default_rng(2).bytes(188 * 400))
    try:
        source = file_source(path, mode="lossless")
    except SourceError as exc:
        assert str(path) in str(exc)
    else:
        take(source)


def test_keep_frame_memory_sets_the_allocator_where_it_is_glibc():
    import platform

    from orstream.pipeline.capture import keep_frame_memory

    assert keep_frame_memory() is (platform.libc_ver()[0] == "glibc")
