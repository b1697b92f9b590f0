"""The pipeline's stages: segment, render and the sinks (publish, record, null).

A stage knows nothing about sockets or threads: `open()`, `process(frame)`, `close()`.
`process` returns the frame to pass on, or None when the frame ends here. The runner gives
each stage a thread, feeds it from its input edge, stamps the trace and sends the result on.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from loguru import logger

from orstream.common.classes import PROMPTS_TASK, palette, prompt_table
from orstream.common.crop import Region, crop_region
from orstream.engines import checkpoint as ckpt
from orstream.engines import tpsis_checkpoint as tckpt
from orstream.engines.backends import TRITON, Engine
from orstream.engines.backends.triton_backend import TritonOffline
from orstream.engines.cache import EngineCache, file_sha256
from orstream.engines.export import EngineSpec, Resolved, needs_build, open_engine, resolve
from orstream.engines.postprocess import instance_vote
from orstream.engines.tpsis_checkpoint import TPSISCheckpoint
from orstream.pipeline import masks
from orstream.pipeline.config import PipelineConfig, SegmentConfig
from orstream.pipeline.describe import DescribeWorker
from orstream.pipeline.frame import Frame
from orstream.pipeline.overlay import OverlayRenderer, OverlayStyle
from orstream.pipeline.ports import bind_as
from orstream.pipeline.prompting import UNET_REFUSAL, PromptSlot
from orstream.pipeline.recorder import RecorderError, RotatingRecorder
from orstream.pipeline.security import Curve
from orstream.pipeline.transport import Sender

STATUS_REFRESH_NS = 100_000_000  # the status line's figures are recomputed this often


class Stage:
    name = "stage"
    # Set by the runner: True once the pipeline is stopping, so a stage that waits on a
    # peer (a lossless display that went away) gives up instead of blocking shutdown.
    stopping: Callable[[], bool] = staticmethod(lambda: False)
    # What open() is doing, for the status line while it runs ("building the openvino
    # bf16 engine"): seconds to minutes in which no frame flows.
    activity: str | None = None

    def open(self) -> None:
        """Acquire resources (models, files, sockets). Called on the stage's own thread."""

    def process(self, frame: Frame) -> Frame | None:
        raise NotImplementedError

    def close(self) -> None:
        """Release resources; called once, also after an error."""


def _no_buffer() -> None:
    return None


def segment_engine_spec(cfg: SegmentConfig) -> EngineSpec:
    """The engine the config's segment section asks for (the stage and benchmarks open it)."""
    auto = cfg.auto_backends.get(cfg.device)
    return EngineSpec(cfg.weights, cfg.backend, cfg.precision, cfg.size, cfg.device,
                      cfg.threads, cfg.engine_cache, tuple(auto) if auto else None)


def _checkpoint_for(cfg: SegmentConfig) -> ckpt.Checkpoint | TPSISCheckpoint:
    """The checkpoint segment.model asks for, or a ConfigError naming segment.weights and
    segment.model when the file holds the other model. A U-Net: metadata only, from the
    engine cache's index when it has this file (a cached engine then needs no tensors and
    no torch import, seconds at start-up); TP-SIS: in full (it encodes prompts in torch)."""
    from orstream.pipeline.config import ConfigError

    other = {"unet": ("TP-SIS", tckpt.FORMAT), "tpsis": ("U-Net", ckpt.FORMAT)}[cfg.model]
    try:
        if cfg.model == "tpsis":
            return tckpt.load(cfg.weights)
        return ckpt.load_info(cfg.weights, EngineCache(cfg.engine_cache).checkpoint_index)
    except ckpt.CheckpointError as exc:
        if f"{other[1]!r}" not in str(exc):
            raise
        fix = ("set segment.model: tpsis, or segment.weights to a U-Net checkpoint"
               if cfg.model == "unet" else
               "set segment.model: unet, or segment.weights to a TP-SIS checkpoint (null: "
               "the shipped tpsis_xs.pt)")
        raise ConfigError(f"segment.weights: {cfg.weights} is a {other[0]} checkpoint but "
                          f"segment.model is {cfg.model}: {fix}") from None


