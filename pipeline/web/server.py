"""`orstream web`: the page, its WebSocket, /api/stats, /api/ask, /api/prompts, on aiohttp.

Routes:
- `GET /` the page (static/index.html), `GET /static/...` its script and style;
- `GET /ws[?w=W&h=H]` the frames (hub.py: binary header + JPEG) and, as text, `hello`,
  `status` (no frames yet, stalled) and `tab` (this tab's counts, each second); the page
  answers each frame once done with it: `painted` (with its latency) or `ack` (superseded),
  and says what it shows the video in, in device pixels: `w`/`h` in the URL, then
  `{"t": "size", "w", "h"}` whenever that changes; frames come scaled to fit (none: full size);
- `GET /api/stats[?last_s=N]` the server's and every tab's figures (the tabs' latencies over
  the last N seconds' frames only, with last_s);
- `POST /api/ask` `{"question"}` -> the pipeline's answer (describe.ask over ZeroMQ);
- `GET /api/prompts` -> `{"prompts": [...] | null}`: what the newest frame was segmented
  with (null: the stream segments no prompts, a U-Net pipeline);
- `POST /api/prompts` `{"prompts": [...]}` -> the pipeline's reply to the change,
  `{"prompts", "seq", "ms", "read_as"}` (prompting.set_prompts over the same ask socket).

Whether the pipeline segments prompts is read from its frames: a TP-SIS frame carries its own
class table (task "prompts", hub.py), which the frame header passes on to the page; `hello`
says the newest frame's prompts (null: none), for the page's prompts box before its first
frame.

Everything but the static files checks the token when there is one (`?token=` or
`Authorization: Bearer`), and access.Gate's Host and Origin rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import WSMsgType, web
from loguru import logger

from orstream.common.errors import UsageError
from orstream.engines.tpsis_engine import PromptError, check_prompts
from orstream.pipeline.describe import ASK_MAX_BYTES, EMPTY_QUESTION, ask
from orstream.pipeline.ports import free_port_pair, in_use
from orstream.pipeline.prompting import set_prompts
from orstream.pipeline.security import Curve
from orstream.pipeline.web.access import (
    Gate,
    Listen,
    WebAccessError,
    check_exposure,
    parse_listen,
    tls_context,
)
from orstream.pipeline.web.hub import FrameHub, percentiles
from orstream.pipeline.web.tabs import WINDOW, Tab, box_of

STATIC = Path(__file__).resolve().parent / "static"
HEARTBEAT_S = 10.0  # a tab whose connection died without a FIN is closed after this
CLOSE_WAIT_S = 1.0  # a closing tab gets this long to answer the close (a stalled one never)
ASK_TIMEOUT_S = 10.0  # the pipeline answers in tens of ms; its REP side gives up after 4 s
# A change is encoded in ms, then its reply waits up to 2 s (prompting.APPLY_WAIT_S) for the
# first frame that uses it; a question already at the socket may hold it up to 4 s before.
PROMPTS_TIMEOUT_S = 10.0
PROMPTS_EXAMPLE = '{"prompts": ["scissors", "needle holder"]}'
NO_ASK = ("this display was started without --ask ENDPOINT (the pipeline's "
          "describe.ask_endpoint)")
# What the page may load: its own files, blob: images, its own WebSocket; never framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                               "connect-src 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",  # the token is in the page's URL
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class WebOptions:
    endpoint: str  # the publisher to watch, e.g. tcp://127.0.0.1:5600
    listen: str = "127.0.0.1:8080"  # HOST:PORT; port 0: any free one
    ask: str | None = None  # the pipeline's describe.ask_endpoint; None: no questions
    curve: Curve | None = None  # CurveZMQ to the publisher, as for `orstream view`
    token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = False  # serve off loopback without TLS or token
    quality: int = 80  # JPEG quality: 80 is ~200 KB for a 1080p overlay
    window: int = WINDOW
    stall_warn_s: float = 2.0  # as `orstream view --stall`
    full: bool = False  # every tab gets full resolution, whatever size it shows the video at


@dataclass(frozen=True)
class _OpenTab:
    """A tab while its WebSocket is open: its state, its socket, and the connection under
    it (cut when the tab does not answer a close, see _close_tabs)."""

    tab: Tab
    ws: web.WebSocketResponse
    transport: asyncio.BaseTransport | None


class WebServer:
    def __init__(self, opts: WebOptions, hub: FrameHub, gate: Gate) -> None:
        self.opts = opts
        self.hub = hub
        self.gate = gate
        self._open: dict[int, _OpenTab] = {}  # by tab id
        self._next_id = 0
        self.closed = {"tabs": 0, "painted": 0, "skipped": 0}
        self.started = time.monotonic()
        self._status = ""  # the warning shown on pages now ("" when frames flow)
        # The pipeline's ask socket answers one request (question or prompts) at a time: one
        # waits here rather than in a worker thread each.
        self._ask_lock = asyncio.Lock()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", STATIC)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/api/stats", self._stats)
        app.router.add_post("/api/ask", self._ask)
        app.router.add_get("/api/prompts", self._current_prompts)
        app.router.add_post("/api/prompts", self._prompts)
        app.on_shutdown.append(self._close_tabs)
        return app

    # -------------------------------------------------------------------------- checks

    @web.middleware
    async def _guard(self, request: web.Request, handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if not self.gate.host_ok(host):
            return _error(403, f"this server answers only to its own address, not {host!r}")
        if not request.path.startswith("/static/"):
            auth = request.headers.get("Authorization", "")
            given = request.query.get("token") or (auth[7:] if auth.startswith("Bearer ")
                                                   else None)
            if not self.gate.token_ok(given):
                return _error(401, "missing or wrong token: open the page as "
                                   "URL/?token=TOKEN (the token given to `orstream web`)")
            acting = request.method != "GET" or request.path == "/ws"
            if acting and not self.gate.origin_ok(request.headers.get("Origin"), host):
                return _error(403, "requests from another site's page are refused")
        response = await handler(request)
        if not response.prepared:  # a WebSocket has sent its headers already
            response.headers.update(SECURITY_HEADERS)
        return response

    # ------------------------------------------------------------------------ the page

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=False,  # JPEG does not deflate: CPU for nothing
                                   heartbeat=HEARTBEAT_S, max_msg_size=4096,
                                   timeout=CLOSE_WAIT_S)
        await ws.prepare(request)
        self._next_id += 1
        tab = Tab(self._next_id, request.remote or "?", window=self.opts.window)
        # Its size from the URL, so that its first frame is already of that size.
        self._resize(tab, request.query.get("w"), request.query.get("h"))
        self._open[tab.id] = _OpenTab(tab, ws, request.transport)
        logger.info("web: tab {} opened from {} ({} open)", tab.id, tab.peer, len(self._open))
        await ws.send_str(json.dumps({
            "t": "hello", "tab": tab.id, "endpoint": self.opts.endpoint,
            "ask": self.opts.ask is not None, "prompts": self._prompts_now(),
            "window": tab.window, "full": self.opts.full}))
        if self._status:
            await ws.send_str(json.dumps({"t": "status", "text": self._status}))
        feeder = asyncio.create_task(self._feed(ws, tab), name=f"web-tab-{tab.id}")
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    self._on_page(tab, message.data)
        finally:
            feeder.cancel()
            if tab.telling is not None:
                tab.telling.cancel()
            del self._open[tab.id]
            self.closed["tabs"] += 1
            self.closed["painted"] += tab.painted
            self.closed["skipped"] += tab.skipped_now(self.hub.received)
            logger.info("web: tab {} closed: {} frames sent, {} skipped, {} painted", tab.id,
                        tab.sent, tab.skipped, tab.painted)
        return ws

    async def _feed(self, ws: web.WebSocketResponse, tab: Tab) -> None:
        """Send the tab the newest frame whenever it has room (tabs.py)."""
        try:
            while not ws.closed:
                await tab.room.wait()
                frame = await self.hub.next_after(tab.last_index, tab.box)
                tab.sending(frame)
                await ws.send_bytes(frame.data)
        except ConnectionError:  # the tab went away mid-send: its handler ends the rest
            return

    def _on_page(self, tab: Tab, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            return  # a page of ours never sends that; one that does is ignored
        if not isinstance(message, dict):
            return
        kind = message.get("t")
        if kind in ("ack", "painted"):  # the page is done with a frame: room for another
            tab.acked()
        if kind == "painted":
            tab.painted_report(message.get("seq"), message.get("latency_ms"),
                               message.get("dropped"), message.get("arrived_ms"),
                               message.get("decoded_ms"))
        elif kind == "size":
            self._resize(tab, message.get("w"), message.get("h"))

    def _resize(self, tab: Tab, width: object, height: object) -> None:
        """The box the page shows the video in; a frame already waited for comes at the old
        size, the next ones at the new. Ignored with `full`, and when not a size."""
        box = box_of(width, height)
        if box is not None and not self.opts.full and box != tab.box:
            tab.box = box
            logger.debug("web: tab {} shows the video in {}x{} device pixels", tab.id, *box)

    async def _close_tabs(self, app: web.Application) -> None:
        """Every tab at once gets CLOSE_WAIT_S to answer the close. One that does not (a
        stalled tab, or one whose socket is full so that the close cannot even be sent) has
        its connection cut: closing it politely would wait for its buffer to drain, which
        for a tab that reads nothing is forever, and held serve() past its stop."""
        async def close(open_tab: _OpenTab) -> None:
            try:
                await asyncio.wait_for(open_tab.ws.close(code=1001, message=b"server stopping"),
                                       CLOSE_WAIT_S)
            except (TimeoutError, ConnectionError):
                if open_tab.transport is not None:
                    open_tab.transport.abort()

        await asyncio.gather(*(close(o) for o in list(self._open.values())))

    # ---------------------------------------------------------------------- status push

    async def watch(self) -> None:
        """Each second: the stall warning (log and pages) and each tab's counts."""
        warned = ""
        while True:
            await asyncio.sleep(1.0)
            silent = self.hub.silent_s(self.started)
            status = ""
            if silent >= self.opts.stall_warn_s:
                status = (f"no frames from {self.opts.endpoint} yet ({silent:.0f} s): is the "
                          f"pipeline running and publishing there? does it need --key?"
                          if not self.hub.received else
                          f"no frames from {self.opts.endpoint} for {silent:.0f} s (the "
                          f"publisher stopped or stalls)")
            if bool(status) != bool(warned):
                if status:
                    logger.warning("web: {}", status)
                else:
                    logger.info("web: frames again from {}", self.opts.endpoint)
                warned = status
            self._status = status
            for open_tab in list(self._open.values()):
                tab, ws = open_tab.tab, open_tab.ws
                if ws.closed or tab.in_flight >= tab.window or (
                        tab.telling is not None and not tab.telling.done()):
                    continue  # a tab that reads nothing is sent nothing more
                # Its own task: a send can wait for a full socket, and no tab may hold up
                # the others' figures.
                tab.telling = asyncio.create_task(_tell(ws, {
                    "t": "tab", "status": status, "sent": tab.sent,
                    "skipped": tab.skipped_now(self.hub.received),
                    "server_fps": round(self.hub.fps(), 1), "lost": self.hub.lost}))

    # --------------------------------------------------------------------------- api

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        last = request.query.get("last_s")
        if last is None:
            return web.json_response(self.stats())
        try:
            last_s = float(last)
        except ValueError:
            last_s = math.nan
        if not 0 < last_s <= 3600:
            return _error(400, f"last_s={last!r}: give the seconds of the latest reports to "
                               "cover, 0 < last_s <= 3600 (without it: every frame kept)")
        return web.json_response(self.stats(last_s))

    def stats(self, last_s: float | None = None) -> dict:
        """The server's and every open tab's figures; the tabs' latencies over the reports of
        the last `last_s` seconds only, when given (a measurement that leaves out a page's
        start), else over every one kept (SAMPLES per tab)."""
        tabs = [o.tab for o in self._open.values()]
        received = self.hub.received
        since = None if last_s is None else time.monotonic() - last_s
        everything = [ms for tab in tabs for ms in tab.latencies(since)]
        return {
            "server": {**self.hub.to_json(), "uptime_s": round(time.monotonic() -
                                                                 self.started, 1),
                       "tabs_open": len(tabs), "tabs_closed": self.closed["tabs"],
                       "skipped": self.closed["skipped"] + sum(t.skipped_now(received)
                                                               for t in tabs),
                       "status": self._status or None},
            "painted": {"frames": self.closed["painted"] + sum(t.painted for t in tabs),
                        "latency_ms": percentiles(everything)},  # open tabs' samples
            "tabs": [tab.to_json(received, since) for tab in tabs],
            "last_s": last_s,
        }

    async def _ask(self, request: web.Request) -> web.StreamResponse:
        if self.opts.ask is None:
            return _error(404, f"{NO_ASK}: no questions")
        if request.content_type != "application/json":
            return _error(415, 'send {"question": "..."} as application/json')
        try:
            body = await request.json()
        except (ValueError, RecursionError):  # not UTF-8 or not JSON; nested too deep
            return _error(400, 'expected JSON {"question": "..."}')
        question = body.get("question") if isinstance(body, dict) else None
        if not isinstance(question, str) or not question.strip():
            return _error(400, EMPTY_QUESTION)
        if len(question.encode()) > ASK_MAX_BYTES:
            return _error(400, f"the question is longer than {ASK_MAX_BYTES} bytes")
        async with self._ask_lock:
            try:
                reply = await asyncio.to_thread(ask, self.opts.ask, question,
                                                ASK_TIMEOUT_S, self.opts.curve)
            except TimeoutError as exc:
                return _error(504, str(exc))
            except UsageError as exc:
                return _error(400, str(exc))
        return web.json_response(reply, status=200 if "error" not in reply else 502)

    def _prompts_now(self) -> list[str] | None:
        prompts = self.hub.prompts
        return list(prompts) if prompts is not None else None

    async def _current_prompts(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"prompts": self._prompts_now()})

    async def _prompts(self, request: web.Request) -> web.StreamResponse:
        """New prompts for the pipeline (the page's prompts box). Prompts that would be refused
        are answered here (tpsis_engine.check_prompts) before anything is sent; the pipeline's
        own refusal (a U-Net pipeline, segmentation off) comes back as its error, as
        /api/ask's do."""
        if self.opts.ask is None:
            return _error(404, f"{NO_ASK}: it cannot change the pipeline's prompts; start it "
                               f"with --ask ENDPOINT, e.g. --ask tcp://127.0.0.1:5601")
        if request.content_type != "application/json":
            return _error(415, f"send {PROMPTS_EXAMPLE} as application/json")
        try:
            body = await request.json()
        except (ValueError, RecursionError):  # not UTF-8 or not JSON; nested too deep
            return _error(400, f"the body is not JSON: expected {PROMPTS_EXAMPLE}")
        if not isinstance(body, dict) or "prompts" not in body:
            return _error(400, f"no \"prompts\" in the body: expected {PROMPTS_EXAMPLE}")
        try:  # here, before anything is sent: a 400 naming the problem
            prompts = check_prompts(body["prompts"])
        except PromptError as exc:
            return _error(400, f"prompts refused: {exc}")
        async with self._ask_lock:
            try:
                reply = await asyncio.to_thread(set_prompts, self.opts.ask, prompts,
                                                PROMPTS_TIMEOUT_S, self.opts.curve)
            except TimeoutError as exc:  # prompting.PromptTimeout
                return _error(504, str(exc))
            except UsageError as exc:  # as for questions: an --ask that is no endpoint
                return _error(400, str(exc))
        return web.json_response(reply, status=200 if "error" not in reply else 502)


