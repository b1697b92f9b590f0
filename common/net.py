"""Loopback ports for benchmarks and tests, which must never take the live defaults
(5600/5601) that a pipeline on the same host may be using."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
