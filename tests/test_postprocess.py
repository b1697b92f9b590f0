from __future__ import annotations

import numpy as np

from orstream.engines.postprocess import instance_vote


def test_each_connected_instrument_takes_its_majority_type_and_specks_vanish():
    labels = np.zeros((40, 50), np.uint8)
    labels[5:20, 5:30] = 3  # one instrument, mostly type 3 ...
    labels[8:12, 25:30] = 6  # ... with a patch painted type 6
    labels[25:38, 10:45] = 1  # a second, separate instrument of type 1
    labels[0, 49] = 5  # a one-pixel speck on tissue
    out = instance_vote(labels, 8, min_area_fraction=0.01)
    assert set(np.unique(out[5:20, 5:30])) == {3}
    assert set(np.unique(out[25:38, 10:45])) == {1}
    assert out[0, 49] == 0
    expected_background = labels == 0
    expected_background[0, 49] = True
    assert np.array_equal(out == 0, expected_background)


def test_touching_instruments_without_a_dominant_type_keep_their_own_types():
    labels = np.zeros((20, 40), np.uint8)
    labels[5:15, 0:20] = 2  # two instruments side by side, touching, of equal size
    labels[5:15, 20:40] = 4
    out = instance_vote(labels, 8, min_area_fraction=0.01)
    assert np.array_equal(out, labels)


def test_specks_of_a_third_type_between_touching_instruments_take_the_majority_type():
    labels = np.zeros((20, 40), np.uint8)
    labels[5:15, 0:22] = 2  # two touching instruments, neither dominant ...
    labels[5:15, 22:40] = 4
    labels[8:11, 19:23] = 7  # ... and a speck of a type in neither, at the seam
    out = instance_vote(labels, 8, min_area_fraction=0.01)
    assert 7 not in out, "a type absent from the scene survived the vote"
    assert np.array_equal(out[8:11, 19:23], np.full((3, 4), 2, np.uint8))  # the majority
    untouched = labels != 7
    assert np.array_equal(out[untouched], labels[untouched])


def test_empty_map_is_returned_unchanged():
    labels = np.zeros((8, 8), np.uint8)
    assert instance_vote(labels, 8) is labels
