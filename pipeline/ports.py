"""A bind that fails because the address is taken becomes one line: the config key, the
endpoint and how to pick another (`--port-base`, `--publish` or `--set KEY=...`)."""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from orstream.common.errors import UsageError

T = TypeVar("T")
SUGGEST_STEP = 10  # suggested port bases go up in tens from the taken port: easy to read
# ZeroMQ closes a socket on its I/O thread, after close() returns: a pipeline that stops and
# starts again in one process (a supervisor, an embedding application, the test suite) can
# find its own port still held for a few milliseconds. A port still taken after this long
# is someone else's.
IN_USE_GRACE_S = 1.0
IN_USE_RETRY_S = 0.02


def bind_as(key: str, endpoint: str, bind: Callable[[], T]) -> T:
    """`bind()`, with "address in use" turned into a UsageError naming `key` and `endpoint`
    (after IN_USE_GRACE_S of retries); any other failure goes through unchanged."""
    deadline = time.monotonic() + IN_USE_GRACE_S
    while True:
        try:
            return bind()
        except Exception as exc:
            if not in_use(exc):
                raise
            if time.monotonic() >= deadline:
                raise endpoint_in_use(key, endpoint) from None
        time.sleep(IN_USE_RETRY_S)


def in_use(exc: BaseException | None) -> bool:
    """Whether `exc`, or an error it was raised from, is EADDRINUSE (a zmq.ZMQError, an
    OSError, or the transport's own error wrapping either)."""
    seen = 0
    while exc is not None and seen < 8:
        if getattr(exc, "errno", None) == errno.EADDRINUSE:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def endpoint_in_use(key: str, endpoint: str) -> UsageError:
    host, port = _tcp_address(endpoint)
    if port is None:
        return UsageError(f"{key} {endpoint}: the address is in use (another orstream?); "
                          f"set another with --set {key}=...")
    free = free_port_pair(host, port + SUGGEST_STEP)
    other = f"tcp://{host}:{free}"
    if key == "publish.endpoint":
        fix = f"pick free ports with --port-base {free}, or --publish {other}"
    elif key == "describe.ask_endpoint":
        fix = (f"pick free ports with --port-base {free - 1}, or --set {key}={other} "
               f"(null: no questions)")
    else:
        fix = f"pick a free port with --set {key}={other}"
    return UsageError(f"{key} {endpoint}: port {port} is in use (another orstream?); {fix}")


def free_port_pair(host: str, start: int) -> int:
    """The first port from `start` (in steps of ten) where it and the next are both free:
    what --port-base needs (publish on N, questions on N+1)."""
    for base in range(start, 65534, SUGGEST_STEP):
        if _free(host, base) and _free(host, base + 1):
            return base
    return start


def _free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host if host != "*" else "", port))
        except OSError:
            return False
    return True


def _tcp_address(endpoint: str) -> tuple[str, int | None]:
    if not endpoint.startswith("tcp://"):
        return "", None
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    return host or "127.0.0.1", int(port) if port.isdigit() else None
