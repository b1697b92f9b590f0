"""The frame path: sources, stages, transport, sinks and the CLI."""

from orstream.engines import _threads  # noqa: F401  (before anything imports torch)