async def _tell(ws: web.WebSocketResponse, message: dict) -> None:
    with contextlib.suppress(ConnectionError):  # the tab went away meanwhile
        await ws.send_str(json.dumps(message))


def _error(status: int, text: str) -> web.Response:
    return web.json_response({"error": text}, status=status)


def serve(opts: WebOptions, stop: threading.Event | None = None,
          on_listening: Callable[[str], None] | None = None) -> dict:
    """Serve until `stop` is set (then set by this function on any return); the final
    /api/stats figures. on_listening(url) once the address is bound."""
    listen = parse_listen(opts.listen)
    tls = tls_context(opts.tls_cert, opts.tls_key)
    check_exposure(listen, tls is not None, opts.token, opts.insecure)
    stop = stop or threading.Event()
    try:
        return asyncio.run(_serve(opts, listen, tls, stop, on_listening))
    finally:
        stop.set()


async def _serve(opts: WebOptions, listen: Listen, tls, stop: threading.Event,
                 on_listening: Callable[[str], None] | None) -> dict:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    threading.Thread(target=_relay_stop, args=(stop, loop, stopping), name="web-stop",
                     daemon=True).start()
    hub = FrameHub(opts.endpoint, opts.curve, opts.quality)
    server = WebServer(opts, hub, Gate(listen, opts.token))
    runner = web.AppRunner(server.app(), handle_signals=False, access_log=None,
                           shutdown_timeout=CLOSE_WAIT_S * 2)
    await runner.setup()
    watcher = None
    try:
        try:
            await web.TCPSite(runner, listen.host, listen.port, ssl_context=tls).start()
        except OSError as exc:
            raise _listen_error(listen, exc) from None
        bound = Listen(listen.host, runner.addresses[0][1])
        hub.start()
        watcher = asyncio.create_task(server.watch(), name="web-watch")
        url = bound.url(tls is not None)
        logger.info("web: serving {} for {}{}", url, opts.endpoint,
                    f", questions to {opts.ask}" if opts.ask else "")
        if on_listening is not None:
            on_listening(url)
        await stopping.wait()
        logger.info("web: stopping")
        return server.stats()
    finally:
        if watcher is not None:
            watcher.cancel()
        await runner.cleanup()
        await hub.close()


def _relay_stop(stop: threading.Event, loop: asyncio.AbstractEventLoop,
                stopping: asyncio.Event) -> None:
    """The caller's threading.Event, seen by the loop without polling: this thread waits on
    it. serve() sets it on its way out too, when the loop may be closed already."""
    stop.wait()
    with contextlib.suppress(RuntimeError):  # the loop closed first: nothing left to stop
        loop.call_soon_threadsafe(stopping.set)


def _listen_error(listen: Listen, exc: OSError) -> UsageError:
    if in_use(exc):
        free = free_port_pair(listen.host, listen.port + 10)
        return WebAccessError(f"--listen {listen}: port {listen.port} is in use (another "
                              f"orstream web?); pick a free one, e.g. --listen "
                              f"{Listen(listen.host, free)}")
    if exc.errno == errno.EADDRNOTAVAIL:
        return WebAccessError(f"--listen {listen}: {listen.host} is not an address of this "
                              f"machine")
    return WebAccessError(f"--listen {listen}: cannot listen there: {exc.strerror or exc}")
