"""The frame path: sources, stages, transport, sinks and the CLI."""

from engines import _threads  # noqa: F401  (before anything imports torch)
