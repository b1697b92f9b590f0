"""Crash-safe H.264 recorder for the pipeline's overlay frames.

A surgical recording must survive the process dying at any moment, SIGKILL and OOM-kill
included, where no ``finally`` block and no ``close()`` runs. A plain MP4 is unplayable
until its trailer (the ``moov`` index) is written at close, so this recorder writes:

* **Fragmented MP4** (``.mp4`` / ``.m4v``): ``empty_moov`` puts a complete header at the
  start of the file, ``frag_every_frame`` makes every frame its own ``moof``+``mdat``
  fragment, and ``default_base_moof`` makes each fragment's offsets relative to itself.
  Every completed fragment plays from a killed file (the frames after a keyframe decode
  from the keyframe's earlier fragment). A fragment's header costs about 115 bytes a frame
  (3.5 KB/s at 30 fps).
* **MPEG-TS** (``.ts``): a stream format with no index at all; any prefix of it plays.

The muxer writes a frame's fragment when the next frame's packet arrives (it needs the
frame's duration) and ``flush_packets=1`` pushes it from FFmpeg's I/O buffer to the kernel at once,
so a SIGKILL loses the last frame, one thirtieth of a second. Fragments cut at keyframes
instead (``frag_keyframe``) lost up to the last half second, a quarter on average: an
eighth of what a recording killed 5 s after ``orstream run`` starts should hold (4 s).
The data then sits in the page cache, which survives the process; surviving a power cut
would need an fsync, which this class does not do (it would stall the caller's thread on
the disk).

Until the first frame's fragment is on disk (the second packet the muxer takes pushes it
out) the file is ``NAME.part``; then it is renamed to NAME. Packets are counted rather than
frames: an encoder that holds frames back (lookahead, or a hardware encoder's pipeline) would
otherwise give NAME to a file holding no frame, or no header. A file under the recording's own name
therefore always holds at least one decodable frame: a kill in the first 1/15 s of a file
(at start-up, or just after a rotation) leaves a ``.part`` with a header and at most one
frame, never a NAME that players and ``orstream replay`` refuse. The next recording to NAME
overwrites that ``.part``.

A write that fails (a full disk, an I/O error) ends the recording: the file keeps every
fragment written before the failure and plays as a killed one does; later writes are
refused. :class:`RotatingRecorder` starts a new file every ``rotate_s`` seconds of video.

Frames are (H, W, 3) uint8 RGB. yuv420p subsamples chroma 2x2, so it needs an even width and
height: a frame with an odd size loses its last row and/or column (the video is the size of
the first frame cropped to even). Encoding runs on the caller's thread; the class is not
thread-safe.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import cv2
import numpy as np
from loguru import logger

from orstream.common.errors import OrstreamError

_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
            "slower", "veryslow", "placebo")
_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".ts": "mpegts"}
# A fragment per frame; write the header up front; self-relative offsets.
_MOVFLAGS = "frag_every_frame+empty_moov+default_base_moof"


def _x264_options(preset: str, crf: int, gop: int) -> dict[str, str]:
    return {
        "preset": preset,
        # No lookahead and no B-frames: a packet leaves the encoder with its frame, so its
        # fragment is complete (and written) as soon as the next frame arrives.
        "tune": "zerolatency",
        "crf": str(crf),
        # A fixed half-second GOP: scenecut would add keyframes (bigger, and uneven) at every
        # cut; min-keyint=keyint keeps them even. colormatrix tells players the BT.601 matrix
        # used in write() (HD players assume BT.709 otherwise).
        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:colormatrix=smpte170m",
    }


class RecorderError(OrstreamError, RuntimeError):
    """The recorder cannot open, write or finalise its file, or was given a bad frame."""


def _reason(exc: BaseException) -> str:
    """What failed, without FFmpeg's copy of the file name (the ``.part`` one, or the name the
    file had when FFmpeg opened it): the messages name the recording themselves."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} (errno {exc.errno})" if exc.errno else exc.strerror
    return str(exc)