class SegmentStage(Stage):
    """Crop the field of view, resize, normalise, infer, argmax: uint8 labels over a region.

    The label map stays at the model's resolution with the region it covers; the renderer
    (and any display compositing itself) scales it back with nearest-neighbour, which is the
    same as resizing it here but 20x less data to move.

    segment.model tpsis: the engine also takes the prompt state, held in a PromptSlot
    (pipeline/prompting.py) that `change_prompts` swaps from the ask socket's thread; each
    frame carries the class table of the prompts it was segmented with. No per-instrument
    vote: prompts may overlap in meaning ("scissors", "the cutting tool"), and a pixel is
    the most probable prompt's at or above the threshold, or background.
    """

    name = "segment"

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg.segment
        self.engine: Engine | None = None
        # Read (and checked) here, once: the runner needs the task to set up render and
        # publish before any thread starts; open() only builds the engine from it.
        self.checkpoint = _checkpoint_for(self.cfg)
        self.prompted = self.cfg.model == "tpsis"
        self.task = PROMPTS_TASK if self.prompted else self.checkpoint.task
        self._num_classes = len(self.checkpoint.classes)
        self._vote = self.task == "types" and self.cfg.postprocess == "vote"
        self._regions: dict[tuple[int, int], Region] = {}
        self._gpu_prep = None  # CudaFramePrep on device cuda
        self.prompt_slot: PromptSlot | None = None  # tpsis, once open

    def open(self) -> None:
        if self.cfg.backend == TRITON:
            self._open_triton()
            return
        checkpoint = self.checkpoint
        chosen = resolve(segment_engine_spec(self.cfg))
        self.activity = self._engine_activity(chosen)
        slot = None
        if self.prompted:
            from orstream.engines.tpsis_engine import PromptEncoder

            assert self.cfg.prompts is not None, "the config gives tpsis its prompts"
            encoder = PromptEncoder(checkpoint, self.cfg.read_prompts, self.cfg.vocabulary)
            slot = PromptSlot(encoder, self.cfg.prompts)
        self.engine = open_engine(chosen)
        if slot is not None:
            slot.prepare = self.engine.prepare
            self.engine.prepare(slot.upcoming.arrays)
        h, w = self.engine.input_size
        if self.cfg.device == "cuda":
            from orstream.engines.preprocess import CudaFramePrep

            # Crop, resize and the model on the GPU, on this stage's own CUDA stream.
            self._gpu_prep = CudaFramePrep((h, w))
        warm = None if slot is None else slot.upcoming.arrays
        for _ in range(2):  # first calls allocate and pick kernels: not a live frame's cost
            self.engine(np.zeros((h, w, 3), np.uint8), warm)
        self.prompt_slot = slot  # prompt changes are taken from here on
        logger.info("segment: {} ({}) on {}", self.cfg.weights.name, self.task,
                    self.engine.describe())

    def _open_triton(self) -> None:
        """segment.backend triton: a Triton server holds the model; checked at start (live,
        model ready, orstream's tensors, the same weights as segment.weights)."""
        from orstream.engines.backends.triton_backend import SHM_PREFIX, TritonEngine
        from orstream.pipeline.leftovers import sweep_dead

        # Regions a SIGKILLed pipeline left (its pid in the name): removed, as for shm://
        sweep_dead(Path("/dev/shm"), f"{SHM_PREFIX}*",
                   re.compile(re.escape(SHM_PREFIX) + r"(\d+)-.*"), Path.unlink)
        self.activity = f"connecting to Triton at {self.cfg.triton.url}"
        engine = TritonEngine(self.cfg.triton.target(), self.cfg.size,
                              file_sha256(self.cfg.weights),
                              f"segment.weights ({self.cfg.weights.name})")
        self.engine = engine  # type: ignore[assignment]
        logger.info("segment: {} ({}) on {}", self.cfg.weights.name, self.task,
                    engine.describe())

    def status(self) -> str | None:
        """A note for the status line (the Triton server down), or None."""
        status = getattr(self.engine, "status", None)
        return status() if status is not None else None

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()

    def change_prompts(self, prompts: object) -> dict:
        """An ask-socket prompt request (pipeline/prompting.py): runs on that thread."""
        if not self.prompted:
            return {"error": UNET_REFUSAL}
        slot = self.prompt_slot
        if slot is None:
            return {"error": "segment is still starting (its engine is being opened): send "
                             "the prompts again in a few seconds"}
        return slot.change(prompts)

    @staticmethod
    def _engine_activity(chosen: Resolved) -> str:
        """Whether open() builds the engine (seconds to minutes) or loads it from the cache."""
        doing = "building" if needs_build(chosen) else "loading"
        return f"{doing} the {chosen.backend} {chosen.precision} engine"

    def _segment_on_gpu(self, image: np.ndarray, region: Region,
                        inputs: dict[str, np.ndarray] | None) -> np.ndarray:
        import torch

        with torch.cuda.stream(self._gpu_prep.stream):
            frames = self._gpu_prep(image, region)
            labels = (self.engine.run_tensor(frames) if inputs is None
                      else self.engine.run_tensor(frames, inputs))
            return labels[0].cpu().numpy()  # waits for this stream's work only

    def region(self, height: int, width: int) -> Region:
        key = (height, width)
        if key not in self._regions:
            self._regions[key] = crop_region(self.cfg.crop, height, width)
        return self._regions[key]

    def process(self, frame: Frame) -> Frame:
        assert self.engine is not None, "segment stage used before open()"
        y, x, h, w = self.region(*frame.image.shape[:2])
        inputs = None
        if self.prompt_slot is not None:
            prompts = self.prompt_slot.take(frame.seq)  # one list for the whole frame
            inputs = prompts.inputs.arrays
            frame.classes = prompts.classes
        if self._gpu_prep is not None:
            labels = self._segment_on_gpu(frame.image, (y, x, h, w), inputs)
        else:
            mh, mw = self.engine.input_size
            crop = frame.image[y:y + h, x:x + w]
            # uint8 resize only: normalisation runs inside the engine (engines/deploy.py),
            # measured cheaper than cv2.dnn.blobFromImage (benchmarks/engines.py). Triton on
            # this host: resized straight into the shared region the server reads.
            buffer = getattr(self.engine, "frame_buffer", _no_buffer)()
            small = cv2.resize(crop, (mw, mh), dst=buffer, interpolation=cv2.INTER_LINEAR)
            try:
                labels = self.engine(small, inputs)
            except TritonOffline:
                # The model server is down: the surgeon keeps the video, unlabelled, while
                # the engine reconnects (counted in its `unlabelled`, on the status line).
                return frame
        if self._vote:
            labels = instance_vote(labels, self._num_classes)
        frame.labels = labels
        frame.region = (y, x, h, w)
        return frame


