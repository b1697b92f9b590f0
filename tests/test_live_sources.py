"""Live sources that can drop out: network streams (served by the test on 127.0.0.1) and
cameras. A stream that stops and comes back is picked up again, an unreachable one is
reported clearly within its timeouts, and the pipeline shows the source down meanwhile."""

from __future__ import annotations

import io
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from loguru import logger

from orstream.pipeline.capture import CaptureThread
from orstream.pipeline.cli import main
from orstream.pipeline.config import ConfigError, SourceConfig, load_config
from orstream.pipeline.runner import Pipeline
from orstream.pipeline.sources import Captured, SourceError, open_source
from orstream.pipeline.sources.camera import CameraSource
from orstream.pipeline.sources.network import (
    NetworkSource,
    ffmpeg_options,
    ffmpeg_version,
    redact,
)

W, H, FPS = 160, 128, 30
STREAM_FRAMES = 150  # 5 s of stream per connection: longer than any test needs
# Short timeouts and backoff: each test takes a few seconds, not the production defaults.
QUICK = {"open_timeout_s": 2.0, "read_timeout_s": 0.8, "reconnect_delay_s": 0.1,
         "reconnect_delay_max_s": 0.4}


# ------------------------------------------------------------------ a local stream server


def shade(i: int) -> int:
    """Frame i of the test stream is a flat grey of this level (survives H.264 exactly
    enough to tell frames apart)."""
    return (40 + 5 * i) % 220


@pytest.fixture(scope="module")
def ts_bytes() -> bytes:
    """An MPEG-TS stream as a network encoder sends it: H.264 without B-frames
    (zerolatency), a keyframe every 10 frames so that a receiver joins quickly."""
    out = io.BytesIO()
    with av.open(out, "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": "10"}
        for i in range(STREAM_FRAMES):
            frame = av.VideoFrame.from_ndarray(np.full((H, W, 3), shade(i), np.uint8),
                                               format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StreamServer:
    """Serves `data` in real time (its 5 s spread over 5 s) to each client, over TCP, over
    HTTP (a chunkless 200 response, as encoders' HTTP outputs send), or as UDP datagrams to
    a receiver. `stop()` is the encoder going away; a new server on the same port is the
    encoder coming back. Everything on 127.0.0.1."""

    CHUNK = 188 * 7  # seven TS packets: what encoders put in one UDP datagram

    def __init__(self, data: bytes, kind: str, port: int) -> None:
        self.data, self.kind, self.port = data, kind, port
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        if kind != "udp":
            self._sock = socket.socket()
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind(("127.0.0.1", port))
            self._sock.listen()
            self._sock.settimeout(0.05)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self.kind == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
                self._send(lambda chunk: out.sendto(chunk, ("127.0.0.1", self.port)))
            return
        assert self._sock is not None
        with self._sock:
            while not self._stop.is_set():
                try:
                    conn, _ = self._sock.accept()
                except TimeoutError:
                    continue
                with conn:
                    try:
                        if self.kind == "http":
                            conn.recv(4096)  # the request; any path is the stream
                            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\n"
                                         b"Connection: close\r\n\r\n")
                        self._send(conn.sendall)
                    except OSError:
                        pass  # the client went away: wait for the next one

    def _send(self, send) -> None:
        chunks = [self.data[i:i + self.CHUNK] for i in range(0, len(self.data), self.CHUNK)]
        period = STREAM_FRAMES / FPS / len(chunks)
        start = time.monotonic()
        for k, chunk in enumerate(chunks):
            if self._stop.wait(max(0.0, start + k * period - time.monotonic())):
                return
            send(chunk)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def url_for(kind: str, port: int) -> str:
    return {"tcp": f"tcp://127.0.0.1:{port}",
            "http": f"http://127.0.0.1:{port}/live.ts",
            # The receiver binds the port; localaddr keeps it on loopback.
            "udp": f"udp://127.0.0.1:{port}?localaddr=127.0.0.1"}[kind]


def collect(source, stop: threading.Event, until) -> list[Captured]:
    """Frames through the real capture thread until `until(frames)` or `stop`."""
    got: list[Captured] = []
    with CaptureThread(source) as capture:
        for item in capture.frames(stop):
            got.append(item)
            if until(got):
                break
    return got


