"""Frame sources, chosen by a factory keyed on the source spec.

A source yields RGB uint8 images at its own pace, on its own thread (pipeline/capture.py).
`info.live` sources (the synthetic endoscope, a paced replay, network streams, cameras)
produce frames whether or not anyone keeps up, so the capture edge delivers only the newest.
A lossless replay is not live: every decodable frame is delivered once, in order, as fast as
the pipeline takes them.

One module per kind, below `base` (the interface) so that none imports this package's
factory: synthetic.py (the built-in endoscope), files.py (recordings, PyAV), network.py
(streams, PyAV) and camera.py (OpenCV V4L2). Network streams and cameras can drop out and
come back: they are `ReconnectingSource`s (reconnecting.py), which reconnect with capped
exponential backoff and publish a `SourceState` that the runner's status line reads.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from orstream.pipeline.config import SourceConfig
from orstream.pipeline.sources.base import (
    Captured,
    Source,
    SourceError,
    SourceInfo,
    SourceState,
)
from orstream.pipeline.sources.files import DECODER_DEFAULTS, DecodeStats, VideoFileSource
from orstream.pipeline.sources.reconnecting import ReconnectingSource
from orstream.pipeline.sources.synthetic import SyntheticSource

__all__ = [
    "DECODER_DEFAULTS",
    "NETWORK_SCHEMES",
    "Captured",
    "DecodeStats",
    "ReconnectingSource",
    "Source",
    "SourceError",
    "SourceInfo",
    "SourceState",
    "SyntheticSource",
    "VideoFileSource",
    "open_source",
    "source_kind",
]

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "srt", "udp", "rtp", "tcp", "http", "https")
_CAMERA = re.compile(r"camera:\d+|/dev/video\d+")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def source_kind(spec: str) -> str:
    """Which factory serves a spec: synthetic, network, camera, file, or unknown."""
    if spec == "synthetic":
        return "synthetic"
    scheme = _SCHEME.match(spec)
    if scheme:
        return "network" if scheme.group(1).lower() in NETWORK_SCHEMES else "unknown"
    if _CAMERA.fullmatch(spec):
        return "camera"
    return "file"


def _unknown(cfg: SourceConfig) -> Source:
    raise SourceError(f"source {cfg.spec}: unknown scheme; give 'synthetic', a video file "
                      f"path, camera:N, /dev/videoN, or one of "
                      f"{', '.join(s + '://' for s in NETWORK_SCHEMES)}")


def _network(cfg: SourceConfig) -> Source:
    # Imported when asked for: PyAV's import costs a file replay or the synthetic feed nothing
    from orstream.pipeline.sources.network import NetworkSource

    return NetworkSource(cfg)


def _camera(cfg: SourceConfig) -> Source:
    from orstream.pipeline.sources.camera import CameraSource  # OpenCV V4L2, when asked for

    return CameraSource(cfg)


_FACTORIES: dict[str, Callable[[SourceConfig], Source]] = {
    "synthetic": SyntheticSource,
    "file": VideoFileSource,
    "network": _network,
    "camera": _camera,
    "unknown": _unknown,
}


def open_source(cfg: SourceConfig) -> Source:
    """A source for the spec; SourceError (naming the spec and the fix) if it cannot open."""
    return _FACTORIES[source_kind(cfg.spec)](cfg)