class LatencyWindow:
    """End-to-end latency and rate over the last second, for the status line.

    Written by the render thread, read by it and by the runner's status log: hence the lock.
    """

    def __init__(self, seconds: float = 1.0) -> None:
        self.seconds = seconds
        self._items: deque[tuple[int, float]] = deque()
        self._lock = threading.Lock()

    def add(self, t_ns: int, latency_ms: float) -> None:
        horizon = t_ns - int(self.seconds * 1e9)
        with self._lock:
            self._items.append((t_ns, latency_ms))
            while self._items and self._items[0][0] < horizon:
                self._items.popleft()

    def summary(self) -> tuple[float, float, float]:
        """(fps, p50 ms, p99 ms) over the window."""
        with self._lock:
            if not self._items:
                return 0.0, 0.0, 0.0
            lat = np.fromiter((v for _, v in self._items), float)
        return len(lat) / self.seconds, float(np.percentile(lat, 50)), float(
            np.percentile(lat, 99))


class RenderStage(Stage):
    """Overlay, outlines, legend, caption and status line at display resolution.

    `task` None: segmentation is off and frames come unlabelled; they get the caption and
    status line only. `task` "prompts" (TP-SIS): each frame carries its class table (the
    prompts it was segmented with), and the legend follows it.
    """

    name = "render"

    def __init__(self, cfg: PipelineConfig, task: str | None,
                 dropped: Callable[[], int], describe: DescribeWorker | None = None) -> None:
        from orstream.common.classes import CLASSES

        self.describe = describe
        self.cfg = cfg.render
        # Without a task the class table is background alone, which is never drawn.
        self._classes: dict | None = None  # the frame-borne table drawn with (prompts)
        if task == PROMPTS_TASK:
            self._classes = prompt_table(cfg.segment.prompts or ())
            names, colors = self._classes["names"], self._classes["colors"]
        else:
            names, colors = ((CLASSES[task], palette(task)) if task  # type: ignore[index]
                             else (("background",), ((0, 0, 0),)))
        self.renderer = OverlayRenderer(names, colors,  # type: ignore[arg-type]
                                        OverlayStyle(alpha=self.cfg.alpha,
                                                     outline=self.cfg.outlines,
                                                     legend=self.cfg.legend),
                                        num_threads=self.cfg.threads)
        self.window = LatencyWindow()
        self._dropped = dropped
        # Unlabelled frames get their status line drawn on the picture itself unless a
        # publisher sends the plain picture too: a 1080p copy per frame (a fresh 6 MB
        # allocation, page faults and all) cost more than the rest of the stage.
        self._annotate_in_place = not (cfg.publish.endpoint and "image" in cfg.publish.parts)
        self._status = ""
        self._status_due_ns = 0

    def open(self) -> None:
        self.renderer.warmup()  # numba compiles here, not on the first live frame

    def process(self, frame: Frame) -> Frame:
        now = time.monotonic_ns()
        self.window.add(now, (now - frame.t_capture_ns) / 1e6)
        status = None
        if self.cfg.status:
            if now >= self._status_due_ns:
                # Refreshed 10 times a second, which is faster than anyone reads it: the
                # percentiles cost ~85 µs, half the stage's time on an unlabelled frame.
                fps, p50, p99 = self.window.summary()
                self._status = (f"{fps:.1f} fps | e2e p50 {p50:.0f} ms p99 {p99:.0f} ms | "
                                f"dropped {self._dropped()}")
                self._status_due_ns = now + STATUS_REFRESH_NS
            status = self._status
        if self.describe is not None:
            self.describe.offer(frame)  # a reference: the VLM looks when a caption is due
            if frame.caption is None:
                frame.caption = self.describe.latest()
        caption = age = None
        if frame.caption is not None:
            caption = frame.caption.text
            age = (frame.t_capture_ns - frame.caption.t_capture_ns) / 1e9
        table = frame.classes
        if table is not None and table is not self._classes and table != self._classes:
            # New prompts: a few names, compared only when the table object changes.
            self.renderer.set_classes(table["names"], table["colors"])
            self._classes = table
        if frame.labels is None:
            frame.overlay = frame.image
            if status or caption:
                frame.overlay = self.renderer.annotate(
                    frame.image, caption, age, status,
                    out=frame.image if self._annotate_in_place and frame.image.flags.writeable
                    else None)  # read-only: a frame read in place from a sender (shm://)
        else:
            frame.overlay = self.renderer.draw(frame.image, frame.labels, frame.region,
                                               caption=caption, caption_age_s=age,
                                               status=status)
        return frame


