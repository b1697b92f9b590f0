"""Endpoint strings: parsed, normalised and checked, with no socket behind them.

An endpoint names one edge of the pipeline: `inproc://NAME` (threads of one process),
`ipc://PATH` (a Unix socket file), `shm://PATH` (ipc://PATH whose pixels go through shared
memory) or `tcp://HOST:PORT`. The config validates every endpoint with this module, and the
transport opens sockets on what it returns; it imports nothing of orstream but
orstream.common, so reading a config never loads ZeroMQ or numba.

A tcp endpoint without a host, or with `localhost`, means 127.0.0.1: any other interface
must be named, so that nothing is exposed to the hospital network by omission.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from errno import EADDRINUSE
from typing import Literal

from loguru import logger

from orstream.common.errors import UsageError

# latest: PUB/SUB or a one-frame mailbox, the newest frame wins; lossless: PUSH/PULL or a
# bounded queue, every frame in order with backpressure (pipeline/transport.py)
Mode = Literal["latest", "lossless"]
SCHEMES = ("inproc", "ipc", "shm", "tcp")
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "[::1]")
STREAM_FIELD = "{stream}"  # replaced by a frame's stream id (one endpoint per operating room)


class EndpointError(UsageError):
    """An endpoint string that names no usable address; the message says the expected form."""


class EndpointInUseError(UsageError):
    """Binding failed because another socket holds the port or path. `endpoint` is the
    endpoint as configured (normalised); the caller adds which config key set it."""

    errno = EADDRINUSE  # as the OSError / zmq.ZMQError it stands for

    def __init__(self, endpoint: str) -> None:
        taken = "port" if endpoint.startswith("tcp://") else "path"
        super().__init__(f"cannot bind {endpoint}: the {taken} is taken by another socket "
                         f"(another pipeline or viewer on this host?)")
        self.endpoint = endpoint


@dataclass(frozen=True)
class Endpoint:
    """A parsed endpoint. tcp: `host` and `port`; the others: `path` (inproc: a name)."""

    scheme: str
    host: str | None = None
    port: int | None = None
    path: str | None = None

    def __str__(self) -> str:
        if self.scheme == "tcp":
            return f"tcp://{self.host}:{self.port}"
        return f"{self.scheme}://{self.path}"


def parse(endpoint: str) -> Endpoint:
    """The parts of `endpoint`, normalised (tcp://:5600 -> host 127.0.0.1); EndpointError if
    it is not one of the four forms."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep or scheme not in SCHEMES:
        # A bare port or host:port is the common slip: name the endpoint it most likely meant.
        bare = endpoint if ":" in endpoint else f"127.0.0.1:{endpoint}"
        hint = (f" (did you mean tcp://{bare}?)"
                if not sep and bare.rpartition(":")[2].isdigit() else "")
        raise EndpointError(f"endpoint {endpoint!r}: expected inproc://NAME, ipc://PATH, "
                            f"shm://PATH or tcp://HOST:PORT{hint}")
    if scheme != "tcp":
        if not rest:
            raise EndpointError(f"endpoint {endpoint!r}: names no path")
        return Endpoint(scheme, path=rest)
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise EndpointError(f"endpoint {endpoint!r}: expected tcp://HOST:PORT with a port "
                            "from 1 to 65535")
    return Endpoint("tcp", "127.0.0.1" if host in ("", "localhost") else host, int(port))


def normalize_endpoint(endpoint: str) -> str:
    """tcp://:5600 and tcp://localhost:5600 -> tcp://127.0.0.1:5600; others unchanged.
    EndpointError (a ValueError) if it is not an endpoint."""
    parsed = parse(endpoint)
    if parsed.host in ("*", "0.0.0.0"):
        logger.warning("{} binds every network interface, as configured", endpoint)
    return str(parsed)


def scheme(endpoint: str) -> str:
    """`tcp`, `ipc`, `shm` or `inproc` of a normalised endpoint."""
    return endpoint.partition("://")[0]


def zmq_address(endpoint: str) -> str:
    """The ZeroMQ address of a normalised endpoint: shm://PATH sends its messages over
    ipc://PATH."""
    return "ipc://" + endpoint[len("shm://"):] if endpoint.startswith("shm://") else endpoint


def socket_file(endpoint: str) -> str | None:
    """The absolute path of the Unix socket file an ipc:// or shm:// endpoint binds (relative
    paths are taken from the current folder, as ZeroMQ does); None for the others and for
    Linux abstract sockets (ipc://@name), which have no file."""
    if not endpoint.startswith(("ipc://", "shm://")):
        return None
    path = endpoint.partition("://")[2]
    return None if path.startswith("@") else os.path.abspath(path)


def is_loopback(endpoint: str) -> bool:
    """Whether the endpoint stays on this host: everything but tcp on another address."""
    parsed = parse(endpoint)
    return parsed.scheme != "tcp" or parsed.host in LOOPBACK_HOSTS


def for_stream(endpoint: str, stream: str) -> str:
    """`endpoint` with `{stream}` replaced by the stream id (unchanged without one)."""
    return endpoint.replace(STREAM_FIELD, stream)
