"""TP-SIS in the live pipeline: config, engines on every CPU backend, the segment stage, the
legend, and prompts changed while it runs (issue 20).

Every test takes the TP-SIS weights from the `tpsis_weights` fixture: $ORSTREAM_TEST_TPSIS
when set, else the shipped engines/weights/tpsis_xs.pt once it exists, else a checkpoint
made here from the shipped types U-Net's weights (visual encoder) and seeded prompting
layers. None of these tests needs trained behaviour: engine parity, the cache, prompt
changes and the legend hold for any TP-SIS checkpoint.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq

from orstream.common.classes import CLASSES, PROMPTS_TASK, prompt_table
from orstream.common.crop import endovis_region
from orstream.common.net import free_port
from orstream.engines import tpsis_checkpoint as tckpt
from orstream.engines.backends import BackendError
from orstream.engines.checkpoint import shipped
from orstream.engines.export import EngineSpec, open_engine
from orstream.engines.preprocess import resize_image
from orstream.engines.registry import build_tpsis, tpsis_config
from orstream.engines.tpsis_engine import (
    DEFAULT_PROMPTS,
    ENGINE_GRAPH,
    MAX_PROMPTS,
    PromptEncoder,
    PromptError,
)
from orstream.engines.tpsis_prompts import TRAIN_PROMPTS
from orstream.engines.tpsis_reading import PromptReader
from orstream.engines.tpsis_vocabulary import (
    SHIPPED_VOCABULARY,
    VocabularyError,
    load_vocabulary,
    vocabulary_for,
)
from orstream.pipeline import cli, masks, wire
from orstream.pipeline import config as config_module
from orstream.pipeline.config import ConfigError, load_config
from orstream.pipeline.frame import Frame
from orstream.pipeline.prompting import set_prompts
from orstream.pipeline.runner import Pipeline
from orstream.pipeline.stages import RenderStage, SegmentStage
from orstream.training.synth.generator import SynthConfig, SyntheticEndoscope
from orstream.training.tpsis_trainer import _init_visual

SIZE = (256, 320)
NEW = ["scissors", "needle holder"]


@pytest.fixture(scope="module")
def tpsis_weights(tmp_path_factory) -> Path:
    """A real TP-SIS checkpoint (see the module docstring for which)."""
    given = os.environ.get("ORSTREAM_TEST_TPSIS")
    if given:
        return Path(given)
    if tckpt.SHIPPED.is_file():
        return tckpt.SHIPPED
    torch.manual_seed(0)
    model = build_tpsis("tpsis_xs")
    _init_visual(model, shipped("types"))
    checkpoint = tckpt.TPSISCheckpoint(
        "tpsis_xs", tpsis_config("tpsis_xs"), CLASSES["types"],
        {k: list(v) for k, v in TRAIN_PROMPTS.items()}, SIZE, model.state_dict())
    return tckpt.save(checkpoint, tmp_path_factory.mktemp("tpsis") / "tpsis_dev.pt")


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """12 synthetic frames through the live path's crop and resize: (12, 256, 320, 3)."""
    synth = SyntheticEndoscope(SynthConfig(seed=4243))
    y, x, h, w = endovis_region(1080, 1920)
    return np.stack([resize_image(synth.render(i * 11).image[y:y + h, x:x + w], SIZE)
                     for i in range(12)])


def _cfg(weights: Path, backend: str = "torch", *sets: str, **direct):
    return load_config(None, ["segment.model=tpsis", f"segment.weights={weights}",
                              f"segment.backend={backend}", "segment.precision=fp32",
                              "source.width=640", "source.height=360",
                              "describe.enabled=false", *sets],
                       publish__endpoint=None, **direct)


# ----------------------------------------------------------------------------- config


