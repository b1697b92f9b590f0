"""The weights that ship with orstream: loadable safely, and they find instruments in frames
of a synthetic procedure they were never trained on."""

from __future__ import annotations

import numpy as np
import pytest

from orstream.common.classes import CLASSES
from orstream.common.crop import endovis_region
from orstream.engines import checkpoint as ckpt
from orstream.engines.predict import predict_labels
from orstream.engines.preprocess import resize_image, resize_labels
from orstream.training.metrics import SegmentationMetrics
from orstream.training.synth.generator import SynthConfig, SyntheticEndoscope


def _frames(task: str, n: int = 6):
    # A seed far from the training set's (datasets derive their video seeds from seed 0).
    synth = SyntheticEndoscope(SynthConfig(seed=987654))
    y, x, h, w = endovis_region(1080, 1920)
    images, labels = [], []
    for i in range(90, 90 + 45 * n, 45):
        f = synth.render(i)
        images.append(resize_image(f.image[y:y + h, x:x + w], (256, 320)))
        labels.append(resize_labels(f.label(task)[y:y + h, x:x + w], (256, 320)))
    return np.stack(images), np.stack(labels)


def _predict(task: str):
    checkpoint = ckpt.load(ckpt.shipped(task), task=task, model_name="unet_xs")
    assert checkpoint.classes == CLASSES[task]
    assert checkpoint.input_size == (256, 320)
    images, truths = _frames(task)
    return truths, predict_labels(checkpoint.build(), images, checkpoint.mean, checkpoint.std)


# Loose floors on six frames: the full evaluation on a held-out dataset is in
# engines/weights/README.md; these catch weights that are broken or mismatched.


def test_shipped_binary_weights_segment_an_unseen_procedure():
    truths, preds = _predict("binary")
    metrics = SegmentationMetrics(2, "binary")
    for t, p in zip(truths, preds, strict=True):
        metrics.update(t, p)
    assert metrics.compute()["dice"] > 0.85


def test_shipped_types_weights_find_instruments_and_mostly_name_them():
    truths, preds = _predict("types")
    instrument = truths > 0
    assert (preds[instrument] > 0).mean() > 0.9  # instruments are found
    assert (preds[~instrument] == 0).mean() > 0.98  # tissue stays tissue
    # Seven types: chance is 1/7; the shipped model names most instrument pixels right.
    assert (preds[instrument] == truths[instrument]).mean() > 0.45


def test_the_readmes_weights_paths_work_from_any_folder(tmp_path, monkeypatch):
    from orstream.engines.checkpoint import CheckpointError, weights_path

    monkeypatch.chdir(tmp_path)  # not the repository: as after `pip install orstream`
    found = weights_path("engines/weights/unet_xs_types.pt")
    assert found.is_file() and found.name == "unet_xs_types.pt"
    (tmp_path / "mine.pt").write_bytes(b"x")
    assert weights_path("mine.pt").samefile(tmp_path / "mine.pt"), "the working folder wins"
    with pytest.raises(CheckpointError, match=r"nope\.pt does not exist .*unet_xs_types\.pt"):
        weights_path("engines/weights/nope.pt")