class Recorder:
    """Record RGB frames to a crash-safe H.264 file (fragmented MP4, or MPEG-TS for ``.ts``).

    Nothing is created on disk until the first frame, whose size fixes the video size.
    ``fps`` may be fractional (29.97); timestamps come from a frame counter, not the clock,
    so the file plays at ``fps`` whatever the pace at which frames arrive.

    Every error is a :class:`RecorderError`: bad arguments, a path that cannot be written,
    a frame of the wrong shape, dtype or size, or a failure in FFmpeg. A frame that is
    refused leaves the recording going; a write that fails (disk full) ends it.
    """

    def __init__(self, path: str | Path, fps: float, crf: int = 23,
                 preset: str = "ultrafast") -> None:
        self.path = Path(path)
        # Written here until the first frame is on disk (see the module docstring).
        self.partial_path = self.path.with_name(self.path.name + ".part")
        self.frames_written = 0
        self._packets_muxed = 0  # the first fragment is on disk once the muxer has taken 2
        self._next_pts = 0
        suffix = self.path.suffix.lower()
        if suffix not in _FORMATS:
            raise RecorderError(f"cannot record to {self.path}: the name must end in "
                                f"{', '.join(_FORMATS)}")
        if not (isinstance(fps, int | float | Fraction) and math.isfinite(fps) and fps > 0):
            raise RecorderError(f"fps must be a positive finite number, got {fps!r}")
        if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 51:
            raise RecorderError(f"crf must be an integer in 0..51, got {crf!r}")
        if preset not in _PRESETS:
            raise RecorderError(f"preset must be one of {', '.join(_PRESETS)}, got {preset!r}")
        self._format = _FORMATS[suffix]
        # 29.97 as a float is not 2997/100 exactly; a bounded denominator keeps the time base
        # one that players and muxers handle (30000/1001 stays 30000/1001).
        self._rate = Fraction(fps).limit_denominator(1001)
        self._time_base = 1 / self._rate
        # A keyframe every half second of media time: a player seeks to within 0.5 s, and a
        # damaged frame spoils the picture until the next keyframe at most. Live pipelines
        # drop frames, so a keyframe interval in frames alone would stretch that (30 frames
        # at 14 fps is 2 s); write() also forces a keyframe whenever a frame's time crosses
        # a half-second boundary.
        self._gop = max(1, round(fps / 2))
        self._key_every_s = 0.5
        self._next_key_s = 0.0
        self._crf = crf
        self._preset = preset
        self._first_size: tuple[int, int] | None = None  # (W, H) as given, before cropping
        self._container: av.container.OutputContainer | None = None
        self._stream: av.VideoStream | None = None
        self._closed = False
        self._renamed = False
        self._check_path_early()

    # -- public API ---------------------------------------------------------------------------

    def write(self, image: np.ndarray, time_s: float | None = None) -> None:
        """Encode one (H, W, 3) uint8 RGB frame; the first one opens the file.

        time_s: the frame's time since the recording began. A live pipeline drops frames
        when it falls behind; stamping frames with their capture time (rather than a frame
        counter) keeps the recording playing in real time. Without it, frames are 1/fps apart.
        """
        if self._closed:
            raise RecorderError(f"recorder for {self.path} is closed")
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 \
                or image.dtype != np.uint8:
            shape = getattr(image, "shape", None)
            dtype = getattr(image, "dtype", type(image).__name__)
            raise RecorderError(f"expected an (H, W, 3) uint8 RGB frame, got shape {shape} "
                                f"dtype {dtype}")
        h, w = image.shape[:2]
        if self._first_size is None:
            self._open(w, h)
        elif (w, h) != self._first_size:
            fw, fh = self._first_size
            raise RecorderError(f"frame {self.frames_written} of {self.path} is {w}x{h}, but "
                                f"the first frame was {fw}x{fh}: all frames must share a size")
        assert self._container is not None and self._stream is not None
        ew, eh = self._stream.width, self._stream.height
        # OpenCV's RGB->I420 uses the same BT.601 limited-range matrix as swscale's default
        # but is ~4x faster at 1080p (3 ms against 12 ms): this runs once per frame.
        yuv = cv2.cvtColor(np.ascontiguousarray(image[:eh, :ew]), cv2.COLOR_RGB2YUV_I420)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        pts = self.frames_written if time_s is None else round(time_s / self._time_base)
        frame.pts = self._next_pts = max(pts, self._next_pts)
        self._next_pts += 1  # strictly increasing, even for two frames in one tick
        frame.time_base = self._time_base
        media_s = float(frame.pts * self._time_base)
        if media_s >= self._next_key_s:
            frame.pict_type = av.video.frame.PictureType.I
            self._next_key_s = (media_s // self._key_every_s + 1) * self._key_every_s
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
                self._packets_muxed += 1
        except (av.FFmpegError, OSError) as exc:  # e.g. disk full
            self._abandon()
            raise RecorderError(f"cannot write frame {self.frames_written} to {self.path}: "
                                f"{_reason(exc)}") from exc
        self.frames_written += 1
        if self._packets_muxed >= 2:
            self._rename()  # the second packet pushed the first frame's fragment to the kernel

    def close(self) -> None:
        """Flush the encoder and finalise the file. Idempotent; later writes are refused."""
        if self._closed:
            return
        self._closed = True
        container, stream = self._container, self._stream
        self._container = self._stream = None
        if container is None or stream is None:
            logger.warning("recorder {}: closed without a frame, no file written", self.path)
            return
        try:
            try:
                for packet in stream.encode(None):  # drain frames still inside the encoder
                    container.mux(packet)
            finally:
                container.close()  # writes the last fragment even if the drain failed
        except (av.FFmpegError, OSError) as exc:
            raise RecorderError(f"cannot finalise {self.path}: {_reason(exc)}") from exc
        self._rename()  # a one-frame recording is complete only now
        logger.info("recorder {}: closed after {} frames ({:.1f} s)", self.path,
                    self.frames_written, float(self.frames_written / self._rate))

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Close on errors too: whatever was recorded before the error is kept.
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _rename(self) -> None:
        if self._renamed:
            return
        try:
            # FFmpeg keeps writing through its open descriptor: the rename moves the name only.
            os.replace(self.partial_path, self.path)
        except OSError as exc:
            self._abandon()
            raise RecorderError(f"cannot rename {self.partial_path} to {self.path}: "
                                f"{_reason(exc)}") from exc
        self._renamed = True

    def _abandon(self) -> None:
        """After a failed write: no trailer (writing it would fail the same way); FFmpeg
        lets go of the file, and every fragment written before the failure stays playable."""
        self._closed = True
        container, self._container, self._stream = self._container, None, None
        if container is None:
            return
        try:
            container.close()
        except (av.FFmpegError, OSError) as exc:
            logger.debug("recorder {}: releasing the file after the failure: {}", self.path,
                         exc)

    def _check_path_early(self) -> None:
        """Refuse a path that cannot work, without creating anything (that waits for a frame).

        A recording that cannot be written should fail when the recorder is built, not when the
        procedure starts; failures this cannot foresee still raise at the first frame.
        """
        if self.path.is_dir():
            raise RecorderError(f"cannot record to {self.path}: it is a directory")
        if self.partial_path.is_dir():
            raise RecorderError(f"cannot record to {self.path}: {self.partial_path} is a "
                                "directory")
        ancestor = self.path.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if ancestor.exists() and not ancestor.is_dir():
            raise RecorderError(f"cannot record to {self.path}: {ancestor} is not a directory")
        if ancestor.is_dir() and not os.access(ancestor, os.W_OK | os.X_OK):
            raise RecorderError(f"cannot record to {self.path}: {ancestor} is not writable")

    def _open(self, width: int, height: int) -> None:
        ew, eh = width - width % 2, height - height % 2
        if ew < 2 or eh < 2:
            raise RecorderError(f"frame {width}x{height} is too small to record to {self.path}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RecorderError(f"cannot create the directory of {self.path}: {exc}") from exc
        # flush_packets=1: hand every fragment to the kernel as soon as the muxer writes it.
        # Without it this FFmpeg left the fragments in its I/O buffer (the file stayed at 28
        # bytes through 3 s of 320x256 video), and a SIGKILL lost the whole recording.
        options = {"flush_packets": "1"}
        if self._format == "mp4":
            options["movflags"] = _MOVFLAGS
        try:
            container = av.open(str(self.partial_path), "w", format=self._format,
                                container_options=options)
        except (av.FFmpegError, OSError) as exc:
            raise RecorderError(f"cannot open {self.path} for writing: {_reason(exc)}") \
                from exc
        try:
            stream = container.add_stream("libx264", rate=self._rate,
                                          time_base=self._time_base)
            stream.width, stream.height, stream.pix_fmt = ew, eh, "yuv420p"
            stream.options = _x264_options(self._preset, self._crf, self._gop)
        except (av.FFmpegError, OSError, ValueError) as exc:
            container.close()
            raise RecorderError(f"cannot set up H.264 for {self.path}: {exc}") from exc
        self._container, self._stream = container, stream
        self._first_size = (width, height)
        cropped = "" if (ew, eh) == (width, height) else f" (cropped from {width}x{height})"
        logger.info("recorder {}: {}x{}{} at {} fps, libx264 {} crf {}, {}", self.path, ew, eh,
                    cropped, float(self._rate), self._preset, self._crf,
                    "fragmented MP4" if self._format == "mp4" else "MPEG-TS")


class RotatingRecorder:
    """A recording cut into files of ``rotate_s`` seconds of video each; 0: one file.

    ``procedure.mp4`` is written as procedure-0001.mp4, procedure-0002.mp4, ...: each file is a
    recording of its own (its own header, a keyframe first, times from 0), so it plays, copies
    and is archived without the others while the next one is written, and a damaged file
    costs only its own minutes. File k holds the frames timed in [(k-1) rotate_s, k rotate_s)
    from the recording's start; the numbers run on without a gap even when a stall leaves a
    span of time without frames. With rotate_s 0 the one file is ``path`` itself.

    The same interface as :class:`Recorder`; ``paths`` lists the files begun, in order.
    """

    def __init__(self, path: str | Path, fps: float, crf: int = 23,
                 preset: str = "ultrafast", rotate_s: float = 0.0) -> None:
        if isinstance(rotate_s, bool) or not isinstance(rotate_s, int | float) \
                or not math.isfinite(rotate_s) or rotate_s < 0:
            raise RecorderError(f"rotate_s must be 0 (one file) or a positive number of "
                                f"seconds, got {rotate_s!r}")
        self.path = Path(path)
        self.rotate_s = float(rotate_s)
        self.paths: list[Path] = []
        self._fps = fps
        self._options = (crf, preset)
        self._frames_before = 0  # frames in the files already closed
        self._file_start_s: float | None = None  # the current file's first frame, None: none yet
        self._file_end_s = math.inf
        # Built now: bad arguments and an unwritable folder fail before the first frame.
        self._current = Recorder(self._name(1), fps, *self._options)

    @property
    def frames_written(self) -> int:
        return self._frames_before + self._current.frames_written

    def write(self, image: np.ndarray, time_s: float | None = None) -> None:
        """As :meth:`Recorder.write`; the frame whose time reaches the current file's end
        closes it and opens the next."""
        if time_s is None:
            time_s = self.frames_written / self._fps
        if time_s >= self._file_end_s:
            self._rotate()
        if self._file_start_s is None:
            self._file_start_s = time_s
            if self.rotate_s:
                self._file_end_s = (time_s // self.rotate_s + 1) * self.rotate_s
        self._current.write(image, time_s - self._file_start_s)
        if self._current.frames_written == 1:
            self.paths.append(self._current.path)

    def close(self) -> None:
        """Finalise the current file. Idempotent; later writes are refused."""
        self._current.close()

    def __enter__(self) -> RotatingRecorder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _name(self, number: int) -> Path:
        if not self.rotate_s:
            return self.path
        return self.path.with_name(f"{self.path.stem}-{number:04d}{self.path.suffix}")

    def _rotate(self) -> None:
        done = self._current
        done.close()  # complete before its successor starts: a kill now finds it whole
        self._frames_before += done.frames_written
        self._current = Recorder(self._name(len(self.paths) + 1), self._fps, *self._options)
        self._file_start_s, self._file_end_s = None, math.inf
