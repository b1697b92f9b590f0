"""`orstream web`: a real pipeline feeding the browser display's server, read by plain Python
WebSocket clients (tests/test_web_browser.py drives a real browser). The prompts box's server
side runs against a real TP-SIS pipeline, its weights from tests/test_tpsis_pipeline.py's
`tpsis_weights` fixture (the shipped ones once they exist, else a dev checkpoint)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import cv2
import numpy as np
import pytest
from loguru import logger

# A fixture: the TP-SIS checkpoint every TP-SIS pipeline test uses (see its docstring).
from test_tpsis_pipeline import tpsis_weights  # noqa: F401

from orstream.common.net import free_port
from orstream.engines.tpsis_engine import DEFAULT_PROMPTS
from orstream.pipeline.cli import main
from orstream.pipeline.config import load_config
from orstream.pipeline.describe import EMPTY_QUESTION
from orstream.pipeline.runner import Pipeline
from orstream.pipeline.web import WebOptions, serve
from orstream.pipeline.web.access import WebAccessError
from orstream.pipeline.web.hub import MIN_WIDTH, scale, sent_size, unpack


class LivePipeline:
    """`orstream run` at 640x360 on free ports, in this process, counting rendered frames;
    `sets`: more --set overrides (a TP-SIS pipeline)."""

    def __init__(self, *sets: str, publish: str | None = None) -> None:
        port = free_port()
        self.publish = publish or f"tcp://127.0.0.1:{port}"
        self.ask = f"tcp://127.0.0.1:{free_port()}"
        self.rendered = 0
        sets = ("source.width=640", "source.height=360", "segment.backend=torch",
                "segment.precision=fp32", "describe.interval_s=0.5",
                f"describe.ask_endpoint={self.ask}", *sets)
        # Pipelines in one process share inproc:// mailboxes by name (pipeline/inproc.py):
        # this one's edges get names of its own, so that two side by side (the module's U-Net
        # and a TP-SIS one) never take each other's frames.
        own = [f"edges.{name}.endpoint=inproc://{port}-{edge.endpoint[len('inproc://'):]}"
               for name, edge in load_config(None, list(sets)).edges.items()
               if edge.endpoint.startswith("inproc://")]
        cfg = load_config(None, [*sets, *own], publish__endpoint=self.publish)
        self.pipeline = Pipeline(cfg, on_frame=self._count)
        self.thread = threading.Thread(target=self.pipeline.run, daemon=True)

    def _count(self, frame) -> None:
        self.rendered += 1

    def __enter__(self) -> LivePipeline:
        self.thread.start()
        deadline = time.monotonic() + 120  # the engine and the VLM process start first
        while self.rendered == 0:
            assert self.thread.is_alive() and time.monotonic() < deadline, "no frame rendered"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.pipeline.request_stop()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def live():
    with LivePipeline() as pipeline:
        yield pipeline


def tpsis_pipeline(weights: Path) -> LivePipeline:
    """A TP-SIS pipeline with the default prompts and no VLM: its ask socket takes prompt
    changes only."""
    return LivePipeline("segment.model=tpsis", f"segment.weights={weights}",
                        "describe.enabled=false")


@contextlib.contextmanager
def web_server(endpoint: str, **options):
    """serve() in a thread on a free loopback port; yields the page's URL."""
    urls: list[str] = []
    ready, stop = threading.Event(), threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            serve(WebOptions(endpoint, listen=options.pop("listen", "127.0.0.1:0"), **options),
                  stop, lambda url: (urls.append(url), ready.set()))
        except BaseException as exc:  # handed to the test below
            failed.append(exc)
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30), "the web server never listened"
    if failed:
        thread.join(5)
        raise failed[0]
    try:
        yield urls[0]
    finally:
        stop.set()
        thread.join(15)
        assert not thread.is_alive(), "serve() did not return after stop"


@contextlib.asynccontextmanager
async def open_tab(url: str, query: str = "", **kwargs):
    """A WebSocket to the server as the page opens it; yields (session, ws)."""
    async with aiohttp.ClientSession() as session, session.ws_connect(
            f"{url.replace('http', 'ws')}ws{query}", **kwargs) as ws:
        yield session, ws