def test_config_defaults_and_errors_name_the_key(tpsis_weights, monkeypatch):
    monkeypatch.setitem(config_module.SHIPPED_WEIGHTS, "tpsis", tpsis_weights)
    cfg = load_config(None, ["segment.model=tpsis"])
    assert cfg.segment.weights == tpsis_weights.resolve()
    assert cfg.segment.prompts == DEFAULT_PROMPTS
    assert load_config(None).segment.weights.name == "unet_xs_types.pt"  # unet unchanged
    cfg = load_config(None, ["segment.model=tpsis", "segment.prompts=[' Needle   holder ']"])
    assert cfg.segment.prompts == ("Needle holder",)
    for bad, why in [(f"segment.prompts={json.dumps(['x'] * (MAX_PROMPTS + 1))}",
                      "17 prompts: give 1 to 16"),
                     ("segment.prompts=['scissors', '  ']", "prompt 2 is empty"),
                     (f"segment.prompts=[{'a' * 101}]", "101 characters long"),
                     ("segment.prompts=[]", "0 prompts")]:
        with pytest.raises(ConfigError, match=rf"segment\.prompts: .*{why}"):
            load_config(None, ["segment.model=tpsis", bad])
    with pytest.raises(ConfigError, match=r"segment\.prompts: prompts are for segment\.model "
                                          r"tpsis, and segment\.model is unet"):
        load_config(None, ["segment.prompts=[scissors]"])
    with pytest.raises(ConfigError, match=r"segment\.model: "):
        load_config(None, ["segment.model=clip"])


def test_a_weights_file_of_the_other_model_names_weights_and_model(tpsis_weights):
    cfg = load_config(None, ["segment.model=tpsis", f"segment.weights={shipped('types')}"])
    with pytest.raises(ConfigError, match=r"segment\.weights: .*unet_xs_types\.pt is a U-Net "
                                          r"checkpoint but segment\.model is tpsis"):
        SegmentStage(cfg)
    cfg = load_config(None, [f"segment.weights={tpsis_weights}"])
    with pytest.raises(ConfigError, match=r"segment\.weights: .* is a TP-SIS checkpoint but "
                                          r"segment\.model is unet"):
        SegmentStage(cfg)


# ----------------------------------------------------------------------------- engines


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_engines_segment_like_eager_torch_for_any_prompts_and_are_cached(
        tpsis_weights, frames, backend):
    encoder = PromptEncoder(tckpt.load(tpsis_weights))
    reference = open_engine(EngineSpec(tpsis_weights, "torch", "fp32"))
    # The session's engine cache: the pipeline tests below find these engines there.
    spec = EngineSpec(tpsis_weights, backend, "fp32")
    engine = open_engine(spec)
    # One engine, prompt lists of several lengths (the exported example had three).
    for prompts in (list(DEFAULT_PROMPTS), ["the cutting tool"],
                    ["Vessel Sealer", "Prograsp Forceps", "Other", "suction", "needle holder"]):
        inputs = encoder(prompts).arrays
        want = np.stack([reference(f, inputs) for f in frames])
        # As opened, then prepared for this prompt state as the segment stage prepares it
        # (OpenVINO: a model compiled for this prompt count runs the frames)
        unprepared = np.stack([engine(f, inputs) for f in frames])
        engine.prepare(inputs)
        for got in (unprepared, np.stack([engine(f, inputs) for f in frames])):
            assert got.dtype == np.uint8 and got.shape == want.shape
            assert int(got.max()) <= len(prompts)
            agreement = float((got == want).mean())
            assert agreement >= 0.995, f"{backend} {prompts}: pixel agreement {agreement:.4f}"
    if backend == "openvino":  # three prompt counts, each compiled once
        assert len(engine._fixed) == 3
    again = open_engine(spec)
    assert again.origin.entry is not None and not again.origin.entry.built_now
    assert again.origin.entry.folder == engine.origin.entry.folder
    assert again.origin.entry.meta["key"]["extra"]["graph"] == ENGINE_GRAPH


def test_backends_without_tpsis_and_int8_are_refused_clearly(tpsis_weights, tmp_path):
    with pytest.raises(BackendError, match="TP-SIS runs on the torch, onnxruntime, openvino"):
        open_engine(EngineSpec(tpsis_weights, "compile", "fp32", cache=tmp_path))
    with pytest.raises(BackendError, match="TP-SIS has no calibrated INT8 engines"):
        open_engine(EngineSpec(tpsis_weights, "onnxruntime", "int8", cache=tmp_path))


def test_bad_prompts_are_refused_before_encoding(tpsis_weights):
    encoder = PromptEncoder(tckpt.load(tpsis_weights))
    for bad in ([], [""], ["x"] * 17, ["a" * 101], "scissors", [3], ["bell\x07"],
                [" ".join("abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrst")]):
        with pytest.raises(PromptError):
            encoder(bad)


