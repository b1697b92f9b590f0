"""Network streams through PyAV: RTSP, RTMP, SRT, UDP/RTP (MPEG-TS), TCP, HTTP(S).

A network encoder's stream is live: frames come on the encoder's clock, the capture edge
keeps only the newest, and a stream that stops (encoder rebooted, cable pulled, Wi-Fi gone)
is reconnected with backoff while the pipeline runs on and shows the source down
(`ReconnectingSource`). Nothing blocks without a bound: PyAV's `timeout=(open, read)`
interrupts FFmpeg's open/probe and each packet read whatever the protocol, and each
protocol's own socket timeout is set too, so the socket gives up on its own rather than
only when the interrupt callback next runs.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np
from loguru import logger

from orstream.pipeline.config import SourceConfig
from orstream.pipeline.sources.base import SourceError, SourceInfo
from orstream.pipeline.sources.files import DECODER_DEFAULTS, Decoder, DecodeStats
from orstream.pipeline.sources.reconnecting import ReconnectingSource

# Each protocol's own socket timeout, in FFmpeg's units (microseconds), as this FFmpeg's
# option tables name it (FFmpeg 8): every protocol here calls it `timeout`. The RTSP
# demuxer's is its socket I/O timeout (FFmpeg < 5 called that `stimeout`, and `timeout` then
# meant "listen": not supported here); udp's is how long no datagram may arrive; tcp's
# covers connect and I/O, and http(s) and rtmp pass it down to the tcp socket they open.
# `rw_timeout` is every protocol's generic read/write bound. FFmpeg ignores options a
# protocol does not have, so the same set serves all schemes.
_TIMEOUT_OPTIONS = ("timeout", "rw_timeout")

# Protocol defaults chosen for an operating room's network.
_PROTOCOL_OPTIONS: dict[str, dict[str, str]] = {
    # RTP over the RTSP TCP connection: no lost or reordered packets (each would smear a
    # frame), no UDP ports to open in a hospital firewall; `rtsp_transport: udp` in
    # source.ffmpeg_options trades that for a little less latency.
    "rtsp": {"rtsp_transport": "tcp"},
    "rtsps": {"rtsp_transport": "tcp"},
    # A burst the decoder cannot take at once must drop datagrams, not end the stream.
    "udp": {"overrun_nonfatal": "1"},
}

# Input buffering off and the stream probed briefly: FFmpeg would otherwise hold packets
# and analyse up to 5 s of stream before the first frame (analyzeduration 0 means that
# default, so a small positive bound is given). The probe only has to name the codec (the
# MPEG-TS program table, the RTSP session description do); the frame size is taken from
# the first decoded frame, so a short probe costs nothing here.
_LOW_LATENCY = {"fflags": "nobuffer", "analyzeduration": "500000", "probesize": "500000"}


def ffmpeg_version() -> str:
    """FFmpeg's version as PyAV reports it, e.g. '8.1.2' (a string: joining its characters
    printed 8...1...2)."""
    info = av.ffmpeg_version_info
    return info if isinstance(info, str) else ".".join(map(str, info))


def scheme_of(url: str) -> str:
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", url)
    return match.group(1).lower() if match else ""


def redact(url: str) -> str:
    """The URL with any password replaced: RTSP URLs often carry credentials, and the
    name goes into logs and error messages."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def ffmpeg_options(cfg: SourceConfig) -> dict[str, str]:
    """Container options for `cfg.spec`: timeouts, protocol defaults, low-latency flags,
    then the user's `source.ffmpeg_options` over all of them."""
    scheme = scheme_of(cfg.spec)
    read_us = str(int(cfg.read_timeout_s * 1e6))
    options = dict.fromkeys(_TIMEOUT_OPTIONS, read_us)
    options.update(_PROTOCOL_OPTIONS.get(scheme, {}))
    if cfg.low_latency:
        options.update(_LOW_LATENCY)
    options.update(cfg.ffmpeg_options)
    return options


@dataclass
class _Link:
    container: av.container.InputContainer
    stream: av.VideoStream
    decoder: Decoder


