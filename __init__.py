"""orstream: real-time AI on the operating room's endoscope video.

The repository's top-level folders (pipeline/, engines/, training/, calibration/, benchmarks/)
are this package's subpackages: pyproject.toml maps the package `orstream` onto the repository
root, so a checkout and an installed wheel import the same names (`orstream.pipeline.cli`) and
find configs/ and engines/weights/ at the same place beside them.
"""

__version__ = "0.2.0"
