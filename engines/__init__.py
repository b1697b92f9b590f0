"""Inference engines: models, backends, the engine cache and shipped weights."""

from engines import _threads  # noqa: F401  (before anything imports torch)
