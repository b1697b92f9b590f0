"""The synthetic endoscope's background cache: the live feed starts fast, and a cached video
is the same video, frame for frame."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from loguru import logger

import orstream.training.synth.generator as generator
from orstream.pipeline.config import SourceConfig
from orstream.pipeline.sources import SyntheticSource
from orstream.training.synth.background_cache import BackgroundCache
from orstream.training.synth.generator import SynthConfig, SyntheticEndoscope

SMALL = SynthConfig(width=320, height=256, seed=21)
# Frames far apart, one inside a smoke puff and one inside a camera jolt, so the textures,
# the camera drift and the smoke / jolt timing (random draws after the textures) all count.
INDICES = (0, 97, 500, 1801, 4000)


def same_video(a: SyntheticEndoscope, b: SyntheticEndoscope) -> bool:
    for i in INDICES:
        fa, fb = a.render(i), b.render(i)
        if not (np.array_equal(fa.image, fb.image) and np.array_equal(fa.types, fb.types)
                and fa.caption == fb.caption):
            return False
    return True


def test_a_cached_video_is_the_built_video(tmp_path, monkeypatch):
    cache = BackgroundCache(tmp_path)
    built = SyntheticEndoscope(SMALL)
    first = SyntheticEndoscope(SMALL, cache=cache)  # builds and stores
    assert len(list(tmp_path.glob("*.npz"))) == 1
    monkeypatch.setattr(generator, "tissue_texture", None)  # any build would now fail
    loaded = SyntheticEndoscope(SMALL, cache=cache)
    assert same_video(built, first) and same_video(built, loaded)


def test_size_seed_and_smoke_each_have_their_own_entry(tmp_path):
    cache = BackgroundCache(tmp_path)
    for config in (SMALL, SynthConfig(width=320, height=256, seed=22),
                   SynthConfig(width=384, height=256, seed=21),
                   SynthConfig(width=320, height=256, seed=21, smoke=False)):
        cached = SyntheticEndoscope(config, cache=cache)
        assert same_video(SyntheticEndoscope(config), cached)
    assert len(list(tmp_path.glob("*.npz"))) == 4


def test_a_damaged_entry_is_rebuilt_with_a_warning(tmp_path):
    cache = BackgroundCache(tmp_path)
    SyntheticEndoscope(SMALL, cache=cache)
    (entry,) = tmp_path.glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:5000])  # cut short, as by a full disk
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    try:
        rebuilt = SyntheticEndoscope(SMALL, cache=cache)
    finally:
        logger.remove(sink)
    assert any("unreadable" in w and entry.name in w for w in warnings), warnings
    assert same_video(SyntheticEndoscope(SMALL), rebuilt)
    assert BackgroundCache(tmp_path).load(entry.stem) is not None  # stored again, whole


def test_only_the_most_recently_used_entries_are_kept(tmp_path):
    cache = BackgroundCache(tmp_path, keep=2)
    configs = [SynthConfig(width=128, height=96, seed=s) for s in range(3)]
    SyntheticEndoscope(configs[0], cache=cache)
    SyntheticEndoscope(configs[1], cache=cache)
    # Seed 0 used again, so seed 1 is the least recently used when seed 2 arrives.
    for path in tmp_path.glob("*seed1-*.npz"):
        os.utime(path, (1, 1))
    SyntheticEndoscope(configs[0], cache=cache)
    SyntheticEndoscope(configs[2], cache=cache)
    kept = sorted(p.name.split("-")[1] for p in tmp_path.glob("*.npz"))
    assert kept == ["seed0", "seed2"]


def test_an_unwritable_cache_costs_speed_not_the_video(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    cached = SyntheticEndoscope(SMALL, cache=BackgroundCache(blocker / "synth"))
    assert same_video(SyntheticEndoscope(SMALL), cached)


def test_the_live_source_reads_and_writes_the_configured_cache(synth_cache, monkeypatch):
    config = SourceConfig(width=320, height=256, seed=32)
    first = SyntheticSource(config)
    first.prepare()
    assert list(synth_cache.glob("320x256-seed32-*.npz")), "the first start stored nothing"
    monkeypatch.setattr(generator, "tissue_texture", None)  # the next start must not build
    again = SyntheticSource(config)
    again.prepare()
    assert np.array_equal(first.render(45), again.render(45))


def test_a_read_only_cache_is_read(tmp_path, monkeypatch):
    """A shared, prebuilt cache the user cannot write: the entry still loads (its use time
    is not recorded) and a damaged one costs a rebuild, not the start."""
    SyntheticEndoscope(SMALL, cache=BackgroundCache(tmp_path))

    def refused(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "utime", refused)
    monkeypatch.setattr(Path, "unlink", refused)
    monkeypatch.setattr(tempfile, "mkstemp", refused)
    built = SyntheticEndoscope(SMALL)
    monkeypatch.setattr(generator, "tissue_texture", None)  # must come from the entry
    assert same_video(built, SyntheticEndoscope(SMALL, cache=BackgroundCache(tmp_path)))
    monkeypatch.undo()
    (entry,) = tmp_path.glob("*.npz")
    entry.write_bytes(b"not an npz")
    monkeypatch.setattr(os, "utime", refused)
    monkeypatch.setattr(Path, "unlink", refused)
    monkeypatch.setattr(tempfile, "mkstemp", refused)
    assert same_video(built, SyntheticEndoscope(SMALL, cache=BackgroundCache(tmp_path)))
