"""`orstream web`: a real pipeline feeding the browser display's server, read by plain Python
WebSocket clients (tests/test_web_browser.py drives a real browser)."""

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

import aiohttp
import cv2
import numpy as np
import pytest
from loguru import logger

from orstream.common.net import free_port
from orstream.pipeline.cli import main
from orstream.pipeline.config import load_config
from orstream.pipeline.describe import EMPTY_QUESTION
from orstream.pipeline.runner import Pipeline
from orstream.pipeline.web import WebOptions, serve
from orstream.pipeline.web.access import WebAccessError
from orstream.pipeline.web.hub import unpack
from orstream.pipeline.web.server import NO_PROMPTS


class LivePipeline:
    """`orstream run` at 640x360 on free ports, in this process, counting rendered frames."""

    def __init__(self) -> None:
        self.publish = f"tcp://127.0.0.1:{free_port()}"
        self.ask = f"tcp://127.0.0.1:{free_port()}"
        self.rendered = 0
        cfg = load_config(None, ["source.width=640", "source.height=360",
                                 "segment.backend=torch", "segment.precision=fp32",
                                 "describe.interval_s=0.5", f"describe.ask_endpoint={self.ask}"],
                          publish__endpoint=self.publish)
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
    assert hello["t"] == "hello" and hello["ask"] is True and hello["prompts"] is False
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


def _stalled_tab(url: str) -> socket.socket:
    """A tab that opens the WebSocket and then never reads a byte."""
    host, port = url.split("//")[1].strip("/").rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # full with the first frame
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
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
        stalled, liar, closed = _stalled_tab(url), _stalled_tab(url), _stalled_tab(url)
        lying = threading.Event()
        acks = _ack_blindly(liar, lying)
        time.sleep(0.5)
        closed.close()  # a tab closed without a goodbye
        received_before = get(url, "api/stats")[1]["server"]["received"]
        rendered_before = live.rendered
        got = asyncio.run(good_tab(url, 4.0))
        rendered = live.rendered - rendered_before
        stats = get(url, "api/stats")[1]
        lying.set()
        acks.join(5)
        stopping = time.monotonic()
    # serve() returned with the stalled tabs still connected, without waiting on them.
    assert time.monotonic() - stopping < 5
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


def test_questions_are_proxied_to_the_pipeline_and_prompts_are_refused_clearly(live):
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
        assert get(url, "api/prompts", method="POST", json={"prompts": ["gauze"]}) == \
            (409, {"error": NO_PROMPTS})
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