@pytest.fixture()
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    yield lines
    logger.remove(sink)


# ------------------------------------------------------------------ network streams


@pytest.mark.parametrize("kind", ["tcp", "http", "udp"])
def test_a_stream_that_stops_and_comes_back_is_picked_up_again(ts_bytes, kind, log_lines):
    port = free_port(socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    server = StreamServer(ts_bytes, kind, port)
    source = open_source(SourceConfig(spec=url_for(kind, port), **QUICK))
    assert isinstance(source, NetworkSource) and source.info.live
    assert (source.info.width, source.info.height) == (W, H)
    states = []
    restarted = threading.Event()
    restarted_at: list[int] = []

    def encoder_reboots() -> None:
        time.sleep(1.0)
        server.stop()
        # Down long enough for the source to notice (read timeout) and retry with backoff.
        deadline = time.monotonic() + 5
        while source.state.up and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)
        states.append(source.state)
        servers.append(StreamServer(ts_bytes, kind, port))
        restarted_at.append(time.monotonic_ns())
        restarted.set()

    def after_restart(frames: list[Captured]) -> list[Captured]:
        return [f for f in frames if restarted.is_set() and f.t_capture_ns > restarted_at[0]]

    servers = [server]
    threading.Thread(target=encoder_reboots, daemon=True).start()
    stop = threading.Event()
    timer = threading.Timer(15, stop.set)  # a bound, should the stream never come back
    timer.start()
    try:
        got = collect(source, stop, lambda g: len(after_restart(g)) >= 10)
    finally:
        timer.cancel()
        for s in servers:
            s.stop()
        source.close()
    # While the encoder was away the source said so, with the reason.
    assert states and not states[0].up
    assert states[0].error and "attempt" in states[0].describe()
    # It came back by itself: frames resumed, the index ran on, the outage was counted.
    assert source.state.up and source.state.reconnects == 1
    indices = [f.index for f in got]
    assert indices == sorted(set(indices))
    after = after_restart(got)
    assert len(after) >= 10
    # The picture is the stream's: a flat grey of one of the encoded levels.
    levels = {shade(i) for i in range(STREAM_FRAMES)}
    for f in after[-3:]:
        assert f.image.shape == (H, W, 3) and f.image.dtype == np.uint8
        level = int(np.median(f.image))
        assert min(abs(level - v) for v in levels) <= 3
    assert any("lost" in line for line in log_lines)
    assert any("reconnected after" in line for line in log_lines)


def test_an_unreachable_url_fails_at_once_when_retries_are_off():
    port = free_port()  # nothing listens here
    url = f"tcp://127.0.0.1:{port}"
    started = time.monotonic()
    with pytest.raises(SourceError, match=rf"^source {re.escape(url)}: cannot connect "
                                          r"\(Connection refused\); check that the encoder"):
        open_source(SourceConfig(spec=url, reconnect_max_s=0, **QUICK))
    assert time.monotonic() - started < 2


def test_a_silent_stream_times_out_within_the_open_timeout():
    # UDP: nothing ever arrives on the port; the open must give up by itself.
    url = f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}?localaddr=127.0.0.1"
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"cannot connect \(no stream within 1 s\)"):
        open_source(SourceConfig(spec=url, reconnect_max_s=0,
                                 **{**QUICK, "open_timeout_s": 1.0}))
    assert time.monotonic() - started < 3


def test_the_pipeline_shows_the_source_down_and_picks_it_up_when_it_comes(ts_bytes,
                                                                          log_lines):
    port = free_port()
    url = f"tcp://user:secret@127.0.0.1:{port}"  # nothing there yet
    cfg = load_config(None, [f"source.spec={url}", "segment.threads=1",
                             "publish.endpoint=null",
                             *(f"source.{k}={v}" for k, v in QUICK.items())])
    pipeline = Pipeline(cfg, max_frames=10, status_every_s=0.1)
    servers = []

    def encoder_comes_up() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
                line.startswith("source down (reconnecting") for line in log_lines):
            time.sleep(0.02)
        servers.append(StreamServer(ts_bytes, "tcp", port))

    threading.Thread(target=encoder_comes_up, daemon=True).start()
    try:
        result = pipeline.run()
    finally:
        for server in servers:
            server.stop()
    assert result.frames_out == 10
    down = [line for line in log_lines if line.startswith("source down (reconnecting")]
    assert re.search(r"attempt \d+, down \d+ s\): Connection refused \| .* 0 frames", down[0])
    assert any("reconnected after" in line for line in log_lines)
    assert not any("secret" in line for line in log_lines)  # credentials never logged


