"""Inference engines: models, backends, the engine cache and shipped weights."""

from orstream.engines import _threads  # noqa: F401  (before anything imports torch)