async def read_frames(url: str, count: int, token: str = "") -> tuple[dict, list]:
    """Connect like the page, read `count` frames and report each as painted; the hello
    message and the (header, jpeg) pairs."""
    frames = []
    async with open_tab(url, token) as (_, ws):
        hello = await ws.receive_json(timeout=10)
        while len(frames) < count:
            message = await ws.receive(timeout=30)
            if message.type != aiohttp.WSMsgType.BINARY:
                continue
            header, jpeg = unpack(message.data)
            frames.append((header, jpeg))
            await ws.send_json({"t": "painted", "seq": header["seq"], "dropped": 0,
                                "latency_ms": (time.time_ns() - header["t_wall_ns"]) / 1e6})
    return hello, frames


def get(url: str, path: str, **kwargs) -> tuple[int, dict]:
    async def fetch():
        async with aiohttp.ClientSession() as session, session.request(
                kwargs.pop("method", "GET"), url + path, **kwargs) as response:
            return response.status, await response.json()
    return asyncio.run(fetch())


def test_tabs_get_the_overlay_as_header_and_jpeg_with_increasing_seq(live):
    with web_server(live.publish, ask=live.ask) as url:
        hello, frames = asyncio.run(read_frames(url, 8))
        stats = get(url, "api/stats")[1]
        status, refused = get(url, "api/stats?last_s=soon")
        assert status == 400 and "last_s='soon'" in refused["error"], refused
        assert get(url, "api/stats?last_s=0")[0] == 400
        assert get(url, "api/stats?last_s=30")[1]["last_s"] == 30
    # A U-Net pipeline: no prompts (the page hides its prompts box), no table in the headers.
    assert hello["t"] == "hello" and hello["ask"] is True and hello["prompts"] is None
    assert all(header["classes"] is None for header, _ in frames)
    seqs = [h["seq"] for h, _ in frames]
    assert seqs == sorted(set(seqs)), seqs
    for header, jpeg in frames:
        picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert picture.shape == (360, 640, 3) == (header["height"], header["width"], 3)
        assert picture.std() > 10  # the endoscope scene, not a blank picture
        assert header["stream"] == "or-1"
        assert 0 <= (time.time_ns() - header["t_wall_ns"]) / 1e9 < 30  # a live capture time
        assert header["server"]["receipt_ms"] >= 0
    # What the page reported is what the stats endpoint returns; the tab is gone by now.
    assert stats["painted"]["frames"] == 8
    assert stats["server"]["tabs_closed"] == 1 and stats["server"]["encoded"] >= 8
    assert stats["server"]["received"] >= stats["server"]["encoded"]


def test_the_server_subscribes_over_shm_on_the_pipelines_host(tmp_path):
    """`orstream web shm://...`: the frames through the shared-memory ring, as the README
    recommends where the web server runs beside the pipeline."""
    with LivePipeline("describe.enabled=false", publish=f"shm://{tmp_path}/pub.sock") as live, \
            web_server(live.publish) as url:
        _, frames = asyncio.run(read_frames(url, 5))
        stats = get(url, "api/stats")[1]
    seqs = [h["seq"] for h, _ in frames]
    assert seqs == sorted(set(seqs)), seqs
    for _, jpeg in frames:
        picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert picture.shape == (360, 640, 3) and picture.std() > 10
    assert stats["server"]["endpoint"].startswith("shm://")
    # (frames the hub's newest-only receiver skipped are counted as lost, not refused)
    assert stats["server"]["rejected"] == 0 and stats["server"]["received"] >= 5