def test_a_prompt_never_trained_on_is_given_to_the_model_as_the_trained_prompt_it_means():
    checkpoint = tckpt.load(tckpt.SHIPPED)
    reader = PromptReader(checkpoint.prompts)
    same = reader.read("large needle driver")  # a trained prompt, typed another way
    assert not same.reread and same.class_name == "Large Needle Driver"
    holder = reader.read("needle holder")  # held out; shares only "needle" with training
    assert holder.reread and holder.class_name == "Large Needle Driver"
    assert holder.text in checkpoint.prompts["Large Needle Driver"]
    for text in ("suction", "the liver"):  # absent; near a trained empty-target prompt
        nothing = reader.read(text)
        assert not nothing.reread and nothing.class_name is None, nothing
    # The model gets exactly the trained prompt's state; with reading off, the typed text.
    encoder, literal = PromptEncoder(checkpoint), PromptEncoder(checkpoint, read=False)
    read = encoder(["needle holder", "suction"])
    assert read.prompts == ("needle holder", "suction")  # the legend shows what was typed
    assert [r["prompt"] for r in read.reread()] == ["needle holder"]
    # (the pipeline's reader also has the vocabulary, which names "needle holder" itself)
    assert encoder.reader.read("needle holder").text == "Large Needle Driver"
    given = literal(["Large Needle Driver", "suction"]).arrays
    typed = literal(["needle holder", "suction"]).arrays
    assert literal(["needle holder"]).reread() == []
    for name, array in read.arrays.items():
        np.testing.assert_allclose(array, given[name], atol=1e-6, err_msg=name)
    assert not np.allclose(read.arrays["coarse_kernel"], typed["coarse_kernel"])


def test_the_vocabulary_reads_names_word_embeddings_cannot_and_a_site_can_add_its_own(
        tmp_path):
    checkpoint = tckpt.load(tckpt.SHIPPED)
    # The shipped file names exactly the shipped checkpoint's classes
    load_vocabulary(SHIPPED_VOCABULARY).for_classes(checkpoint.prompts, strict=True)
    plain = PromptReader(checkpoint.prompts)
    reader = PromptReader(checkpoint.prompts, vocabulary=vocabulary_for(checkpoint.prompts))
    # A brand: unknown to the encoder, so without the vocabulary the model got it as typed
    assert plain.read("ligasure").class_name is None
    sealer = reader.read("LigaSure")
    assert (sealer.class_name, sealer.text, sealer.nearest) == ("Vessel Sealer",
                                                                "Vessel Sealer", "ligasure")
    # Not a needle driver although it shares "needle" with one: read as itself
    assert plain.read("veress needle").class_name == "Large Needle Driver"
    veress = reader.read("veress needle")
    assert veress.class_name is None and not veress.reread
    # Trained prompts still read as themselves
    assert not reader.read("monopolar curved scissors").reread
    # A site's own name, in a file of the shipped layout (segment.vocabulary)
    site = tmp_path / "site.yaml"
    site.write_text("names:\n  Large Needle Driver: [pelican]\nnot_segmented: [kittner]\n")
    assert plain.read("pelican").class_name is None
    encoder = PromptEncoder(checkpoint, vocabulary=site)
    reread = encoder(["pelican", "scissors"]).reread()
    assert [(r["prompt"], r["read_as"], r["nearest"]) for r in reread] == [
        ("pelican", "Large Needle Driver", "pelican")]
    cfg = load_config(None, ["segment.model=tpsis", f"segment.vocabulary={site}"])
    assert cfg.segment.vocabulary == site.resolve()