def class_table(task: str | None) -> dict | None:
    """The header's class table; None without segmentation (no labels to name) and for
    TP-SIS, whose frames carry their own (Frame.classes)."""
    from orstream.common.classes import CLASSES

    if task is None or task == PROMPTS_TASK:
        return None
    return {"task": task, "names": list(CLASSES[task]),  # type: ignore[index]
            "colors": [list(c) for c in palette(task)]}  # type: ignore[arg-type]


class PublishStage(Stage):
    """Publishes frames to displays on the configured endpoint (PROTOCOL.md)."""

    name = "publish"
    key = "publish.endpoint"

    def __init__(self, cfg: PipelineConfig, task: str | None, curve: Curve | None = None,
                 on_bound: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg.publish
        self.classes = class_table(task)
        self.curve = curve
        self.sender: Sender | None = None
        self.on_bound = on_bound  # told the endpoint once displays can connect

    def open(self) -> None:
        endpoint = self.cfg.endpoint
        assert endpoint is not None
        self.sender = bind_as(self.key, endpoint, lambda: Sender(
            endpoint, self.cfg.mode, hwm=4, parts=self.cfg.parts, classes=self.classes,
            curve=self.curve))
        self._bound()

    def _bound(self) -> None:
        assert self.sender is not None
        logger.info("publishing {} on {} ({})", self.what(), self.sender.endpoint,
                    self.cfg.mode)
        if self.on_bound is not None:
            self.on_bound(self.sender.endpoint)

    def what(self) -> str:
        return "+".join(self.cfg.parts)

    def send(self, frame: Frame) -> bool:
        assert self.sender is not None
        return self.sender.send(frame)

    def process(self, frame: Frame) -> None:
        while not self.send(frame):  # lossless: wait for room; latest never waits
            if self.stopping():
                logger.warning("{}: no display took frame {} before shutdown", self.name,
                               frame.seq)
                return

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close()


class MaskPublishStage(PublishStage):
    """Publishes the mask-only stream (PROTOCOL.md): labels, outlines, classes, caption."""

    name = "masks"
    key = "masks.endpoint"

    def __init__(self, cfg: PipelineConfig, task: str | None, curve: Curve | None = None,
                 on_bound: Callable[[str], None] | None = None) -> None:
        super().__init__(cfg, task, curve, on_bound)
        self.cfg = cfg.masks  # type: ignore[assignment]  # endpoint and mode, no parts

    def open(self) -> None:
        endpoint = self.cfg.endpoint
        assert endpoint is not None
        self.sender = bind_as(self.key, endpoint, lambda: Sender(
            endpoint, self.cfg.mode, hwm=4, curve=self.curve))
        self._bound()

    def what(self) -> str:
        return "masks"

    def send(self, frame: Frame) -> bool:
        assert self.sender is not None
        return self.sender.send_raw(masks.encode(frame, self.classes))


class RecordStage(Stage):
    """Records the overlay to H.264 (fragmented MP4 or MPEG-TS), a new file every
    record.rotate_s seconds.

    A recording that fails while the pipeline runs (a full disk, a frame of another size)
    stops with one error line and takes nothing else down: the displays are what the surgeon
    is looking at. The stage then goes on taking frames and dropping them, since its input is
    lossless and a stage that stopped reading would stall render."""

    name = "record"

    def __init__(self, cfg: PipelineConfig, fps: float) -> None:
        assert cfg.record.path is not None
        self.recorder = RotatingRecorder(cfg.record.path, fps=fps, crf=cfg.record.crf,
                                         rotate_s=cfg.record.rotate_s)
        self.failed: RecorderError | None = None
        self.unrecorded = 0  # frames that arrived after the failure
        self._t0_ns: int | None = None
        self._t0_media: float | None = None

    def process(self, frame: Frame) -> None:
        if self.failed is not None:
            self.unrecorded += 1
            return
        # Frames carry their time: a replayed recording keeps its own timestamps (even when
        # processed faster or slower than real time), and a live feed that dropped frames
        # still plays at the speed the procedure happened.
        if frame.media_s is not None:
            if self._t0_media is None:
                self._t0_media = frame.media_s
            time_s = frame.media_s - self._t0_media
        else:
            if self._t0_ns is None:
                self._t0_ns = frame.t_capture_ns
            time_s = (frame.t_capture_ns - self._t0_ns) / 1e9
        try:
            self.recorder.write(frame.overlay if frame.overlay is not None else frame.image,
                                time_s=time_s)
        except RecorderError as exc:
            self.failed = exc
            self.unrecorded += 1
            # Not a count: after a failed write the last frame's fragment may be cut short.
            kept = ("what was recorded before it stays playable"
                    if self.recorder.frames_written else "nothing was recorded")
            logger.error("recording stopped (at seq {}): {}; {}, and the displays go on "
                         "without recording", frame.seq, exc, kept)
            try:
                self.recorder.close()  # a refused frame leaves the file open: finalise it
            except RecorderError as also:  # the error above already said the recording ended
                logger.debug("record: finalising after the failure: {}", also)

    def close(self) -> None:
        if self.failed is not None:
            logger.info("record: {} frames not recorded after the failure", self.unrecorded)
        self.recorder.close()


class NullStage(Stage):
    """Consumes frames: the pipeline's end when nothing else is configured (benchmarks)."""

    name = "null"

    def process(self, frame: Frame) -> None:
        return None