def test_stats_endpoint_reports_each_tabs_painted_latency_and_the_servers_figures(live):
    async def scenario(url: str) -> dict:
        async with open_tab(url) as (session, ws):
            seen = []
            while len(seen) < 6:
                message = await ws.receive(timeout=30)
                if message.type == aiohttp.WSMsgType.BINARY:
                    header, _ = unpack(message.data)
                    seen.append(header["seq"])
                    await ws.send_json({"t": "painted", "seq": header["seq"],
                                        "latency_ms": 40.0 + len(seen), "dropped": 0})
            await asyncio.sleep(0.3)  # the last report reaches the server
            async with session.get(url + "api/stats") as response:
                return {"stats": await response.json(), "seen": seen}

    with web_server(live.publish) as url:
        out = asyncio.run(scenario(url))
    stats, seen = out["stats"], out["seen"]
    (tab,) = stats["tabs"]
    assert tab["painted"] == 6 and tab["painted_seq"] == seen[-1]
    assert tab["last_seq"] >= seen[-1] and tab["sent"] >= 6
    assert tab["latency_ms"]["p50"] == pytest.approx(44.0, abs=0.6)
    assert tab["latency_ms"]["max"] == 46.0 and tab["latency_ms"]["p99"] <= 46.0
    server = stats["server"]
    assert server["received"] >= 6 and server["encoded"] >= 6 and server["lost"] >= 0
    assert server["receipt_ms"]["p50"] is not None and server["encode_ms"]["p50"] is not None
    assert stats["painted"]["frames"] == 6


def test_sent_size_fits_the_box_keeps_the_aspect_and_never_scales_up():
    assert sent_size(1920, 1080, None) == (1920, 1080)  # no size reported: full resolution
    assert sent_size(1920, 1080, (960, 540)) == (960, 540)
    assert sent_size(1920, 1080, (960, 2000)) == (960, 540)  # a tall box: the width binds
    assert sent_size(1920, 1080, (3000, 540)) == (960, 540)  # a wide box: the height binds
    # Widths are rounded down to the step: tabs a few pixels apart share one encoding.
    assert sent_size(1920, 1080, (957, 539)) == sent_size(1920, 1080, (950, 536)) == (944, 531)
    for box in [(1920, 1080), (1920, 1200), (3840, 2160)]:
        assert sent_size(1920, 1080, box) == (1920, 1080)  # never larger than the frame
    assert sent_size(1920, 1080, (1919, 1080)) == (1904, 1071)  # nor than the box
    assert sent_size(1920, 1080, (100, 60)) == (MIN_WIDTH, 180)  # never below MIN_WIDTH
    assert sent_size(300, 200, (100, 60)) == (300, 200)  # a small frame is never scaled
    for box in [(1024, 700), (801, 333), (640, 480), (1366, 768), (333, 1000)]:
        width, height = sent_size(1920, 1080, box)
        assert width <= box[0] and height <= box[1] and width % 16 == 0, (box, width, height)
        assert abs(width / height - 16 / 9) < 0.01, (box, width, height)


