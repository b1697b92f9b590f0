"""The describe stage: scene captions and answers from the VLM, beside the frame path.

It never holds a frame up. Render offers every frame it draws to a one-slot holder (a
reference, no copy) and attaches the latest caption to every frame it draws. A describe
thread waits for a caption to be due, takes the newest frame, shrinks it to the model's
input and hands it to the model, which runs in its own process (pipeline/describe_worker.py)
at the lowest CPU priority with its own torch threads: in a thread of this process its
Python would contend for the GIL with the frame path, measured as a 42 % rise of the
end-to-end p99 at 1 Hz (benchmarks/describe.py). The result is a Caption (text, plus the seq
and capture time of the frame it describes, so render shows its age and displays get it in
the header).

Questions arrive on a ZeroMQ REP socket (`orstream ask ENDPOINT "is there smoke?"`): JSON
`{"question": str}` in, `{"answer": str, "seq": int, "t_capture_ns": int, "ms": float}` or
`{"error": str}` out. They are answered on the newest frame, ahead of the next caption.
The same socket takes TP-SIS prompt changes, `{"prompts": [str, ...]}` (pipeline/
prompting.py), handed to the segment stage; with describe.enabled false and segment.model
tpsis the socket runs for them alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import zmq
from loguru import logger

from orstream.common.errors import UsageError
from orstream.pipeline.config import DescribeConfig
from orstream.pipeline.frame import Caption, Frame
from orstream.pipeline.leftovers import sweep_dead
from orstream.pipeline.ports import bind_as
from orstream.pipeline.security import Curve
from orstream.pipeline.transport import (
    NO_REPLY_KEYS_HINT,
    RateLimitedLog,
    context,
    normalize_endpoint,
    request_json,
)

ASK_MAX_BYTES = 4096  # a question is a sentence; anything longer is refused unread
# What the socket itself takes: up to here a longer request is answered (and counted) as too
# long; beyond, ZeroMQ drops the connection unread, so no peer can make us buffer megabytes.
ASK_SOCKET_MAX_BYTES = 64 * 1024
ASK_WAIT_S = 4.0  # the REP side gives up on the describe thread after this (`ask`: 5 s)
WORKER_START_S = 120.0  # torch import + weights, on a loaded 2-core machine
# One caption takes tens of ms; a reply this late gets a warning, not a failure: the worker
# runs at idle priority, and a saturated CPU can starve it for as long as the load lasts.
# Only a worker that exited ends the captions (measured: a CI run whose host was saturated
# lost its captions for the whole run to a 30 s limit here).
WORKER_SLOW_S = 30.0
STOP_WAIT_S = 1.0  # a stopping worker gets this long to exit before it is killed
CAPTION_TIMES_KEPT = 1000  # caption times kept for the log: ~17 min at 1 Hz, bounded
REPO_ROOT = Path(__file__).resolve().parents[1]


DIR_PREFIX = "orstream-describe-"


_DIR_NAME = re.compile(re.escape(DIR_PREFIX) + r"([0-9]{1,10})-\w+")


def sweep_stale_dirs(folder: Path | None = None) -> int:
    """Remove the describe folders of this user whose pipeline no longer runs. Returns how
    many went."""
    return sweep_dead(folder or Path(tempfile.gettempdir()), f"{DIR_PREFIX}*", _DIR_NAME,
                      shutil.rmtree)


class DescribeStopped(Exception):
    """The pipeline is stopping: a wait for the worker was given up (not a failure)."""


class Describes(Protocol):
    def caption(self, image_rgb_uint8) -> str: ...
    def answer(self, image_rgb_uint8, question: str) -> str: ...


class RemoteDescriber:
    """The VLM in its own process, with the Describer's two calls. The frame is shrunk to
    the model's input here (a 1080p frame would be 6 MB to send; its input is 60 KB)."""

    def __init__(self, cfg: DescribeConfig, stop: threading.Event | None = None) -> None:
        from orstream.engines.vlm.preprocess import prepare_image

        self._prepare = prepare_image
        # Set when the pipeline stops: a wait for the worker ends at once. The worker runs
        # at idle priority, so on a saturated CPU its reply can be seconds away, and Ctrl-C
        # must not wait for it.
        self._stop = stop or threading.Event()
        self.input_size: tuple[int, ...] = ()  # from the worker's hello
        self.priority: str | None = cfg.priority  # what it got, from its hello
        sweep_stale_dirs()
        # The pid in the name: a pipeline killed with SIGKILL leaves its folder (the
        # worker's log), and the next start removes it once that pid is gone.
        self._dir = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-"))
        endpoint = f"ipc://{self._dir}/vlm"
        self._socket = context().socket(zmq.PAIR)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(endpoint)
        command = [sys.executable, "-m", "orstream.pipeline.describe_worker", endpoint,
                   "--threads", str(cfg.threads), "--max-new-tokens", str(cfg.max_new_tokens),
                   "--priority", cfg.priority, "--backend", cfg.backend]
        if cfg.weights is not None:
            command += ["--weights", str(cfg.weights)]
        self._log = (self._dir / "worker.log").open("wb")
        self._proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self._log,
                                      cwd=REPO_ROOT)
        try:
            hello = self._reply(WORKER_START_S, "start")
        except BaseException:
            self.close()  # no worker left behind, whatever cut the start short
            raise
        if "error" in hello:
            self.close()
            raise RuntimeError(hello["error"])
        self.input_size = tuple(hello["input_size"])
        self.priority = hello.get("priority")

    def _reply(self, timeout_s: float | None, what: str) -> dict:
        """The worker's reply to `what`. timeout_s None: as long as the worker lives (a
        warning after WORKER_SLOW_S); otherwise a RuntimeError past it."""
        started = time.monotonic()
        slow = False
        while not self._socket.poll(50):
            if self._stop.is_set():
                raise DescribeStopped(f"stopping during the describe worker's {what}")
            if self._proc.poll() is not None:
                raise RuntimeError(f"the describe worker exited ({self._proc.returncode}) "
                                   f"during {what}: {self._tail()}")
            waited = time.monotonic() - started
            if timeout_s is not None and waited > timeout_s:
                raise RuntimeError(f"the describe worker gave no {what} reply within "
                                   f"{timeout_s:.0f} s")
            if timeout_s is None and not slow and waited > WORKER_SLOW_S:
                slow = True
                logger.warning("describe: no {} reply for {:.0f} s: the VLM's process runs at "
                               "{} priority and gets only the CPU the frame path leaves; "
                               "captions resume when there is some", what, waited,
                               self.priority)
        if slow:
            logger.info("describe: the {} reply came after {:.0f} s", what,
                        time.monotonic() - started)
        return json.loads(self._socket.recv())

    def _tail(self) -> str:
        self._log.flush()
        text = (self._dir / "worker.log").read_text(errors="replace").strip()
        return text[-800:] or "no output"

    def _call(self, request: dict, image: np.ndarray) -> str:
        small = self._prepare(image, self.input_size)
        self._socket.send_multipart([json.dumps(request).encode(), small.tobytes()])
        reply = self._reply(None, request["op"])
        if "error" in reply:
            raise ValueError(reply["error"])
        return reply["text"]

    def caption(self, image_rgb_uint8: np.ndarray) -> str:
        return self._call({"op": "caption"}, image_rgb_uint8)

    def answer(self, image_rgb_uint8: np.ndarray, question: str) -> str:
        return self._call({"op": "answer", "question": question}, image_rgb_uint8)

    def close(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(zmq.ZMQError):  # it may be gone already
                self._socket.send(json.dumps({"op": "stop"}).encode(), zmq.NOBLOCK)
            # A worker that said hello reads the stop and exits at once when it has the
            # CPU; one still loading (at idle priority beside a busy frame path that can
            # take many seconds) never reads it. Neither holds anything worth waiting for.
            try:
                self._proc.wait(STOP_WAIT_S if self.input_size else 0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._socket.close(0)
        self._log.close()
        shutil.rmtree(self._dir, ignore_errors=True)


@dataclass
class _Question:
    text: str
    done: threading.Event
    reply: dict | None = None


class DescribeWorker:
    """The describe thread and the ask socket; `offer` and `latest` are for render."""

    def __init__(self, cfg: DescribeConfig, curve: Curve | None = None,
                 prompts: Callable[[Any], dict] | None = None) -> None:
        """`prompts`: answers `{"prompts": [...]}` requests (pipeline/prompting.py); None:
        they are refused as segmentation being off. With cfg.enabled false no model is
        loaded and only the ask socket runs (for prompts)."""
        self.cfg = cfg
        self._prompts = prompts
        self.captions = 0  # captions made
        self.answers = 0  # questions answered
        self.rejected: Counter[str] = Counter()  # reason -> requests refused unanswered
        self._log = RateLimitedLog()
        # Time per caption of the last CAPTION_TIMES_KEPT, for the log's p50: a list of
        # every one grew for as long as the pipeline ran (found by benchmarks/soak.py).
        self.caption_ms: deque[float] = deque(maxlen=CAPTION_TIMES_KEPT)
        self._cond = threading.Condition()
        self._newest: Frame | None = None
        self._offered = 0  # frames offered since the last caption (every_frames)
        self._wants_frame = False  # the thread sleeps until a new frame: wake it on offer
        self._latest: Caption | None = None
        self._questions: list[_Question] = []
        self._stop = threading.Event()
        self.ready = threading.Event()  # the model answered its hello, or failed to
        self.failed: BaseException | None = None  # why the model could not load or went on
        self._threads: list[threading.Thread] = []
        self._socket: zmq.Socket | None = None
        if cfg.ask_endpoint:
            # Bound here, on the caller's thread, so a port already in use fails the start
            # of the pipeline with the key to change, not a log line later.
            endpoint = normalize_endpoint(cfg.ask_endpoint)
            socket = context().socket(zmq.REP)
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.MAXMSGSIZE, ASK_SOCKET_MAX_BYTES)
            socket.setsockopt(zmq.RCVTIMEO, 200)  # how often the ask thread checks for stop
            try:
                if curve is not None:
                    # The same keys as the publisher: a question and its answer describe
                    # the scene, which must not cross a network in the clear either.
                    curve.apply(socket, endpoint, bind=True)
                bind_as("describe.ask_endpoint", endpoint, lambda: socket.bind(endpoint))
            except UsageError:
                socket.close(0)
                raise
            except zmq.ZMQError as exc:
                socket.close(0)
                raise UsageError(f"describe.ask_endpoint: cannot bind {endpoint} ({exc}); "
                                 f"set another port, or null for no questions") from None
            self._socket = socket
            self.endpoint = endpoint

    # ------------------------------------------------------------------ render's side

    def offer(self, frame: Frame) -> None:
        """The newest frame, from render; returns at once."""
        with self._cond:
            self._newest = frame
            self._offered += 1
            if self._wants_frame:
                self._cond.notify()

    def latest(self) -> Caption | None:
        return self._latest

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._threads = []
        if self.cfg.enabled:
            self._threads.append(threading.Thread(target=self._run, name="orstream-describe",
                                                  daemon=True))
        if self._socket is not None:
            self._threads.append(threading.Thread(target=self._serve, name="orstream-ask",
                                                  daemon=True))
        for t in self._threads:
            t.start()

    @property
    def running(self) -> bool:
        """Whether the describe or ask thread is still alive."""
        return any(t.is_alive() for t in self._threads)

    def stop(self) -> None:
        """Begin stopping, without waiting: the model's process winds down while the frame
        path drains. Idempotent; close() finishes the job."""
        if not self._stop.is_set():
            self._stop.set()
            with self._cond:
                self._cond.notify_all()

    def close(self, timeout_s: float = 10.0) -> None:
        self.stop()
        for t in self._threads:
            t.join(timeout_s)
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None
        if self.captions:
            ms = sorted(self.caption_ms)
            logger.info("describe: {} captions (p50 {:.0f} ms of the last {}), {} questions "
                        "answered",
                        self.captions, ms[len(ms) // 2], len(ms), self.answers)

    # ------------------------------------------------------------------ describe thread

    def _load(self) -> Describes:
        return RemoteDescriber(self.cfg, self._stop)

    def _run(self) -> None:
        try:
            describer = self._load()
        except DescribeStopped:
            self.ready.set()
            return
        except Exception as exc:  # noqa: BLE001 - reported; the frame path runs on
            self.failed = exc
            logger.error("describe: cannot load the VLM ({}); no captions this run", exc)
            self.ready.set()
            return
        name = self.cfg.weights.name if self.cfg.weights else "the shipped VLM"
        logger.info("describe: {} in its own process ({} priority, {} thread(s)), {}", name,
                    getattr(describer, "priority", self.cfg.priority), self.cfg.threads,
                    self._rate_text())
        try:
            self._loop(describer)
        except DescribeStopped:
            pass
        except Exception as exc:  # noqa: BLE001 - captions stop; frames never did
            self.failed = exc
            logger.error("describe: stopped ({}); the frame path goes on without captions",
                         exc)
        finally:
            close = getattr(describer, "close", None)
            if close is not None:
                close()

    def _loop(self, describer: Describes) -> None:
        self.ready.set()
        next_due = time.monotonic()
        last_seq: tuple[str, int] | None = None
        while not self._stop.is_set():
            question, frame = None, None
            with self._cond:
                while not self._stop.is_set():
                    if self._questions:
                        question = self._questions.pop(0)
                        frame = self._newest
                        break
                    newest = self._newest
                    fresh = newest is not None and (newest.stream, newest.seq) != last_seq
                    wait = self._wait_s(fresh, next_due)
                    if wait == 0:
                        frame = newest
                        self._offered = 0
                        break
                    self._wants_frame = not fresh or self.cfg.every_frames is not None
                    self._cond.wait(wait)
                    self._wants_frame = False
            if self._stop.is_set():
                break
            if question is not None:
                self._answer(describer, question, frame)
                continue
            assert frame is not None
            t0 = time.monotonic()
            text = describer.caption(frame.image)
            self.caption_ms.append((time.monotonic() - t0) * 1e3)
            self._latest = Caption(text, frame.seq, frame.t_capture_ns)
            self.captions += 1
            last_seq = (frame.stream, frame.seq)
            if self.cfg.interval_s:
                # Paced from when it was due, not when it finished: a steady 1 Hz.
                next_due = max(next_due + self.cfg.interval_s, t0)

    def _wait_s(self, fresh: bool, next_due: float) -> float | None:
        """0: caption now; otherwise how long to wait (None: until woken)."""
        if not fresh:
            return None
        if self.cfg.every_frames is not None:
            return 0 if self._offered >= self.cfg.every_frames else None
        return max(0.0, next_due - time.monotonic())

    def _rate_text(self) -> str:
        if self.cfg.every_frames is not None:
            return f"every {self.cfg.every_frames} frames"
        if self.cfg.interval_s:
            return f"every {self.cfg.interval_s:g} s"
        return "whenever idle"

    def _answer(self, describer: Describes, question: _Question, frame: Frame | None) -> None:
        if frame is None:
            question.reply = {"error": "no frame has been seen yet"}
        else:
            t0 = time.monotonic()
            try:
                text = describer.answer(frame.image, question.text)
            except ValueError as exc:  # the model refuses this question (too long, say)
                question.reply = self._refuse("model_refused", str(exc))
            except Exception as exc:  # the worker died: say so, then stop describing
                question.reply = {"error": f"the describe model failed: {exc}"}
                question.done.set()
                raise
            else:
                self.answers += 1
                question.reply = {"answer": text, "seq": frame.seq, "stream": frame.stream,
                                  "t_capture_ns": frame.t_capture_ns,
                                  "ms": round((time.monotonic() - t0) * 1e3, 1)}
        question.done.set()

    # ------------------------------------------------------------------ ask thread

    def _serve(self) -> None:
        socket = self._socket
        assert socket is not None
        while not self._stop.is_set():
            try:
                # Every part: REP answers only once the whole request is read, and a reply
                # to half a request fails (EFSM), which would end this thread.
                parts = socket.recv_multipart()
            except zmq.Again:
                continue
            except zmq.ZMQError:
                break  # closed
            reply = (self._reply_to(parts[0]) if len(parts) == 1 else
                     self._refuse("bad_framing", f"{len(parts)} parts; a question is one"))
            try:
                socket.send(json.dumps(reply).encode())
            except zmq.ZMQError:
                break

    def _refuse(self, reason: str, error: str) -> dict:
        """Count a request refused unanswered (a peer's fault, not the model's) and say why."""
        self.rejected[reason] += 1
        self._log.warn(reason, f"ask on {self.endpoint} refused a request ({reason}: "
                       f"{error[:80]}); total refused: {sum(self.rejected.values())}")
        return {"error": error}

    def _reply_to(self, raw: bytes) -> dict:
        if len(raw) > ASK_MAX_BYTES:
            return self._refuse("oversize", f"the question is too long: the request is "
                                f"{len(raw)} bytes, at most {ASK_MAX_BYTES}")
        try:
            request = json.loads(raw)
        except (ValueError, RecursionError):  # bad UTF-8 or JSON; nested too deep
            return self._refuse("bad_json", 'expected JSON {"question": "..."}')
        if type(request) is dict and "prompts" in request:
            if self._prompts is None:
                return {"error": "segmentation is off (segment.enabled: false): no prompts "
                                 "to change"}
            try:
                return self._prompts(request["prompts"])
            except Exception as exc:  # noqa: BLE001 - a failed change must not end the socket
                logger.opt(exception=exc).error("ask: the prompt change failed")
                return {"error": f"the prompt change failed ({exc.__class__.__name__}: "
                                 f"{str(exc)[:200]}); the running prompts stay"}
        text = request.get("question") if type(request) is dict else None
        if type(text) is not str:
            return self._refuse("bad_question", 'expected JSON {"question": "..."}')
        if not text.strip():
            return self._refuse("empty_question", EMPTY_QUESTION)
        if not self.cfg.enabled:
            return {"error": "describe.enabled is false: this pipeline answers no questions "
                             "(its ask socket takes prompt changes only)"}
        if not self.ready.is_set():  # say so now: the asker's timeout is about as long
            return {"error": "the describe model is still loading (seconds after start); "
                             "ask again"}
        if self.failed is not None:
            return {"error": f"the describe model failed: {self.failed}"}
        question = _Question(text, threading.Event())
        with self._cond:
            self._questions.append(question)
            self._cond.notify()
        if not question.done.wait(ASK_WAIT_S):
            return {"error": f"no answer within {ASK_WAIT_S:.0f} s"}
        assert question.reply is not None
        return question.reply


EMPTY_QUESTION = 'the question is empty: ask about the scene, e.g. "is there smoke?"'


def ask(endpoint: str, question: str, timeout_s: float = 5.0,
        curve: Curve | None = None) -> dict:
    """Send one question to a running pipeline; its JSON reply (see module docstring).
    UsageError for a blank question, before anything is sent. `curve`: this client's keys
    and the pipeline's public key, for a pipeline that runs with security.curve."""
    if not question.strip():
        raise UsageError(EMPTY_QUESTION)
    endpoint = normalize_endpoint(endpoint)
    reply = request_json(endpoint, {"question": question}, timeout_s, curve)
    if reply is None:
        keys = "" if curve is not None else NO_REPLY_KEYS_HINT
        raise TimeoutError(f"no reply from {endpoint} within {timeout_s:g} s: is "
                           f"`orstream run` running with describe on?{keys}")
    return reply