def test_a_source_down_longer_than_reconnect_max_s_gives_up_naming_it():
    url = f"tcp://127.0.0.1:{free_port()}"
    source = open_source(SourceConfig(spec=url, reconnect_max_s=1.0, **QUICK))
    assert not source.state.up and "refused" in source.state.describe()
    started = time.monotonic()
    with pytest.raises(SourceError, match=rf"^source {re.escape(url)}: down for 1 s, \d+ "
                                          r"attempt\(s\) to connect failed \(last: Connection "
                                          r"refused\); check .*reconnect_max_s: null"):
        list(source.frames(threading.Event()))
    assert 0.8 < time.monotonic() - started < 3


def test_replay_of_an_unreachable_url_exits_non_zero_naming_it(capsys):
    url = f"tcp://127.0.0.1:{free_port()}"
    code = main(["replay", url, "--set", "source.reconnect_max_s=0",
                 "--set", "publish.endpoint=null"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"source {url}: cannot connect" in err and "Traceback" not in err


@pytest.mark.parametrize("option", ["source.mode=lossless", "source.loop=true",
                                    "source.start=2"])
def test_recording_options_on_a_live_stream_are_refused_by_name(option):
    key = option.split("=")[0]
    cfg = load_config(None, ["source.spec=udp://127.0.0.1:9?localaddr=127.0.0.1", option])
    with pytest.raises(SourceError, match=rf"{re.escape(key)} applies to recordings"):
        open_source(cfg.source)


def test_a_protocol_this_ffmpeg_lacks_is_named_not_retried():
    # PyAV's bundled FFmpeg is built without libsrt: say so rather than retry forever.
    if b"srt" in _protocols():
        pytest.skip("this FFmpeg has SRT")
    with pytest.raises(SourceError, match=r"cannot speak srt:// .*libsrt") as refused:
        open_source(SourceConfig(spec="srt://127.0.0.1:9000"))
    assert f"FFmpeg {ffmpeg_version()})" in str(refused.value)


def test_the_ffmpeg_version_reads_as_a_version():
    version = ffmpeg_version()  # once printed as 8...1...2: a string joined as a sequence
    assert ".." not in version and version.split(".")[0].isdigit(), version


def _protocols() -> bytes:
    try:
        av.open("srt://127.0.0.1:1", timeout=0.2).close()
    except av.error.ProtocolNotFoundError:
        return b""
    except av.error.FFmpegError:
        pass
    return b"srt"


def test_ffmpeg_options_carry_timeouts_low_latency_and_user_overrides():
    rtsp = ffmpeg_options(SourceConfig(spec="rtsp://cam/or1", read_timeout_s=2))
    assert rtsp["timeout"] == rtsp["rw_timeout"] == "2000000"  # microseconds
    assert rtsp["rtsp_transport"] == "tcp" and rtsp["fflags"] == "nobuffer"
    udp = ffmpeg_options(SourceConfig(spec="udp://@:5000", low_latency=False,
                                      ffmpeg_options={"fifo_size": 100000}))
    assert udp["overrun_nonfatal"] == "1" and udp["fifo_size"] == "100000"
    assert "fflags" not in udp
    user = ffmpeg_options(SourceConfig(spec="rtsp://cam/or1",
                                       ffmpeg_options={"rtsp_transport": "udp"}))
    assert user["rtsp_transport"] == "udp"
    assert redact("rtsp://admin:pw@10.0.0.2/or1") == "rtsp://admin:***@10.0.0.2/or1"


# ------------------------------------------------------------------ cameras


@pytest.mark.parametrize("spec,device", [("camera:97", "/dev/video97"),
                                         ("/dev/video98", "/dev/video98")])
def test_an_absent_camera_is_named_with_the_devices_present_and_the_fix(spec, device):
    present = sorted(str(p) for p in Path("/dev").glob("video*"))
    if device in present:
        pytest.skip(f"{device} exists here")
    with pytest.raises(SourceError) as err:
        open_source(SourceConfig(spec=spec))
    message = str(err.value)
    assert message.startswith(f"source {spec}")
    assert device in message and "no such camera" in message
    assert ("present: " + ", ".join(present)) in message if present else (
        "no /dev/video* device exists" in message)
    assert "v4l2-ctl --list-devices" in message and "--device" in message  # the fixes


class FileBackedCamera(CameraSource):
    """The camera source with its lowest layer swapped while "plugged in": cv2.VideoCapture
    on a video file instead of on a V4L2 device (there is no camera on CI). Everything above
    it (first frame check, BGR->RGB, read failure -> release -> backoff -> reopen) is the
    real code, and while "unplugged" (the file moved away) the real V4L2 open runs against
    the absent device. The file ending is the camera going silent."""

    def __init__(self, cfg: SourceConfig, path: Path) -> None:
        self.path = path
        self.opened = 0
        super().__init__(cfg)

    def _open_capture(self) -> cv2.VideoCapture:
        if not self.path.exists():
            return super()._open_capture()  # the device path does not exist: raises
        cap = cv2.VideoCapture(str(self.path))
        assert cap.isOpened()
        self.opened += 1
        return cap


def test_a_camera_that_is_unplugged_and_plugged_back_in_is_reopened(tmp_path):
    path = tmp_path / "camera.avi"
    frames = 30
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H))
    for i in range(frames):
        bgr = np.zeros((H, W, 3), np.uint8)
        bgr[..., 2] = 200  # red in BGR: the source must hand over RGB
        bgr[..., 1] = shade(i)
        writer.write(bgr)
    writer.release()
    away = tmp_path / "unplugged.avi"
    device = "/dev/video96"
    if Path(device).exists():
        pytest.skip(f"{device} exists here")
    source = FileBackedCamera(SourceConfig(spec=device, width=W, height=H, **QUICK), path)
    assert source.info.live and (source.info.width, source.info.height) == (W, H)
    path.rename(away)  # unplugged while it delivers: the reopen after this pass fails
    seen_down = []

    def replug() -> None:
        deadline = time.monotonic() + 5
        while source.state.attempt < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        seen_down.append(source.state)
        away.rename(path)

    threading.Thread(target=replug, daemon=True).start()
    stop = threading.Event()
    timer = threading.Timer(10, stop.set)
    timer.start()
    try:
        got = collect(source, stop, lambda g: source.opened >= 2 and len(g) >= 3
                      and g[-1].index >= frames + 1)
    finally:
        timer.cancel()
        source.close()
    assert seen_down and not seen_down[0].up and seen_down[0].attempt >= 2
    assert f"no such camera {device}" in seen_down[0].error
    assert source.opened == 2 and source.state.reconnects == 1
    assert got[-1].index >= frames + 1  # the second pass's frames continue the index
    red = got[-1].image[..., 0]
    assert got[-1].image.shape == (H, W, 3) and abs(int(np.median(red)) - 200) <= 3


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(("override", "names"), [
    ("source.pixel_format=MJPEG", ["source.pixel_format", "four-character code", "MJPEG"]),
    ("source.reconnect_delay_max_s=0.1", ["source.reconnect_delay_max_s",
                                          "at least reconnect_delay_s (0.5)"]),
    ("source.read_timeout_s=0", ["source.read_timeout_s", "greater than 0"]),
    ("source.reconnect_max_s=-1", ["source.reconnect_max_s", "-1"]),
])
def test_live_source_keys_are_validated_naming_the_key(override, names):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    for text in names:
        assert text in str(err.value)


def test_live_source_keys_load_from_yaml_with_their_defaults():
    source = load_config(None, ["source.pixel_format=yuyv",
                                "source.ffmpeg_options={buffer_size: 1048576}"]).source
    assert source.pixel_format == "YUYV" and source.ffmpeg_options == {"buffer_size": "1048576"}
    assert source.reconnect_max_s is None  # a live feed is retried until stopped
    assert (source.open_timeout_s, source.read_timeout_s) == (5.0, 3.0)