def test_scaling_keeps_one_pixel_lines_at_every_size_a_tab_may_show():
    # 1-pixel lines, as mask outlines are drawn, at every offset a scaling could miss.
    picture = np.zeros((1080, 1920, 3), np.uint8)
    picture[:, 100:1900:7] = 255  # columns: the same holds for rows, the scaling is separable
    for box in [(1904, 1071), (1264, 711), (960, 540), (848, 477), (448, 252), (320, 180)]:
        size = sent_size(1920, 1080, box)
        small = scale(picture, size)
        assert small.shape == (size[1], size[0], 3)
        # Each line still shows where it was: no stretch of the sent frame lost one.
        columns = small[small.shape[0] // 2, round(100 * size[0] / 1920) + 2:
                        round(1890 * size[0] / 1920) - 2, 0]
        window = max(2, -(-7 * size[0] // 1920) + 1)  # the line spacing, sent, rounded up
        lows = np.lib.stride_tricks.sliding_window_view(columns, window).max(axis=1)
        assert lows.min() >= 25, (size, lows.min())  # INTER_LINEAR alone: 0 from 848 down


async def _tab_frames(url: str, count: int, query: str = "",
                      resize: tuple[int, int, int] | None = None,
                      linger: asyncio.Event | None = None) -> list[tuple[dict, bytes]]:
    """A tab that opens /ws with `query`, reads `count` frames and reports each painted;
    resize (after, w, h): after that many frames it reports a new size as the page does;
    linger: stays open (reading nothing more) until that is set. Each frame as (header, the
    whole message)."""
    frames = []
    async with open_tab(url, query) as (_, ws):
        while len(frames) < count:
            message = await ws.receive(timeout=30)
            if message.type != aiohttp.WSMsgType.BINARY:
                continue
            header, _ = unpack(message.data)
            frames.append((header, message.data))
            await ws.send_json({"t": "painted", "seq": header["seq"], "dropped": 0,
                                "latency_ms": 1.0})
            if resize is not None and len(frames) == resize[0]:
                await ws.send_json({"t": "size", "w": resize[1], "h": resize[2]})
        if linger is not None:
            await linger.wait()
    return frames


def _picture_size(frame: tuple[dict, bytes]) -> tuple[int, int]:
    """The decoded JPEG's width and height, checked against the header's sent size."""
    header, jpeg = unpack(frame[1])
    picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape[:2] == (header["sent_height"], header["sent_width"])
    assert picture.std() > 10  # the scene, not a blank picture
    # The frame's own size stays in the header (what overlay coordinates refer to).
    assert (header["width"], header["height"]) == (640, 360)
    return picture.shape[1], picture.shape[0]


def test_each_tab_gets_frames_scaled_to_the_size_it_reports_each_size_encoded_once(live):
    async def scenario(url: str) -> tuple[list, dict]:
        read = asyncio.Event()
        tabs = [asyncio.create_task(_tab_frames(url, 12, query, linger=read)) for query in (
            "?w=480&h=270",
            "?w=400&h=300",  # a 4:3 box: the width binds
            "",  # no size: full resolution
            "?w=960&h=540")]  # larger than the frame: not scaled up
        try:
            stats = await stats_once_read(url, tabs)
        finally:
            read.set()
        return await asyncio.gather(*tabs), stats

    async def stats_once_read(url: str, tabs: list[asyncio.Task]) -> dict:
        """/api/stats once every tab read its frames, while all are still open."""
        async with aiohttp.ClientSession() as session:
            while True:
                async with session.get(url + "api/stats") as response:
                    stats = await response.json()
                if sum(tab["painted"] >= 12 for tab in stats["tabs"]) == len(tabs):
                    return stats
                if any(task.done() for task in tabs):  # one failed: its error, not a hang
                    await asyncio.gather(*tabs)
                await asyncio.sleep(0.1)

    with web_server(live.publish) as url:
        (small, four_three, no_size, large), stats = asyncio.run(scenario(url))
    # The 640x360 test stream: each tab's frames at the size that fits its box.
    assert {_picture_size(f) for f in small} == {(480, 270)}
    assert {_picture_size(f) for f in four_three} == {(400, 225)}
    assert {_picture_size(f) for f in no_size} == {(640, 360)}
    assert {_picture_size(f) for f in large} == {(640, 360)}
    for frames in (small, four_three, no_size, large):
        seqs = [header["seq"] for header, _ in frames]
        assert seqs == sorted(set(seqs)), seqs
    # One encoding per frame and size: tabs of the same sent size get the same message.
    full = {header["index"]: data for header, data in no_size}
    shared = [index for index, _ in ((h["index"], d) for h, d in large) if index in full]
    assert shared, "the two full-size tabs never got the same frame"
    assert all(full[h["index"]] == d for h, d in large if h["index"] in full)
    server = stats["server"]
    assert set(server["sizes"]) <= {"480x270", "400x225", "640x360"}, server["sizes"]
    boxes = sorted((tab["box"] or [0, 0]) for tab in stats["tabs"])
    assert boxes == [[0, 0], [400, 300], [480, 270], [960, 540]]


def test_a_tab_that_reports_a_new_size_gets_frames_at_it_and_full_forces_full_size(live):
    with web_server(live.publish) as url:
        frames = asyncio.run(_tab_frames(url, 12, resize=(3, 336, 189)))
    sizes = [_picture_size(frame) for frame in frames]
    assert sizes[:3] == [(640, 360)] * 3
    # Frames asked for before the report come at the old size (at most the window and the
    # one being waited for), every one after the first new one at the new size.
    first = sizes.index((336, 189))
    assert first <= 3 + 3 and set(sizes[first:]) == {(336, 189)}, sizes

    with web_server(live.publish, full=True) as url:
        frames = asyncio.run(_tab_frames(url, 6, "?w=480&h=270", resize=(2, 336, 189)))
    assert {_picture_size(frame) for frame in frames} == {(640, 360)}


def _stalled_tab(url: str, query: str = "") -> socket.socket:
    """A tab that opens the WebSocket (/ws`query`) and then never reads a byte."""
    host, port = url.split("//")[1].strip("/").rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # full with the first frame
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET /ws{query} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
    return sock


def _ack_blindly(sock: socket.socket, until: threading.Event) -> threading.Thread:
    """A client that lies: it acks frames every 10 ms without reading any, so the server
    keeps sending into its socket."""
    payload = b'{"t":"ack"}'

    def loop() -> None:
        while not until.wait(0.01):
            mask = os.urandom(4)
            sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask +
                         bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def _wait_until_sends_block(url: str, tab_id: int, timeout_s: float) -> bool:
    """Whether the server's frames to tab `tab_id` stopped (for 1 s, while the hub kept
    receiving) within `timeout_s`: its send is blocked on a full socket."""
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        stats = get(url, "api/stats")[1]
        now = ({t["id"]: t for t in stats["tabs"]}[tab_id]["sent"],
               stats["server"]["received"])
        if last is None or now[0] != last[0]:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= 1.0 and now[1] > last[1] + 10:
            return True
        time.sleep(0.2)
    return False


def test_a_tabs_figures_over_the_last_seconds_leave_out_what_came_before(monkeypatch):
    """/api/stats?last_s=N: a benchmark measures a page's steady state without its start
    (the first second after a page loads paints slower: layout, script compilation); every
    figure covers the same frames, and a figure a page did not report is left out, not 0."""
    from orstream.pipeline.web import tabs as tabs_module

    now = [100.0]
    # The module's own name `time` only: time.monotonic itself is the whole process's, and
    # the module's live pipeline runs beside this test (a synthetic source that read a clock
    # 100 s after boot waited hours for its next frame, and the tests after it timed out).
    monkeypatch.setattr(tabs_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    tab = tabs_module.Tab(id=1, peer="test")
    for seq, latency in enumerate([180.0, 150.0, 40.0, 42.0, 44.0]):
        now[0] = 100.0 + seq
        # the second report's page sent no decode time: no sample, not a 0 ms one
        tab.painted_report(seq, latency, 0, latency - 10, None if seq == 1 else latency - 5)
    recent = tab.to_json(received=5, since=102.0)
    assert recent["latency_ms"]["max"] == 44.0 and recent["latency_ms"]["p50"] == 42.0
    assert recent["arrived_ms"]["max"] == 34.0 and recent["decoded_ms"]["max"] == 39.0
    assert recent["measured"] == 3 and recent["painted"] == 5
    whole = tab.to_json(received=5)
    assert whole["latency_ms"]["max"] == 180.0 and whole["decoded_ms"]["p50"] is not None
    assert tab.latencies(since=103.5) == [44.0]
    assert len(tab.samples("decoded_ms")) == 4  # the unreported one left out
    assert tab.to_json(received=5, since=200.0)["latency_ms"]["p50"] is None


def test_a_stalled_or_closed_tab_costs_the_pipeline_and_other_tabs_nothing(live):
    async def good_tab(url: str, seconds: float) -> list[tuple[float, int]]:
        got = []
        async with open_tab(url) as (_, ws):
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                message = await ws.receive(timeout=10)
                if message.type == aiohttp.WSMsgType.BINARY:
                    header, _ = unpack(message.data)
                    got.append((time.monotonic(), header["seq"]))
                    await ws.send_json({"t": "painted", "seq": header["seq"],
                                        "latency_ms": 1.0, "dropped": 0})
        return got

    with web_server(live.publish) as url:
        # The stalled one shows a smaller size: nobody reads it, so it is never encoded.
        stalled, liar, closed = _stalled_tab(url, "?w=400&h=300"), _stalled_tab(url), \
            _stalled_tab(url)
        lying = threading.Event()
        acks = _ack_blindly(liar, lying)
        time.sleep(0.5)
        closed.close()  # a tab closed without a goodbye
        received_before = get(url, "api/stats")[1]["server"]["received"]
        rendered_before = live.rendered
        got = asyncio.run(good_tab(url, 4.0))
        rendered = live.rendered - rendered_before
        stats = get(url, "api/stats")[1]
        # Go on until the liar's socket is full and the server's send to it blocks, as for
        # a real tab that froze (a few MB of loopback buffer: seconds of frames). Stopping
        # then must cut its connection: a polite close waited for the buffer to drain, 5 s
        # in CI, before serve() could return.
        full = _wait_until_sends_block(url, tab_id=2, timeout_s=30)
        lying.set()
        acks.join(5)
        stopping = time.monotonic()
    # serve() returned with the stalled tabs still connected, without waiting on them.
    assert full, "the liar's socket never filled: the stop was not tested against it"
    assert time.monotonic() - stopping < 3
    stalled.close()
    liar.close()
    received = stats["server"]["received"] - received_before
    assert rendered >= 20, f"the pipeline rendered only {rendered} frames in 4 s"
    seqs = [seq for _, seq in got]
    assert seqs == sorted(set(seqs))
    # The good tab got most of what the server received, with no long gap.
    assert len(got) >= 0.5 * received, (len(got), received)
    gaps = np.diff([t for t, _ in got])
    assert gaps.max() < 1.0, gaps.max()
    # Open: the stalled tab and the liar; closed: the one that went away and the good one.
    tabs = {tab["id"]: tab for tab in stats["tabs"]}
    assert sorted(tabs) == [1, 2] and stats["server"]["tabs_closed"] == 2
    stalled_tab = tabs[1]  # sent its window's two frames, nothing since, all counted
    assert stalled_tab["sent"] == 2 and stalled_tab["in_flight"] == 2
    assert stalled_tab["box"] == [400, 300] and stalled_tab["sent_size"] == [400, 225]
    assert stalled_tab["skipped"] >= received
    # The liar was sent frames into a socket that nobody reads (loopback buffers hold
    # megabytes: at this size its send may never block within 4 s; if it does, only its own
    # task waits), and the good tab did not notice.
    assert tabs[2]["sent"] > 2


def test_security_refusals(live, tmp_path):
    # Off loopback: TLS and a token, or --insecure; refused before anything is bound.
    with pytest.raises(WebAccessError, match=r"--listen 0.0.0.0:8080 is not loopback: .* "
                                             r"needs TLS .* and a token .* or --insecure"):
        serve(WebOptions(live.publish, listen="0.0.0.0:8080"))
    with pytest.raises(WebAccessError, match="needs a token"):
        cert, key = _self_signed(tmp_path)
        serve(WebOptions(live.publish, listen="0.0.0.0:8080", tls_cert=cert, tls_key=key))
    with pytest.raises(WebAccessError, match="both --tls-cert"):
        serve(WebOptions(live.publish, tls_cert=cert))
    with pytest.raises(WebAccessError, match="expected HOST:PORT"):
        serve(WebOptions(live.publish, listen="8080"))

    with web_server(live.publish, token="s3cret") as url:
        assert get(url, "api/stats")[0] == 401
        assert get(url, "?token=wrong")[0] == 401
        assert get(url, "api/stats?token=s3cret")[0] == 200
        assert get(url, "api/stats", headers={"Authorization": "Bearer s3cret"})[0] == 200
        assert get(url, "api/prompts", method="POST", json={"prompts": ["scissors"]})[0] == 401
        with pytest.raises(aiohttp.WSServerHandshakeError, match="401"):
            asyncio.run(read_frames(url, 1))
        hello, frames = asyncio.run(read_frames(url, 2, token="?token=s3cret"))
        assert len(frames) == 2

    with web_server(live.publish, ask=live.ask) as url:
        port = url.rsplit(":", 1)[1].strip("/")
        # DNS rebinding: a site whose name now points at 127.0.0.1.
        status, body = get(url, "api/stats", headers={"Host": f"evil.example:{port}"})
        assert status == 403 and "its own address" in body["error"]
        # Another site's page: no WebSocket, no question.
        with pytest.raises(aiohttp.WSServerHandshakeError, match="403"):
            async def hijack():
                async with open_tab(url, origin="http://evil.example"):
                    pass
            asyncio.run(hijack())
        status, _ = get(url, "api/ask", method="POST", json={"question": "is there smoke?"},
                        headers={"Origin": "http://evil.example"})
        assert status == 403
        status, _ = get(url, "api/prompts", method="POST", json={"prompts": ["scissors"]},
                        headers={"Origin": "http://evil.example"})
        assert status == 403

    # TLS on loopback: the page and its API over HTTPS.
    with web_server(live.publish, tls_cert=cert, tls_key=key, token="t") as url:
        assert url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(cert))
        assert get(url.replace("127.0.0.1", "localhost"), "api/stats?token=t", ssl=trust)[0] \
            == 200


def _self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_insecure_off_loopback_is_allowed_with_a_loud_warning(live):
    from orstream.pipeline.web.access import check_exposure, parse_listen

    lines: list[str] = []
    sink = logger.add(lines.append, level="WARNING")
    try:
        check_exposure(parse_listen("0.0.0.0:8080"), tls=False, token=None, insecure=True)
    finally:
        logger.remove(sink)
    assert len(lines) == 1 and "WITHOUT TLS" in lines[0] and "anyone on" in lines[0]


def test_the_cli_refuses_an_exposed_listen_in_one_line_exit_2(live, capsys):
    assert main(["web", live.publish, "--listen", "0.0.0.0:8080"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not loopback" in err[0] and "Traceback" not in err[0]


def test_a_port_in_use_is_one_line_naming_a_free_one(live):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(WebAccessError,
                           match=rf"--listen 127.0.0.1:{port}: port {port} is in use .* "
                                 rf"e.g. --listen 127.0.0.1:\d+"):
            serve(WebOptions(live.publish, listen=f"127.0.0.1:{port}"))


def test_a_silent_endpoint_says_no_frames_yet_on_the_page_and_in_the_log():
    silent = f"tcp://127.0.0.1:{free_port()}"
    lines: list[str] = []
    sink = logger.add(lines.append, level="WARNING")

    async def status(url: str) -> str:
        async with open_tab(url) as (_, ws):
            while True:
                message = await ws.receive_json(timeout=10)
                if message.get("status"):
                    return message["status"]

    try:
        with web_server(silent, stall_warn_s=0.5) as url:
            text = asyncio.run(status(url))
            stats = get(url, "api/stats")[1]
    finally:
        logger.remove(sink)
    assert text.startswith(f"no frames from {silent} yet")
    assert any(f"no frames from {silent} yet" in line for line in lines)
    assert stats["server"]["received"] == 0 and stats["painted"]["latency_ms"]["p50"] is None


def test_questions_are_proxied_to_the_pipeline_and_a_unet_refuses_prompts_clearly(live):
    with web_server(live.publish, ask=live.ask) as url:
        deadline = time.monotonic() + 90  # the VLM process may still be starting
        while True:
            status, reply = get(url, "api/ask", method="POST",
                                json={"question": "is there smoke?"})
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert status == 200 and isinstance(reply["answer"], str), reply
        assert reply["stream"] == "or-1" and reply["seq"] >= 0
        assert get(url, "api/ask", method="POST", json={"question": "  "}) == \
            (400, {"error": EMPTY_QUESTION})
        assert get(url, "api/ask", method="POST", data="is there smoke?")[0] == 415
        # A U-Net pipeline segments no prompts: the server says so, the pipeline refuses.
        assert get(url, "api/prompts") == (200, {"prompts": None})
        status, reply = get(url, "api/prompts", method="POST", json={"prompts": ["gauze"]})
        assert status == 502 and "segment.model is unet" in reply["error"], reply
    with web_server(live.publish) as url:
        status, reply = get(url, "api/ask", method="POST", json={"question": "smoke?"})
        assert status == 404 and "--ask" in reply["error"]


def test_orstream_web_serves_until_ctrl_c_and_exits_0(live):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "orstream.pipeline.cli", "web",
                             live.publish, "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"serving http://127.0.0.1:{port}/"), line
        assert get(f"http://127.0.0.1:{port}/", "api/stats")[0] == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def frames_through(url: str, seq: int, after: int = 2) -> list[dict]:
    """The headers of the frames a tab is sent until `after` of them have a seq >= `seq`."""
    headers: list[dict] = []
    async with open_tab(url) as (_, ws):
        while sum(h["seq"] >= seq for h in headers) < after:
            message = await ws.receive(timeout=60)
            if message.type != aiohttp.WSMsgType.BINARY:
                continue
            header, _ = unpack(message.data)
            headers.append(header)
            await ws.send_json({"t": "painted", "seq": header["seq"], "dropped": 0,
                                "latency_ms": 1.0})
    return headers


def test_a_tpsis_pipelines_prompts_show_and_the_prompts_box_changes_them(
        tpsis_weights):  # noqa: F811 - the fixture imported above
    default = ["background", *DEFAULT_PROMPTS]
    with tpsis_pipeline(tpsis_weights) as tpsis, \
            web_server(tpsis.publish, ask=tpsis.ask) as url:
        # The frames carry their own table (task "prompts"): the page shows the prompts box.
        _, frames = asyncio.run(read_frames(url, 2))
        for header, _ in frames:
            assert header["classes"]["task"] == "prompts", header["classes"]
            assert header["classes"]["names"] == default
            assert len(header["classes"]["colors"]) == len(default)
        # Frames have come: a tab opened now is told the prompts before its first frame.
        hello, _ = asyncio.run(read_frames(url, 1))
        assert hello["prompts"] == list(DEFAULT_PROMPTS)
        assert get(url, "api/prompts") == (200, {"prompts": list(DEFAULT_PROMPTS)})
        assert get(url, "api/stats")[1]["server"]["prompts"] == list(DEFAULT_PROMPTS)

        # The box's prompts reach the pipeline; its reply names the first frame that has them.
        status, reply = get(url, "api/prompts", method="POST",
                            json={"prompts": ["scissors", " needle   holder "]})
        new = ["scissors", "needle holder"]  # whitespace collapsed, as the pipeline shows them
        assert status == 200 and reply["prompts"] == new and type(reply["seq"]) is int, reply
        headers = asyncio.run(frames_through(url, reply["seq"]))
        for header in headers:  # each frame with its own table: old before, new from seq on
            want = ["background", *new] if header["seq"] >= reply["seq"] else default
            assert header["classes"]["names"] == want, (header["seq"], reply["seq"])
        hello, _ = asyncio.run(read_frames(url, 1))
        assert hello["prompts"] == new and get(url, "api/prompts")[1] == {"prompts": new}

        # Bad requests are 400s naming the problem, refused here before anything is sent.
        for body, why in [({"prompts": "scissors"}, "must be a list of texts"),
                          ({"prompts": ["scissors", " "]}, "prompt 2 is empty"),
                          ({"prompts": ["x"] * 17}, "17 prompts: give 1 to 16"),
                          ({"prompts": [3]}, "prompt 1 is a int, not a text"),
                          ({"question": "scissors"}, 'no "prompts" in the body'),
                          (["scissors"], 'no "prompts" in the body')]:
            status, reply = get(url, "api/prompts", method="POST", json=body)
            assert status == 400 and why in reply["error"], (body, reply)
        status, reply = get(url, "api/prompts", method="POST", data="{prompts: scissors",
                            headers={"Content-Type": "application/json"})
        assert status == 400 and "the body is not JSON" in reply["error"], reply
        assert get(url, "api/prompts", method="POST", data="scissors")[0] == 415
        # The pipeline's own refusal (more word pieces than the text encoder keeps) is
        # passed through, and the running prompts stay.
        words = " ".join("abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrst")
        status, reply = get(url, "api/prompts", method="POST", json={"prompts": [words]})
        assert status == 502 and "the running ones stay" in reply["error"], reply
        headers = asyncio.run(read_frames(url, 2))[1]
        assert all(h["classes"]["names"] == ["background", *new] for h, _ in headers)

    # Without --ask the box cannot work: a 404 that says how to turn it on.
    with tpsis_pipeline(tpsis_weights) as tpsis, web_server(tpsis.publish) as url:
        status, reply = get(url, "api/prompts", method="POST", json={"prompts": ["scissors"]})
        assert status == 404 and "--ask" in reply["error"], reply
