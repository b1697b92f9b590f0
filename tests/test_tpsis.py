"""TP-SIS: text encoder, model, prompt-state reuse, training, eval of the shipped weights."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from orstream.engines import tpsis_checkpoint as tckpt
from orstream.engines.checkpoint import CheckpointError, shipped
from orstream.engines.registry import TPSIS_VARIANTS, build_tpsis
from orstream.engines.text_encoder import default_encoder
from orstream.engines.tpsis import labels_from_logits, mix
from orstream.engines.tpsis_prompts import (
    ABSENT,
    ALL_TRAIN_PROMPTS,
    NEGATIVES,
    PARAPHRASES,
    SECOND_ABSENT,
    SECOND_PARAPHRASES,
    SYNONYMS,
    TRAIN_PROMPTS,
)
from orstream.training.evaluate import evaluate, format_table
from orstream.training.tpsis_trainer import (
    TPSISTrainConfig,
    random_word_pool,
    step_prompts,
    tpsis_loss,
    train_tpsis,
)

NAMES = list(TRAIN_PROMPTS)


def test_text_encoder_loads_offline_from_the_package_and_tells_prompts_apart():
    # A fresh interpreter with every download path closed: the table and tokenizer must come
    # from the wordllama wheel, and neither requests nor huggingface_hub may even be imported.
    code = (
        "import sys, json\n"
        "from orstream.engines.text_encoder import default_encoder\n"
        "f = default_encoder().encode('Large Needle Driver')\n"
        "bad = [m for m in ('requests', 'huggingface_hub', 'wordllama') if m in sys.modules]\n"
        "print(json.dumps({'shape': list(f.words.shape), 'bad': bad}))\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HTTPS_PROXY": "http://0.0.0.0:9",
           "HTTP_PROXY": "http://0.0.0.0:9", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=60, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["shape"] == [4, 256] and got["bad"] == []

    enc = default_encoder()
    a, b = enc.encode("needle driver"), enc.encode("curved scissors")
    assert a.words.shape[1] == a.sentence.shape[0] == 256
    assert not np.allclose(a.sentence, b.sentence)
    assert abs(float(np.linalg.norm(a.sentence)) - 1) < 1e-5
    # Deterministic, and typed in any case or spacing it is the same prompt.
    again = enc.encode("  Needle   DRIVER ")
    np.testing.assert_array_equal(a.words, again.words)


def test_prompt_sets_are_disjoint_where_training_must_not_see_them():
    trained = {t.lower() for ts in ALL_TRAIN_PROMPTS.values() for t in ts} | set(NEGATIVES)
    held_out = {t.lower() for ts in PARAPHRASES.values() for t in ts} | set(ABSENT)
    assert not trained & held_out
    second = {t for ts in SECOND_PARAPHRASES.values() for t in ts} | set(SECOND_ABSENT)
    assert not trained & second and not held_out & second
    # A synonym may not smuggle in a paraphrase's word that the paper's three prompts of its
    # class lack ("needle" of "needle holder" is in the class name; "holder" is held out).
    for name, paraphrases in PARAPHRASES.items():
        own = {w for t in TRAIN_PROMPTS[name] for w in t.lower().split()}
        synonym_words = {w for t in SYNONYMS[name] for w in t.lower().split()}
        for text in paraphrases:
            assert not (set(text.split()) - own) & synonym_words, (name, text)
    pool = set(random_word_pool())
    assert len(pool) > 1000
    assert not pool & {w for t in held_out for w in t.split()}
    # Random negatives never mean a class.
    assert not pool & {"drivers", "grasp", "others", "vessels"}


@pytest.mark.parametrize("name", list(TPSIS_VARIANTS))
def test_variants_give_one_finite_map_per_group(name):
    torch.manual_seed(0)
    model = build_tpsis(name).eval()
    groups = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # 2 groups over 3 prompts
    state = model.encode_texts(["Vessel Sealer", "the area represented by the Vessel Sealer",
                                "suction"], groups)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96), state)
    assert out.shape == (2, 2, 64, 96)
    assert torch.isfinite(out).all()
    labels = labels_from_logits(out)
    assert labels.shape == (2, 64, 96) and labels.dtype == torch.uint8
    assert int(labels.max()) <= 2
    with pytest.raises(AssertionError, match="must divide by 32"):
        model(torch.randn(1, 3, 50, 96), state)


def test_prompt_state_computed_once_gives_what_recomputing_per_frame_gives():
    torch.manual_seed(0)
    model = build_tpsis("tpsis_xs").eval()
    texts = ["Bipolar Forceps", "the cutting tool", "stapler"]
    frames = torch.randn(3, 3, 64, 96)
    with torch.no_grad():
        state = model.encode_texts(texts)
        once = model(frames, state)
        per_frame = torch.cat([model(f[None], model.encode_texts(texts)) for f in frames])
        # A prompt's map does not depend on the other prompts in the list (eval relies on it).
        alone = model(frames, model.encode_texts(texts[1:2]))
    torch.testing.assert_close(once, per_frame, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(once[:, 1:2], alone, rtol=1e-4, atol=1e-4)


def test_mixing_head_weighs_within_a_group_and_passes_single_prompts_through():
    logits = torch.randn(2, 3, 8, 8) * 5
    score = torch.randn(2, 3, 8, 8)
    groups = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    out = mix(logits, score, groups)
    torch.testing.assert_close(out[:, 1], logits[:, 2])
    lo, hi = logits[:, :2].min(1).values, logits[:, :2].max(1).values
    assert bool(((out[:, 0] >= lo - 1e-5) & (out[:, 0] <= hi + 1e-5)).all())


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model = build_tpsis("tpsis_xs")
    rng = np.random.default_rng(0)
    texts, ids, groups = step_prompts(rng, 2, random_word_pool())
    group_ids = [ids[int(g.argmax())] for g in groups]
    images = torch.randn(2, 3, 64, 96)
    labels = torch.zeros(2, 64, 96, dtype=torch.int64)
    labels[0, 10:40, 20:50] = 3
    labels[1, 30:60, 40:90] = 6
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    losses = []
    for _ in range(8):
        state = model.encode_texts(texts, groups)
        logits, score = model.prompt_logits(*model.visual(images), state)
        loss = tpsis_loss(logits, mix(logits, score, state.groups), labels, ids, group_ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_train_command_writes_checkpoints_curves_and_resumes(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    base = dict(data=tiny_dataset, size=(128, 160), batch=2, workers=1, steps_per_epoch=2,
                negatives=2, out=out, init_unet=shipped("types"))
    train_tpsis(TPSISTrainConfig(epochs=1, **base))
    best = train_tpsis(TPSISTrainConfig(epochs=2, resume=True, **base))
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    for name in ("best.pt", "last.pt", "curves.png", "predictions.png"):
        assert (out / name).stat().st_size > 0
    loaded = tckpt.load(best)
    assert loaded.prompts["Other"][0] == "Other" and "mc_iou" in loaded.metrics
    published = tckpt.publish(best, tmp_path / "pub.pt")
    pub = tckpt.load(published)
    assert all(v.dtype == torch.float16 for v in pub.state_dict.values()
               if v.is_floating_point())
    assert "optimizer" not in pub.extra and "train_config" in pub.extra


def test_unet_and_tpsis_checkpoints_refuse_each_other(tmp_path):
    with pytest.raises(CheckpointError, match="not an orstream TP-SIS checkpoint"):
        tckpt.load(shipped("types"))
    assert tckpt.is_tpsis(tckpt.SHIPPED) and not tckpt.is_tpsis(shipped("types"))


def test_eval_of_the_shipped_weights_reports_the_types_metrics_and_prompt_checks(
        tiny_dataset):
    result = evaluate(tiny_dataset, tckpt.SHIPPED, videos=[1], batch=4)
    for key in ("ch_iou", "isi_iou", "mc_iou", "mean_iou", "per_class_iou"):
        assert key in result
    assert set(result["per_class_iou"]) <= set(NAMES)
    assert result["model"] == "tpsis_xs" and result["postprocess"] == "vote"
    para = result["paraphrase"]["sets"][0]
    assert para["prompts"]["Large Needle Driver"] == "needle holder"
    assert set(result["absent"]["prompts"]) == set(ABSENT)
    assert 0.0 <= result["absent"]["mean_coverage"] <= 1.0
    # Also read against the trained prompts only, and as the pipeline gives them by
    # default: read with the instrument vocabulary too ("needle holder" is one of its names).
    trained = result["paraphrase_read_trained"]["sets"][0]
    assert trained["given"]["Large Needle Driver"] == "needle driver"
    read = result["paraphrase_read"]["sets"][0]
    assert read["prompts"] == para["prompts"]
    assert read["given"]["Large Needle Driver"] == "Large Needle Driver"
    assert result["absent_read"]["prompts"]["suction"]["given"] == "suction"
    assert result["absent_read_trained"]["prompts"]["suction"]["given"] == "suction"
    assert result["vocabulary"].endswith("instruments.yaml")
    table = format_table(result)
    assert "Ch_IoU" in table and "the cutting tool" in table and "suction" in table
    assert "Large Needle Driver" in table and "read as" in table
    assert "trained prompts only" in table
    # The shipped weights find the instruments from their names on unseen synthetic frames
    # about as well as the types U-Net does on the same frames (held out: 2 points below).
    unet = evaluate(tiny_dataset, shipped("types"), videos=[1], batch=4)
    assert result["frames"] == unet["frames"]
    assert result["ch_iou"] > unet["ch_iou"] - 0.10, (result["ch_iou"], unet["ch_iou"])
    assert result["mc_iou"] > unet["mc_iou"] - 0.10, (result["mc_iou"], unet["mc_iou"])


def test_eval_takes_a_site_vocabulary_for_tpsis_weights_only(tiny_dataset, tmp_path, capsys):
    from orstream.pipeline import cli

    site = tmp_path / "site.yaml"
    site.write_text("names:\n  Large Needle Driver: [pelican]\n")
    assert cli.main(["eval", "--data", str(tiny_dataset), "--weights", str(shipped("types")),
                     "--vocabulary", str(site)]) == 2
    assert "--vocabulary is for TP-SIS weights" in capsys.readouterr().err
    result = evaluate(tiny_dataset, tckpt.SHIPPED, videos=[1], batch=4,
                      paraphrases={n: ("pelican",) if n == "Large Needle Driver" else (n,)
                                   for n in NAMES}, absent_prompts=("suction",),
                      vocabulary=site)
    assert result["vocabulary"].endswith(f"instruments.yaml + {site}")
    assert result["paraphrase_read"]["sets"][0]["given"]["Large Needle Driver"] == \
        "Large Needle Driver"
    assert result["paraphrase_read_trained"]["sets"][0]["given"]["Large Needle Driver"] == \
        "pelican"


def test_the_exported_graph_computes_the_models_own_convolution_and_upsampling():
    # ExportableTPSIS rewrites the dynamic convolution as a MatMul and shifted slices, and
    # the bilinear upsampling as two MatMuls, for speed: a wrong shift or weight would move
    # every mask by a pixel, which the 99.5 % engine parity could let through.
    from orstream.engines.deploy import ExportableTPSIS, bilinear_matrix
    from orstream.engines.tpsis import TPSIS

    torch.manual_seed(0)
    model = ExportableTPSIS(build_tpsis("tpsis_xs").cfg).eval()
    state = model.encode_texts(["scissors", "needle driver", "the retractor"])
    fine = torch.randn(2, model.cfg.unet.width, 24, 40)
    torch.testing.assert_close(model.fine_logits(fine, state),
                               TPSIS.fine_logits(model, fine, state), atol=1e-4, rtol=1e-4)
    for h, w, hh, ww in ((16, 20, 256, 320), (5, 7, 33, 50), (8, 10, 4, 5)):
        x = torch.randn(2, 3, h, w)
        torch.testing.assert_close(
            bilinear_matrix(h, hh) @ (x @ bilinear_matrix(w, ww).T),
            F.interpolate(x, size=(hh, ww), mode="bilinear", align_corners=False),
            atol=1e-5, rtol=1e-5)


def test_per_frame_part_exports_to_onnx_with_the_prompt_state_as_inputs(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from orstream.engines.backends.onnx_export import export_module
    from orstream.engines.tpsis import PerFrame

    torch.manual_seed(0)
    model = build_tpsis("tpsis_xs").eval()
    state = model.encode_texts(["Vessel Sealer", "suction"])
    image = torch.randn(1, 3, 64, 96)
    names = ["image", *state._fields]
    path = export_module(PerFrame(model), (image, *state), names, ["logits"],
                         tmp_path / "tpsis.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = dict(zip(names, (t.detach().numpy() for t in (image, *state)), strict=True))
    got = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]
    with torch.no_grad():
        want = model(image, state).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