class NetworkSource(ReconnectingSource):
    """A live network stream, decoded on the capture thread and reconnected when it drops."""

    unreachable_hint = ("check that the encoder is streaming, the URL (host, port, path) "
                        "and the network between them")

    def __init__(self, cfg: SourceConfig) -> None:
        super().__init__(redact(cfg.spec), cfg)
        self.url = cfg.spec
        for key, given in (("mode", cfg.mode == "lossless"), ("loop", cfg.loop),
                           ("start", cfg.start > 0), ("end", cfg.end is not None)):
            if given:
                raise SourceError(
                    f"source {self.name}: source.{key} applies to recordings; a network "
                    "stream is live (newest frame only). Save the stream to a file and "
                    "replay that, or drop the option")
        self.options = ffmpeg_options(cfg)
        self.open_timeout_s = cfg.open_timeout_s
        self.read_timeout_s = cfg.read_timeout_s
        self.low_latency = cfg.low_latency
        default_type, default_threads = DECODER_DEFAULTS["live"]
        self.thread_type = (cfg.thread_type or default_type).upper()
        self.threads = default_threads if cfg.decoder_threads is None else cfg.decoder_threads
        self.stats = DecodeStats()
        link = self._first_connect()
        if link is not None:
            assert isinstance(link, _Link)
            cc = link.stream.codec_context
            fps = float(link.stream.average_rate or link.stream.guessed_rate or cfg.fps)
            width, height = cc.width or cfg.width, cc.height or cfg.height
            logger.info("source {}: {} {}x{} ~{:.3g} fps, live", self.name, cc.name, width,
                        height, fps)
        else:
            # Not reached yet: nominal values until the first frame says otherwise.
            fps, width, height = cfg.fps, cfg.width, cfg.height
        self.info = SourceInfo(self.name, True, fps, width, height)

    # ------------------------------------------------------------ ReconnectingSource

    def _connect(self) -> _Link:
        try:
            container = av.open(self.url, options=self.options,
                                timeout=(self.open_timeout_s, self.read_timeout_s))
        except av.error.ProtocolNotFoundError:
            raise SourceError(
                f"source {self.name}: this FFmpeg (PyAV {av.__version__}, FFmpeg "
                f"{ffmpeg_version()}) cannot speak "
                f"{scheme_of(self.url)}:// (built without it; SRT needs libsrt). Have the "
                "encoder send RTSP, UDP (MPEG-TS) or HTTP instead, or install a PyAV "
                "built with it") from None
        except av.error.ExitError:
            # PyAV's interrupt callback: the open/probe ran past open_timeout_s.
            raise TimeoutError(f"no stream within {self.open_timeout_s:g} s") from None
        except av.error.FFmpegError as exc:
            # FFmpeg's message repeats the URL, password included: keep only the reason.
            raise ConnectionError(exc.strerror or exc.__class__.__name__) from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"source {self.name}: the stream has no video (audio or data "
                              "only?); check the encoder's output")
        stream = container.streams.video[0]
        cc = stream.codec_context
        cc.thread_type = self.thread_type
        cc.thread_count = self.threads
        if self.low_latency:
            # Output each frame as soon as it is decoded, not after a reorder delay.
            cc.options = {**(cc.options or {}), "flags": "+low_delay"}
        return _Link(container, stream, Decoder(self.name, self.stats, live=True))

    def _read(self, link: object, stop: threading.Event) -> Iterator[tuple[np.ndarray, int]]:
        assert isinstance(link, _Link)
        for frame in link.decoder.frames(link.container, link.stream, stop):
            t_ns = time.monotonic_ns()  # decoded: the frame exists for us from here on
            self.stats.decoded += 1
            yield frame.to_ndarray(format="rgb24"), t_ns

    def _lost_reason(self, link: object) -> str:
        assert isinstance(link, _Link)
        error = link.decoder.error
        if error is None:
            return "the stream ended"
        if isinstance(error, av.error.ExitError):
            return f"no data for {self.read_timeout_s:g} s"
        if isinstance(error, av.error.FFmpegError):
            return error.strerror or error.__class__.__name__  # without the URL
        return redact(str(error))

    def _release(self, link: object) -> None:
        assert isinstance(link, _Link)
        link.container.close()

    def close(self) -> None:
        super().close()
        s = self.stats
        if s.decoded or s.skipped:
            logger.info("source {}: {} frames decoded, {} reconnects; skipped {} corrupt "
                        "packets, {} undecodable packets, {} corrupt frames", self.name,
                        s.decoded, self.state.reconnects, s.corrupt_packets, s.decode_errors,
                        s.corrupt_frames)
