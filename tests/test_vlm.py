"""The scene-describing VLM: model invariants, tokenizer, tasks, metrics, training, Describer."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from orstream.engines.checkpoint import CheckpointError
from orstream.engines.vlm import checkpoint as vlm_ckpt
from orstream.engines.vlm.decoder import CausalSelfAttention, DecoderConfig
from orstream.engines.vlm.describer import Describer
from orstream.engines.vlm.model import VARIANTS, build_model, lm_loss, model_config
from orstream.engines.vlm.tokenizer import Tokenizer, normalize
from orstream.engines.vlm.vit import Attention
from orstream.pipeline.cli import main
from orstream.training.vlm.data import load_vlm_data, write_vlm_data
from orstream.training.vlm.metrics import corpus_bleu, mention_scores, mentions, vqa_scores
from orstream.training.vlm.tasks import (
    PHRASINGS,
    QA,
    QUESTION_TYPES,
    Scene,
    Tool,
    ask,
    eval_questions,
    vocabulary_texts,
)
from orstream.training.vlm.trainer import VLMTrainConfig, collate, train_vlm

VOCAB = 40


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.build(vocabulary_texts())


@pytest.fixture(scope="module")
def vlm_data(tmp_path_factory):
    """Three short procedures rendered small (the crop is resized to 128x160 all the same)."""
    root = tmp_path_factory.mktemp("vlm") / "data"
    return write_vlm_data(root, frames=18, seed=21, per_video=6, step=45,
                          render_size=(480, 270), workers=1)


def _model(name: str = "vlm_tiny", vocab: int = VOCAB):
    torch.manual_seed(0)
    return build_model(name, vocab).eval()


def test_cached_decoding_gives_the_full_forward_logits():
    model = _model()
    dec = model.decoder
    images = torch.randn(2, 3, 128, 160)
    tokens = torch.randint(5, VOCAB, (2, 12))
    with torch.no_grad():
        visual = model.visual_tokens(images)
        full = dec(torch.cat([visual, dec.embed(tokens)], 1))  # (2, V + 12, vocab)
        cache = dec.new_cache(2)
        prefix = dec(torch.cat([visual, dec.embed(tokens[:, :4])], 1), cache)
        steps = [dec(dec.embed(tokens[:, i:i + 1]), cache) for i in range(4, 9)]
        several = dec(dec.embed(tokens[:, 9:]), cache)  # three at once after cached ones
    v = visual.shape[1]
    cached = torch.cat([prefix, *steps, several], 1)
    assert cache.length == v + 12
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)
    assert full[:, v:].shape == model(images, tokens).shape

    prompts = torch.randint(5, VOCAB, (2, 5))
    fast = model.generate(images, prompts, 20, eos_id=3, stop_at_eos=False)
    slow = model.generate(images, prompts, 20, eos_id=3, use_cache=False, stop_at_eos=False)
    assert fast.shape == (2, 20)
    assert torch.equal(fast, slow)


def test_attention_is_scaled_by_the_head_size():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 64)
    for attn, causal in ((CausalSelfAttention(DecoderConfig(dim=64, heads=8)), True),
                         (Attention(64, 8), False)):
        attn.eval()
        assert attn.scale == pytest.approx(1 / math.sqrt(8))  # head_dim 8, not dim 64
        q, k, v = attn.qkv(x).view(2, 7, 3, 8, 8).permute(2, 0, 3, 1, 4)

        def reference(scale, q=q, k=k, v=v, causal=causal, attn=attn):
            scores = (q @ k.transpose(-2, -1)) * scale
            if causal:
                scores = scores.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1),
                                            float("-inf"))
            y = F.softmax(scores, -1) @ v
            return attn.proj(y.transpose(1, 2).reshape(2, 7, 64))

        with torch.no_grad():
            out = attn(x)
            torch.testing.assert_close(out, reference(8 ** -0.5), atol=1e-5, rtol=1e-4)
            assert not torch.allclose(out, reference(64 ** -0.5), atol=1e-4)


def test_padding_is_masked_out_of_the_loss(tokenizer):
    qas = [[QA("caption", "describe the scene.", "bipolar forceps in the left move; smoke "
               "obscures the view"), QA("smoke", "is there smoke?", "yes")],
           [QA("count", "how many instruments?", "two")]]
    tokens, mask, owner = collate(tokenizer, qas)
    assert owner.tolist() == [0, 0, 1]
    pads = tokens == tokenizer.pad_id
    assert pads.any() and not (mask & pads).any()
    model = _model(vocab=len(tokenizer))
    images = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        loss = lm_loss(model(images, tokens, owner), tokens, mask)
        garbage = tokens.masked_scatter(pads, torch.randint(5, len(tokenizer),
                                                             (int(pads.sum()),)))
        assert torch.equal(lm_loss(model(images, garbage, owner), garbage, mask), loss)
        # The same as scoring each sequence alone, unpadded, weighted by its answer length.
        total = n = 0
        for i in range(3):
            length = int((~pads[i]).sum())
            t, m = tokens[i:i + 1, :length], mask[i:i + 1, :length]
            k = int(m[:, 1:].sum())
            total += float(lm_loss(model(images[owner[i:i + 1]], t), t, m)) * k
            n += k
        assert float(loss) == pytest.approx(total / n, rel=1e-5)


def test_tokenizer_round_trip_and_plain_data(tokenizer, tmp_path):
    text = "A large needle driver in the upper left grasps tissue; smoke obscures the view"
    ids = tokenizer.encode(text)
    assert tokenizer.unk_id not in ids
    assert tokenizer.decode(ids) == normalize(text) == text.lower()
    assert tokenizer.decode([*ids, tokenizer.eos_id, 7, 8]) == text.lower()  # stops at <eos>
    assert tokenizer.encode("where is the zebra?")[3] == tokenizer.unk_id
    assert tokenizer.unknown("where is the zebra?") == ["zebra"]
    ids, mask = tokenizer.sequence("is there smoke?", "no")
    assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
    assert mask == [0] * 6 + [1, 1]
    data = tokenizer.to_dict()
    json.dumps(data)  # plain data: no pickled objects in checkpoints
    path = tmp_path / "tok.pt"
    torch.save(data, path)
    again = Tokenizer.from_dict(torch.load(path, weights_only=True))
    assert again.vocab == tokenizer.vocab
    with pytest.raises(ValueError, match="start with"):
        Tokenizer(["a", "b"])


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variants_build_run_and_survive_a_checkpoint(name, tokenizer, tmp_path):
    model = _model(name, len(tokenizer))
    cfg = model_config(name, len(tokenizer))
    images = torch.randn(2, 3, *cfg.image_size)
    tokens = torch.randint(0, len(tokenizer), (2, 9))
    with torch.no_grad():
        logits = model(images, tokens)
        visual = model.visual_tokens(images)
    assert logits.shape == (2, 9, len(tokenizer))
    assert visual.shape == (2, cfg.visual_tokens, cfg.decoder.dim)
    assert torch.isfinite(logits).all()
    path = vlm_ckpt.save(vlm_ckpt.VLMCheckpoint(name, cfg, tokenizer, model.state_dict()),
                         tmp_path / f"{name}.pt")
    loaded = vlm_ckpt.load(path, model_name=name)
    assert loaded.tokenizer.vocab == tokenizer.vocab and loaded.config == cfg
    with torch.no_grad():
        torch.testing.assert_close(loaded.build()(images, tokens), logits)
    with pytest.raises(CheckpointError, match="holds model"):
        vlm_ckpt.load(path, model_name="vlm_other")


def test_tasks_answers_follow_the_wording_and_the_scene():
    scene = Scene((Tool(3, "upper left", "left", "grasping"), Tool(1, "right", "right",
                                                                   "entering")), True, "")
    rng = np.random.default_rng(0)
    assert ask(scene, "which", 0, rng).answer == "bipolar forceps and a large needle driver"
    assert ask(scene, "count", 0, rng).answer == "two"
    assert ask(scene, "count", 3, rng).answer == "2"
    assert ask(scene, "smoke", 2, rng).answer == "yes, there is smoke"
    wheres = {ask(scene, "where", 0, np.random.default_rng(s)).answer for s in range(40)}
    assert {"in the upper left", "in the right", "it is not visible"} == wheres
    empty = Scene((), False, "")
    assert ask(empty, "which", 1, rng).answer == "i can see no instruments"
    # Every kind has several wordings, each with its own answer form.
    for kind in QUESTION_TYPES:
        assert PHRASINGS[kind] >= 4
        answers = {ask(scene, kind, p, np.random.default_rng(1)).answer
                   for p in range(PHRASINGS[kind])}
        assert len(answers) >= 3, kind


def test_dataset_ground_truth_matches_the_captions(vlm_data, tokenizer):
    data = load_vlm_data(vlm_data)
    assert data.images.shape == (18, 128, 160, 3) and data.info["seed"] == 21
    for i, scene in enumerate(data.scenes):
        assert mentions(scene.caption) == scene.type_counts(), scene.caption
        assert ("smoke" in scene.caption) == scene.smoke
        for qa in eval_questions(scene, 7, i):
            assert not tokenizer.unknown(qa.question + " " + qa.answer), qa


def test_bleu_matches_a_hand_computation():
    one = corpus_bleu(["the cat sat on the mat"], [["the cat is on the mat"]])
    # p1 = 5/6, p2 = 3/5, p3 = 1/4, p4 = 0; equal lengths: no brevity penalty
    assert one["bleu1"] == pytest.approx(5 / 6)
    assert one["bleu2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert one["bleu3"] == pytest.approx(0.5)
    assert one["bleu4"] == 0.0
    two = corpus_bleu(["the cat sat on the mat", "a dog"],
                      [["the cat is on the mat"], ["a dog runs", "the dog runs away"]])
    # Corpus counts: p1 = 7/8, p2 = 4/6, p3 = 1/4; hypothesis 8 words, references 6 + 3.
    bp = math.exp(1 - 9 / 8)
    assert two["bleu1"] == pytest.approx(bp * 7 / 8)
    assert two["bleu2"] == pytest.approx(bp * math.sqrt(7 / 8 * 4 / 6))
    assert two["bleu3"] == pytest.approx(bp * (7 / 8 * 4 / 6 / 4) ** (1 / 3))
    assert corpus_bleu(["a b c d"], [["a b c d"]])["bleu4"] == pytest.approx(1.0)


def test_mention_scores_count_exactly_the_instruments_present():
    captions = [
        "a large needle driver in the left moves; bipolar forceps enter from the right",
        "a vessel sealer in the center moves",
        "no instruments are visible; the tissue is in view",
        "a large needle driver in the top moves; a large needle driver in the left moves",
    ]
    truths = [Counter({3: 1, 1: 1}), Counter({2: 1}), Counter(), Counter({3: 1})]
    s = mention_scores(captions, truths)
    assert (s["tp"], s["fp"], s["fn"]) == (3, 2, 1)
    assert s["precision"] == pytest.approx(3 / 5) and s["recall"] == pytest.approx(3 / 4)
    assert s["f1"] == pytest.approx(2 / 3)
    assert s["exact"] == pytest.approx(2 / 4)
    v = vqa_scores(["I can see two tools", "no", "in the left"],
                   ["i can see two tools", "yes", "in the left"], ["count", "smoke", "where"])
    assert v["accuracy"] == pytest.approx(2 / 3)
    assert v["per_type"] == {"where": 1.0, "smoke": 0.0, "count": 1.0}


def test_toy_training_run_gives_weights_the_describer_and_eval_use(vlm_data, tmp_path,
                                                                    capsys):
    out = tmp_path / "run"
    cfg = VLMTrainConfig(data=vlm_data, epochs=2, steps_per_epoch=3, batch=4, val_frames=4,
                         val_fraction=0.34, out=out)
    best = train_vlm(cfg)
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    for name in ("best.pt", "last.pt", "curves.png", "samples.png"):
        assert (out / name).stat().st_size > 0
    assert vlm_ckpt.load(best).extra["train_config"]["data_seed"] == 21

    shipped = vlm_ckpt.publish(best, tmp_path / "vlm_tiny.pt")
    describer = Describer.load(shipped, threads=1)
    rng = np.random.default_rng(0)
    before = torch.get_num_threads()
    try:
        for frame in (rng.integers(0, 255, (1080, 1920, 3), np.uint8),
                      rng.integers(0, 255, (256, 320, 3), np.uint8)):
            assert isinstance(describer.caption(frame), str)
            assert isinstance(describer.answer(frame, "is there smoke?"), str)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="empty"):
        describer.answer(frame, " ")

    assert main(["eval-vlm", "--data", str(vlm_data), "--weights", str(shipped),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["frames"] == 18 and result["data_seed"] == 21
    assert set(result["bleu"]) == {"bleu1", "bleu2", "bleu3", "bleu4"}
    assert set(result["vqa"]["per_type"]) == set(QUESTION_TYPES)
    assert {"precision", "recall", "f1"} <= set(result["mentions"])


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="vlm_tiny"):
        VLMTrainConfig(data=tmp_path, model="vlm_huge")
    with pytest.raises(ValueError, match="questions"):
        VLMTrainConfig(data=tmp_path, questions=9)
    with pytest.raises(FileNotFoundError, match="synth vlm-data"):
        load_vlm_data(tmp_path)


def test_shipped_weights_name_the_instruments_of_unseen_frames():
    from orstream.training.synth.generator import SynthConfig, SyntheticEndoscope

    describer = Describer.load()  # engines/weights/vlm_tiny.pt
    synth = SyntheticEndoscope(SynthConfig(seed=4242))  # 1080p, a seed no training used
    frames = [synth.render(i) for i in range(0, 30 * 12, 30)]
    captions = [describer.caption(f.image) for f in frames]
    truths = [Counter(s.type_id for s in f.instruments if s.visible) for f in frames]
    assert mention_scores(captions, truths)["f1"] >= 0.8, captions
    assert describer.answer(frames[0].image, "is there smoke?") in ("yes", "no")
