"""The VLM exported as an encoder graph and a static-shape decoder step: eager parity, the
generation loop, the engine cache. Engines go to the session's throwaway cache (conftest)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from orstream.engines.backends import BackendError
from orstream.engines.vlm import export as vlm_export
from orstream.engines.vlm.export import GRAPHS, PROMPT_LEN, export_vlm, kv_shape
from orstream.engines.vlm.exported import ExportedVLM
from orstream.engines.vlm.model import CAPTION_PROMPT
from orstream.engines.vlm.preprocess import prepare_image
from orstream.training.synth.generator import SynthConfig, SyntheticEndoscope

# The caption, two questions, and a prompt longer than the encoder graph reads (17 tokens).
PROMPTS = (CAPTION_PROMPT, "which instruments are visible?", "how many instruments?",
           "is there smoke? which instruments are visible? where is the needle driver?")


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """1080p synthetic frames of a seed no training used, 10 s apart: no instruments, then
    three each, the shipped model naming all seven types among them (captions of 11 to 30
    tokens)."""
    synth = SyntheticEndoscope(SynthConfig(seed=4242))
    return [synth.render(i).image for i in range(0, 30 * 60, 300)]


@pytest.fixture(scope="module", params=["onnxruntime", "openvino"])
def exported(request) -> ExportedVLM:
    return ExportedVLM.load(backend=request.param, threads=2)  # the shipped vlm_tiny.pt


def _eager_tokens(vlm: ExportedVLM, frame: np.ndarray, prompt: str, max_new: int) -> list[int]:
    ids = torch.tensor([vlm.tokenizer.prompt(prompt)], dtype=torch.long)
    out = vlm.model.generate(vlm.image_tensor(frame), ids, max_new, vlm.tokenizer.eos_id)
    return out[0].tolist()


def _small(vlm: ExportedVLM, frame: np.ndarray) -> np.ndarray:
    return prepare_image(frame, vlm.input_size)[None]  # (1, H, W, 3) uint8, the encoder's input


def test_encoder_and_steps_give_the_eager_logits_and_cache(exported, frames):
    model, tok = exported.model, exported.tokenizer
    frame, ids = frames[1], tok.prompt(CAPTION_PROMPT)
    prompt = np.full((1, PROMPT_LEN), tok.pad_id, np.int64)
    prompt[0, :len(ids)] = ids
    visual, logits, k, v = exported.graphs.encode(_small(exported, frame), prompt)
    with torch.inference_mode():
        eager_visual = model.visual_tokens(exported.image_tensor(frame))
        cache = model.decoder.new_cache(1)
        x = torch.cat([eager_visual, model.decoder.embed(torch.tensor([ids]))], 1)
        eager = model.decoder(x, cache)[0, eager_visual.shape[1]:]  # (P, vocab)
    assert k.shape == v.shape == kv_shape(exported.checkpoint.config)
    assert logits.shape == (PROMPT_LEN, len(tok))
    np.testing.assert_allclose(visual, eager_visual.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(logits[:len(ids)], eager.numpy(), atol=1e-4, rtol=1e-4)
    filled = cache.length  # slots past it hold what the padding wrote: never attended to
    np.testing.assert_allclose(k[:, :, :, :filled], cache.k[:, :, :, :filled].numpy(),
                               atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(v[:, :, :, :filled], cache.v[:, :, :, :filled].numpy(),
                               atol=1e-4, rtol=1e-4)
    # Twelve tokens of our choosing, one step each, over the padding's slots and past them:
    # every step's logits and the cache it returns match the eager decoder's.
    for position, token in enumerate(range(5, 17), filled):
        logits, k, v = exported.graphs.step(token, position, k, v)
        with torch.inference_mode():
            eager = model.decoder(model.decoder.embed(torch.tensor([[token]])), cache)[0, -1]
        np.testing.assert_allclose(logits, eager.numpy(), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(k[:, :, :, :position + 1],
                                   cache.k[:, :, :, :position + 1].numpy(), atol=1e-4,
                                   rtol=1e-4)
    assert cache.length == filled + 12 > visual.shape[1] + PROMPT_LEN


def test_generation_loop_gives_the_eager_tokens(exported, frames):
    """Token for token what eager greedy decoding with the KV cache writes, shipped weights."""
    for frame in frames:
        for prompt in PROMPTS:
            eager = _eager_tokens(exported, frame, prompt, exported.max_new_tokens)
            assert exported.tokens(frame, prompt) == eager, prompt
    assert exported.caption(frames[1]) == exported.tokenizer.decode(
        _eager_tokens(exported, frames[1], CAPTION_PROMPT, exported.max_new_tokens))
    assert exported.answer(frames[1], "is there smoke?") in ("yes", "no")


def test_a_cache_hit_does_not_rebuild(exported, frames, monkeypatch):
    def refuse(*args):
        raise AssertionError("a cached engine was built again")

    monkeypatch.setitem(vlm_export._BUILDERS, exported.backend, refuse)
    again = ExportedVLM.load(backend=exported.backend, threads=1, max_new_tokens=3)
    assert set(again.entries) == set(GRAPHS)
    for graph, entry in again.entries.items():
        assert not entry.built_now
        assert entry.folder == exported.entries[graph].folder
        assert entry.meta["built_at"] == exported.entries[graph].meta["built_at"]
    # The loop's length limit is the eager one's.
    assert again.tokens(frames[1], CAPTION_PROMPT) == _eager_tokens(again, frames[1],
                                                                     CAPTION_PROMPT, 3)


def test_refuses_what_it_cannot_build():
    with pytest.raises(BackendError, match="int8"):
        export_vlm(backend="onnxruntime", precision="int8")
    with pytest.raises(BackendError, match="not 'torch'"):
        export_vlm(backend="torch")
    with pytest.raises(BackendError, match="cuda only"):
        export_vlm(backend="tensorrt", device="cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tensorrt_static_step_gives_the_eager_tokens(frames):
    pytest.importorskip("torch_tensorrt")
    fp32 = ExportedVLM.load(backend="tensorrt", precision="fp32", device="cuda")
    for frame in frames:
        for prompt in PROMPTS:
            assert fp32.tokens(frame, prompt) == _eager_tokens(fp32, frame, prompt,
                                                               fp32.max_new_tokens), prompt
    # fp16: the first logits within half-precision rounding of the eager fp32 ones.
    fp16 = ExportedVLM.load(backend="tensorrt", precision="fp16", device="cuda")
    ids = fp16.tokenizer.prompt(CAPTION_PROMPT)
    prompt = np.full((1, PROMPT_LEN), fp16.tokenizer.pad_id, np.int64)
    prompt[0, :len(ids)] = ids
    _, logits, _, _ = fp16.graphs.encode(_small(fp16, frames[1]), prompt)
    with torch.inference_mode():
        model = fp16.model
        visual = model.visual_tokens(fp16.image_tensor(frames[1]))
        x = torch.cat([visual, model.decoder.embed(torch.tensor([ids]))], dim=1)
        eager = model.decoder(x)[0, -1]
    np.testing.assert_allclose(logits[len(ids) - 1], eager.numpy(), atol=0.1, rtol=0.05)
    assert int(np.argmax(logits[len(ids) - 1])) == int(eager.argmax())
