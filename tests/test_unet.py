from __future__ import annotations

import pytest
import torch

from orstream.common.classes import CLASSES
from orstream.engines import checkpoint as ckpt
from orstream.engines.registry import VARIANTS, build_model, model_config


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_keeps_the_frame_size_and_is_finite(name):
    torch.manual_seed(0)
    model = build_model(name, 8).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 8, 64, 96)
    assert torch.isfinite(out).all()


def test_input_not_a_multiple_of_32_is_refused_with_the_rule():
    model = build_model("unet_xs", 2).eval()
    with pytest.raises(AssertionError, match="divide by 32"):
        model(torch.zeros(1, 3, 100, 96))


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unet_xs"):
        build_model("unet_xxl", 2)


def test_attention_variant_has_gates_and_plain_does_not():
    plain = build_model("unet_xs", 2)
    gated = build_model("attunet_xs", 2)
    assert not any("gate" in n for n, _ in plain.named_parameters())
    assert any("gate" in n for n, _ in gated.named_parameters())


def _checkpoint(task="types", name="unet_xs"):
    model = build_model(name, len(CLASSES[task]))
    return ckpt.Checkpoint(model_name=name, config=model_config(name, len(CLASSES[task])),
                           task=task, classes=CLASSES[task], input_size=(64, 96),
                           state_dict=model.state_dict(), metrics={"mc_iou": 0.5})


def test_checkpoint_round_trip_gives_the_same_outputs(tmp_path):
    original = _checkpoint()
    path = ckpt.save(original, tmp_path / "m.pt")
    loaded = ckpt.load(path, task="types", model_name="unet_xs")
    x = torch.randn(1, 3, 64, 96)
    reference = build_model("unet_xs", 8)
    reference.load_state_dict(original.state_dict)
    with torch.no_grad():
        assert torch.equal(loaded.build()(x), reference.eval()(x))
    assert loaded.metrics == {"mc_iou": 0.5}


def test_checkpoint_for_another_task_or_model_is_a_clear_error(tmp_path):
    path = ckpt.save(_checkpoint("binary"), tmp_path / "b.pt")
    with pytest.raises(ckpt.CheckpointError, match="segments task 'binary' but 'types'"):
        ckpt.load(path, task="types")
    with pytest.raises(ckpt.CheckpointError, match="holds model 'unet_xs' but 'unet_s'"):
        ckpt.load(path, model_name="unet_s")


def test_corrupt_or_foreign_files_are_refused(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ckpt.CheckpointError, match="cannot be read"):
        ckpt.load(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ckpt.CheckpointError, match="not an orstream U-Net checkpoint"):
        ckpt.load(foreign)
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load(tmp_path / "missing.pt")


def test_published_weights_are_half_the_size_and_predict_the_same(tmp_path):
    original = _checkpoint()
    src = ckpt.save(original, tmp_path / "best.pt")
    dst = ckpt.publish(src, tmp_path / "shipped.pt")
    assert dst.stat().st_size < 0.6 * src.stat().st_size
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a = ckpt.load(src).build()(x)
        b = ckpt.load(dst).build()(x)
    assert (a.argmax(1) == b.argmax(1)).float().mean() > 0.99
