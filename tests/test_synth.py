from __future__ import annotations

import av
import numpy as np
import pytest

from orstream.common.classes import TYPE_CLASSES
from orstream.training.datasets.endovis import discover, load_sample
from orstream.training.synth.captions import TYPE_PHRASES
from orstream.training.synth.generator import SynthConfig, SyntheticEndoscope
from orstream.training.synth.writers import video_seed, write_video

SMALL = SynthConfig(width=320, height=256, seed=4)


def test_same_seed_same_frames_and_random_access_matches_sequential():
    a = SyntheticEndoscope(SMALL)
    sequential = [a.render(i) for i in range(0, 120, 3)]
    b = SyntheticEndoscope(SMALL)
    late = b.render(117)  # straight to a late frame, nothing rendered before
    assert np.array_equal(late.image, sequential[-1].image)
    assert np.array_equal(late.types, sequential[-1].types)
    assert late.caption == sequential[-1].caption


def test_different_seed_different_video():
    a = SyntheticEndoscope(SMALL).render(60)
    b = SyntheticEndoscope(SynthConfig(width=320, height=256, seed=5)).render(60)
    assert not np.array_equal(a.image, b.image)


def test_ground_truth_is_consistent_with_the_picture():
    synth = SyntheticEndoscope(SMALL)
    outside = synth.fov.mask(320, 256) == 0
    counts = []
    for i in range(0, 600, 20):
        f = synth.render(i)
        assert f.image.shape == (256, 320, 3) and f.image.dtype == np.uint8
        assert set(np.unique(f.parts)) <= {0, 1, 2, 3, 4}
        assert set(np.unique(f.types)) <= set(range(len(TYPE_CLASSES)))
        # parts and types label the same pixels; nothing is labelled outside the scope's circle
        assert np.array_equal(f.parts > 0, f.types > 0)
        assert not f.parts[outside].any()
        assert f.image[outside].max() <= 8  # black outside the field of view
        counts.append(len(set(np.unique(f.types)) - {0}))
    assert max(counts) >= 2, "instruments never share the view"
    assert min(counts) <= 1


def test_caption_names_exactly_the_visible_instruments():
    synth = SyntheticEndoscope(SMALL)
    checked = 0
    for i in range(0, 900, 15):
        f = synth.render(i)
        area = np.bincount(f.types.ravel(), minlength=8) / f.types.size
        for type_id in range(1, 8):
            named = TYPE_PHRASES[type_id] in f.caption
            if area[type_id] > 0.01:  # clearly visible: must be named
                assert named, (i, type_id, f.caption)
                checked += 1
            if area[type_id] == 0:  # absent: must not be named
                assert not named, (i, type_id, f.caption)
    assert checked > 10


def test_smoke_and_motion_blur_occur():
    synth = SyntheticEndoscope(SMALL)
    frames = [synth.render(i) for i in range(0, 30 * 60, 10)]
    assert any(f.smoke > 0.2 for f in frames)
    assert any(f.blur >= 3 for f in frames)
    assert any("smoke" in f.caption for f in frames)


def test_the_live_feeds_image_only_render_is_the_same_picture():
    synth, live = SyntheticEndoscope(SMALL), SyntheticEndoscope(SMALL)
    frames = [synth.render(i) for i in range(0, 30 * 60, 10)]
    # Frames with instruments, smoke and motion blur all among them.
    assert any(f.instruments for f in frames) and any(f.smoke > 0.2 for f in frames)
    assert any(f.blur >= 3 for f in frames)
    for f in frames:
        assert np.array_equal(live.render_image(f.index), f.image), f.index


def test_bad_config_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="instrument_types"):
        SynthConfig(instrument_types=(9,))
    with pytest.raises(ValueError, match="64x64"):
        SynthConfig(width=10, height=10)


def test_dataset_round_trips_through_the_endovis_loader(tiny_dataset):
    samples = discover(tiny_dataset, "types")
    assert len(samples) == 4 * 8
    s = samples[8 * 2 + 5]  # video 3, frame 5
    assert (s.video_id, s.frame) == (3, "frame005")
    synth = SyntheticEndoscope(SynthConfig(width=320, height=256, seed=video_seed(11, 3)))
    truth = synth.render(5 * 15)  # dataset frames are every 15th video frame by default
    image, types = load_sample(s, "types")
    assert np.array_equal(image, truth.image)
    assert np.array_equal(types, truth.types)
    _, parts = load_sample(discover(tiny_dataset, "parts")[8 * 2 + 5], "parts")
    assert np.array_equal(parts, truth.parts)
    captions = (tiny_dataset / "instrument_dataset_3" / "captions.jsonl").read_text().splitlines()
    assert len(captions) == 8


def test_video_writer_makes_a_playable_h264_file(tmp_path):
    path = write_video(tmp_path / "s.mp4", seconds=1.0, width=320, height=256, fps=30, seed=1)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(frames) == 30
    assert frames[0].shape == (256, 320, 3)