@pytest.mark.parametrize("text, why", [
    ("names:\n  Vessel Sealr: [pelican]\n", r"names\.Vessel Sealr is not a class of the "
                                             r"TP-SIS checkpoint \(did you mean 'Vessel "
                                             r"Sealer'\?\); its classes are Bipolar"),
    ("names: [a, b]\n", r"names: expected class name -> list of names"),
    ("names:\n  Vessel Sealer: sealer\n", r"names\.Vessel Sealer: expected a list"),
    ("name:\n  Vessel Sealer: [x]\n", r"unknown key 'name' \(the keys are names and "
                                       r"not_segmented\)"),
    ("names:\n  Vessel Sealer: [zap]\n  Other: [Zap]\n", r"'zap' is a name of both"),
    ("names:\n  Other: [zap]\nnot_segmented: [zap]\n", r"'zap' is both a name of 'Other'"),
    ("names:\n  Other: [zap\n", r"line \d+: not valid YAML"),
])
def test_a_bad_vocabulary_file_is_refused_naming_the_file_and_the_key(tmp_path, text, why):
    site = tmp_path / "site.yaml"
    site.write_text(text)
    checkpoint = tckpt.load(tckpt.SHIPPED)
    with pytest.raises(VocabularyError, match=rf"vocabulary {site}.*{why}"):
        PromptEncoder(checkpoint, vocabulary=site)


