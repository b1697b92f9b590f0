from __future__ import annotations

import json

import pytest
import torch

from orstream.engines import checkpoint as ckpt
from orstream.pipeline.cli import main
from orstream.training.evaluate import evaluate
from orstream.training.unet_trainer import TrainConfig, train_unet

QUICK = dict(size=(128, 160), crop=(64, 96), batch=4, workers=1, fold=0)


def test_training_learns_and_leaves_checkpoint_curves_and_grid(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig(data=tiny_dataset, task="binary", epochs=3, steps_per_epoch=12, lr=3e-3,
                      out=out, **QUICK)
    best = train_unet(cfg)
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    for name in ("best.pt", "last.pt", "curves.png", "predictions.png"):
        assert (out / name).stat().st_size > 0
    loaded = ckpt.load(best, task="binary")
    assert loaded.input_size == (128, 160)
    assert loaded.extra["train_config"]["task"] == "binary"
    # A few dozen steps on 16 frames already find the instruments better than chance.
    assert loaded.metrics["dice"] > 0.3


def test_resume_continues_from_the_last_epoch(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    base = dict(data=tiny_dataset, task="types", steps_per_epoch=2, out=out, **QUICK)
    train_unet(TrainConfig(epochs=1, **base))
    train_unet(TrainConfig(epochs=2, resume=True, **base))
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    with pytest.raises(ckpt.CheckpointError, match="segments task 'types' but 'binary'"):
        train_unet(TrainConfig(epochs=3, resume=True, **{**base, "task": "binary"}))


def test_init_starts_from_a_checkpoints_weights_and_crop_none_trains_on_whole_frames(
        tiny_dataset, tmp_path):
    first = train_unet(TrainConfig(data=tiny_dataset, task="binary", epochs=1, steps_per_epoch=2,
                                   out=tmp_path / "crops", **QUICK))
    # A learning rate this small leaves the weights where --init put them: the result must be
    # the first run's network, not a fresh random one.
    code = main(["train", "unet", "--data", str(tiny_dataset), "--task", "binary",
                 "--size", "160x128", "--crop", "none", "--batch", "2", "--epochs", "1",
                 "--steps-per-epoch", "1", "--lr", "1e-12", "--init", str(first),
                 "--out", str(tmp_path / "whole")])
    assert code == 0
    tuned = ckpt.load(tmp_path / "whole" / "best.pt")
    assert tuned.extra["train_config"]["crop"] is None
    assert tuned.extra["train_config"]["init"] == str(first)
    start = ckpt.load(first).state_dict
    for name, value in tuned.state_dict.items():
        if name.endswith("weight") and value.dim() == 4:  # convolutions (BN stats do move)
            assert torch.allclose(value, start[name], atol=1e-6), name
    with pytest.raises(ckpt.CheckpointError, match="segments task 'binary' but 'types'"):
        train_unet(TrainConfig(data=tiny_dataset, task="types", epochs=1, steps_per_epoch=1,
                               init=first, out=tmp_path / "wrong", **QUICK))


def test_eval_json_has_the_published_metrics(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    train_unet(TrainConfig(data=tiny_dataset, task="types", epochs=1, steps_per_epoch=1,
                           out=out, **QUICK))
    code = main(["eval", "--data", str(tiny_dataset), "--weights", str(out / "best.pt"),
                 "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("per_class_iou", "mean_iou", "ch_iou", "isi_iou", "mc_iou"):
        assert key in result
    assert result["frames"] == 32
    assert evaluate(tiny_dataset, out / "best.pt", videos=[2])["frames"] == 8


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="size"):
        TrainConfig(data="x", size="100x100")
    with pytest.raises(ValueError, match="unet_xs"):
        TrainConfig(data="x", model="resnet")


def test_cli_bad_data_dir_names_it_and_exits_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["train", "unet", "--data", str(empty), "--epochs", "1",
                 "--out", str(tmp_path / "r")])
    assert code == 2
    assert not (tmp_path / "r" / "best.pt").exists()
