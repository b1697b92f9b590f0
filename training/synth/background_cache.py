"""A disk cache of the synthetic endoscope's precomputed backgrounds, for a fast live start.

Building the tissue and smoke textures and the vignette of a 1080p video takes 0.45-0.65 s
(numpy over 2.4 million pixels, several passes) and it sits on the live pipeline's start-up
path: `orstream run` cannot show or record a frame before it. The same (size, seed) is built
at every start, so the arrays are kept on disk and loaded in a few milliseconds instead.

Only the live source uses it (training renders thousands of seeds once each: caching those
would fill the disk for nothing). A cached video is identical to a built one, frame for
frame: the entry holds the arrays and the random generator's state after building them, so
the draws that follow (camera drift, smoke and jolt timing) are the same. The key covers
everything that decides the arrays: the size, seed and smoke setting, the source of
tissue.py, and the numpy and OpenCV versions (their noise and resizing are part of the
texture). Entries are written to a temporary file and renamed into place, so a reader never
sees half an entry; the least recently used are removed beyond `keep`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from loguru import logger

from orstream.engines.cache import user_cache_dir
from orstream.training.synth import tissue

FORMAT = "orstream.synth-backgrounds/1"
KEEP = 4  # entries: a 1080p one is about 20 MB


def default_cache_dir() -> Path:
    """ORSTREAM_SYNTH_CACHE, else $XDG_CACHE_HOME/orstream/synth (~/.cache/...)."""
    return user_cache_dir("synth", "ORSTREAM_SYNTH_CACHE")


@functools.cache
def _tissue_source_sha() -> str:
    # Read when a key is first needed, not when the generator is imported (training imports
    # it everywhere and never uses the cache).
    return hashlib.sha256(Path(tissue.__file__).read_bytes()).hexdigest()


@dataclass
class Backgrounds:
    """What a video precomputes once: textures (uint8 RGB), the vignette gain, and the
    generator state after drawing them."""

    tissue: np.ndarray
    smoke: np.ndarray | None
    vignette: np.ndarray
    rng_state: dict


class BackgroundCache:
    """Backgrounds by key in a folder; `load` misses (None) rather than fail on a bad entry."""

    def __init__(self, root: Path | None = None, keep: int = KEEP) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.keep = keep

    @staticmethod
    def key(width: int, height: int, seed: int, smoke: bool, margin: int) -> str:
        parts = [FORMAT, _tissue_source_sha(), np.__version__, cv2.__version__,
                 f"{width}x{height}", f"seed={seed}", f"smoke={smoke}", f"margin={margin}"]
        digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]
        return f"{width}x{height}-seed{seed}-{digest}"

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.npz"

    def load(self, key: str) -> Backgrounds | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as entry:
                found = Backgrounds(
                    tissue=entry["tissue"],
                    smoke=entry["smoke"] if "smoke" in entry.files else None,
                    vignette=entry["vignette"],
                    rng_state=json.loads(str(entry["rng_state"])))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            # A damaged entry (disk full mid-write by another tool, a manual edit) costs a
            # rebuild, never the start of the pipeline.
            logger.warning("synthetic background cache: {} unreadable ({}); rebuilding it",
                           path, exc)
            with contextlib.suppress(OSError):  # a read-only cache keeps its bad entry
                path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):  # read-only (a shared, prebuilt cache): fine
            os.utime(path)  # recently used: kept when older entries are removed
        return found

    def load_or_build(self, key: str, build: Callable[[], Backgrounds]) -> Backgrounds:
        """The entry for `key`, or `build()`'s result, stored for the next start."""
        found = self.load(key)
        if found is None:
            found = build()
            self.store(key, found)
        return found

    def store(self, key: str, found: Backgrounds) -> None:
        """Write an entry; a cache that cannot be written is logged and otherwise ignored."""
        arrays = {"tissue": found.tissue, "vignette": found.vignette,
                  "rng_state": np.array(json.dumps(found.rng_state))}
        if found.smoke is not None:
            arrays["smoke"] = found.smoke
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".", suffix=".npz.tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.savez(f, **arrays)
                os.replace(tmp, self._path(key))
            finally:
                Path(tmp).unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("synthetic background cache: cannot write under {} ({}); the "
                           "next start builds the textures again", self.root, exc)
            return
        self._evict()

    def _evict(self) -> None:
        def used(path: Path) -> float:
            try:
                return path.stat().st_mtime
            except OSError:  # removed meanwhile by another process evicting
                return 0.0

        entries = sorted(self.root.glob("*.npz"), key=used, reverse=True)
        for old in entries[self.keep:]:
            old.unlink(missing_ok=True)