def test_segment_vocabulary_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"segment\.vocabulary: .*no file .*missing\.yaml"):
        load_config(None, ["segment.model=tpsis", f"segment.vocabulary={tmp_path}/missing.yaml"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("names: [a]\n")
    with pytest.raises(ConfigError, match=r"segment\.vocabulary: .*broken\.yaml: names: "):
        load_config(None, ["segment.model=tpsis", f"segment.vocabulary={broken}"])
    with pytest.raises(ConfigError, match=r"segment\.vocabulary: a vocabulary is for "
                                          r"segment\.model tpsis"):
        load_config(None, [f"segment.vocabulary={broken}"])


# ----------------------------------------------------------------------------- pipeline


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_pipeline_segments_prompts_on_each_cpu_backend(tpsis_weights, backend):
    seen: list[Frame] = []
    cfg = _cfg(tpsis_weights, backend, "segment.prompts=[Large Needle Driver, scissors]")
    result = Pipeline(cfg, max_frames=4, keep_traces=True, on_frame=seen.append).run()
    assert result.frames_out == 4
    assert all([s for s, *_ in t][:2] == ["capture", "segment"] for t in result.traces)
    want = prompt_table(["Large Needle Driver", "scissors"])
    for frame in seen:
        assert frame.classes == want and frame.labels.dtype == np.uint8
        assert int(frame.labels.max()) <= 2


def _run_until(pipeline: Pipeline, frames: list[Frame], count: int, timeout_s: float = 90):
    deadline = time.monotonic() + timeout_s
    while len(frames) < count:
        assert time.monotonic() < deadline, f"only {len(frames)} frames in {timeout_s} s"
        assert pipeline.executor is None or not pipeline.executor.errors, \
            pipeline.executor.errors
        time.sleep(0.05)


def test_prompts_change_while_running_within_two_frames(tpsis_weights, capsys):
    ask = f"tcp://127.0.0.1:{free_port()}"
    seen: list[Frame] = []
    pipeline = Pipeline(_cfg(tpsis_weights, "torch", describe__ask_endpoint=ask),
                        on_frame=seen.append)
    runner = threading.Thread(target=pipeline.run)
    runner.start()
    try:
        _run_until(pipeline, seen, 2)
        assert seen[-1].classes["names"] == ["background", *DEFAULT_PROMPTS]

        # Through the command line, which calls pipeline.prompting.set_prompts.
        assert cli.main(["prompt", ask, *NEW, "--json"]) == 0
        reply = json.loads(capsys.readouterr().out)
        after = len(seen)
        assert reply["prompts"] == NEW and type(reply["seq"]) is int
        # "needle holder" was never trained on: the reply says how the model was given it.
        read = {r["prompt"]: r for r in reply["read_as"]}
        assert read["needle holder"]["class"] == "Large Needle Driver", reply
        _run_until(pipeline, seen, after + 4)
        late = [f for f in seen[after:] if f.classes["names"] != ["background", *NEW]]
        assert len(late) <= 2, f"old prompts on {len(late)} frames after the reply"
        assert all(f.seq < reply["seq"] for f in late)
        for frame in seen:
            if frame.seq >= reply["seq"]:
                assert frame.classes == prompt_table(NEW)
                assert int(frame.labels.max()) <= len(NEW)
        # The legend draws the new prompts' texts.
        render = pipeline.executor.nodes["render"].stage
        assert render.renderer.class_names == ("background", *NEW)

        # Bad prompts: an error reply, and the running prompts stay.
        with zmq.Context.instance().socket(zmq.REQ) as req:
            req.setsockopt(zmq.LINGER, 0)
            req.setsockopt(zmq.RCVTIMEO, 5000)
            req.connect(ask)
            for bad in ([""], ["x"] * 17, ["a" * 101], "scissors", None):
                req.send(json.dumps({"prompts": bad}).encode())
                answer = json.loads(req.recv())
                assert "prompts refused, the running ones stay" in answer["error"], answer
        with pytest.raises(PromptError, match="17 prompts"):
            set_prompts(ask, ["x"] * 17)  # refused before it is sent
        assert cli.main(["prompt", ask, " "]) == 2
        # Without --json the command says how a prompt never trained on was read.
        capsys.readouterr()
        assert cli.main(["prompt", ask, *NEW]) == 0
        out = capsys.readouterr().out
        assert "segmenting 'scissors', 'needle holder'" in out and \
            "'needle holder' read as" in out, out
        count = len(seen)
        _run_until(pipeline, seen, count + 2)
        assert all(f.classes == prompt_table(NEW) for f in seen[count:])
    finally:
        pipeline.request_stop()
        runner.join(30)
    assert not runner.is_alive()


def test_a_unet_pipeline_refuses_prompt_requests_clearly():
    ask = f"tcp://127.0.0.1:{free_port()}"
    cfg = load_config(None, ["source.width=640", "source.height=360", "segment.backend=torch"],
                      publish__endpoint=None, describe__ask_endpoint=ask)
    pipeline = Pipeline(cfg)
    runner = threading.Thread(target=pipeline.run)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while pipeline.executor is None or not pipeline.executor.ready.is_set():
            assert time.monotonic() < deadline, "the pipeline did not start"
            time.sleep(0.05)
        reply = set_prompts(ask, ["scissors"])
        assert "segment.model is unet" in reply["error"]
    finally:
        pipeline.request_stop()
        runner.join(30)
    assert not runner.is_alive()


# ----------------------------------------------------------------------------- legend, wire


def test_the_legend_lists_each_prompt_text_in_its_colour(tpsis_weights):
    cfg = _cfg(tpsis_weights)
    render = RenderStage(cfg, PROMPTS_TASK, lambda: 0)
    render.open()
    prompts = ["scissors", "the needle holder", "Bipolar Forceps"]
    labels = np.zeros((64, 80), np.uint8)
    for i in range(len(prompts)):
        labels[10 + 15 * i:20 + 15 * i, 10:30] = i + 1
    frame = Frame.capture("or-1", 0, np.zeros((360, 640, 3), np.uint8))
    frame.labels, frame.region = labels, (0, 0, 360, 640)
    frame.classes = prompt_table(prompts)
    render.process(frame)
    assert render.renderer.last_legend == prompts
    colors = prompt_table(prompts)["colors"]
    assert len({tuple(c) for c in colors}) == len(colors)
    # Drawn in its colour: the middle of prompt 2's block (label 2: rows 25-34, columns 10-29)
    # is that colour blended over the black picture.
    y, x = int(30 * 360 / 64), int(20 * 640 / 80)
    alpha = cfg.render.alpha
    np.testing.assert_allclose(frame.overlay[y, x], np.array(colors[2]) * alpha, atol=2)


def _as_bytes(message: list) -> list[bytes]:
    """An encoded message as a socket delivers it (wire.encode hands over the arrays)."""
    return [p if isinstance(p, bytes) else p.tobytes() for p in message]


def test_prompt_tables_cross_the_frame_and_mask_streams():
    frame = Frame.capture("or-1", 3, np.zeros((36, 64, 3), np.uint8))
    frame.labels = np.array([[0, 1], [2, 0]], np.uint8)
    frame.classes = prompt_table(NEW)
    got = wire.decode(_as_bytes(wire.encode(frame, ("labels",), {"task": "types"})))
    assert got.classes == prompt_table(NEW)
    message = masks.decode(masks.encode(frame, None))
    assert message.classes == prompt_table(NEW)
    bad = _as_bytes(wire.encode(frame, ("labels",)))
    header = json.loads(bad[1])
    header["classes"]["colors"] = header["classes"]["colors"][:1]
    with pytest.raises(wire.WireError, match="bad_header"):
        wire.decode([bad[0], json.dumps(header).encode(), *bad[2:]])
