"""The vision-language model: image encoder, projector and text decoder as three modules.

The decoder reads one sequence: the visual tokens (class token + pooled patch tokens), then
`<bos> prompt <sep>`, then the answer it is trained to write, ending in `<eos>`. Captioning is
the prompt "describe the scene."; a question is its own prompt. Keeping the three parts as
separate modules is what lets the encoder run once per frame while the decoder runs once per
word, and lets an engine backend compile each on its own.

A small registry of named variants keeps configs and checkpoints short (`vlm_tiny`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from orstream.engines.vlm.decoder import Decoder, DecoderConfig
from orstream.engines.vlm.projector import Projector, ProjectorConfig
from orstream.engines.vlm.vit import ViT, ViTConfig

CAPTION_PROMPT = "describe the scene."  # the prompt that asks for the caption


@dataclass(frozen=True)
class VLMConfig:
    vit: ViTConfig
    projector: ProjectorConfig
    decoder: DecoderConfig

    def __post_init__(self) -> None:
        assert self.projector.in_dim == self.vit.dim, "projector in_dim must be the ViT's dim"
        assert self.projector.out_dim == self.decoder.dim, (
            "projector out_dim must be the decoder's dim")
        assert self.projector.grid == self.vit.grid, "projector grid must be the ViT's grid"

    @property
    def image_size(self) -> tuple[int, int]:
        return self.vit.image_size

    @property
    def visual_tokens(self) -> int:
        return self.projector.tokens

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> VLMConfig:
        vit = dict(data["vit"], image_size=tuple(data["vit"]["image_size"]))
        proj = dict(data["projector"], grid=tuple(data["projector"]["grid"]))
        return cls(ViTConfig(**vit), ProjectorConfig(**proj), DecoderConfig(**data["decoder"]))


def _config(image_size: tuple[int, int], patch: int, vit_dim: int, vit_depth: int,
            vit_heads: int, pool: int, dim: int, depth: int, heads: int,
            max_len: int = 96, stem: str = "conv") -> VLMConfig:
    vit = ViTConfig(image_size=image_size, patch=patch, dim=vit_dim, depth=vit_depth,
                    heads=vit_heads, stem=stem)
    return VLMConfig(vit, ProjectorConfig(vit_dim, dim, vit.grid, pool),
                     DecoderConfig(max_len=max_len, dim=dim, depth=depth, heads=heads))


# 128x160 is the EndoVis crop / 8: a shaft is 12-16 px wide and a tool tip ~20 px long there,
# enough for the colours and tip shapes that tell the seven types apart (the Prograsp and the
# Vessel Sealer differ in shaft, wrist and jaw shades, each tens of pixels across).
# vlm_tiny (1.8 M parameters) is the CPU default: a caption in tens of ms on two cores.
# vlm_s has 4x the decoder and 2x the encoder width, for machines with time to train it.
VARIANTS: dict[str, VLMConfig] = {
    "vlm_tiny": _config((128, 160), 16, 128, 4, 4, 2, 128, 4, 4),
    "vlm_s": _config((128, 160), 16, 192, 6, 6, 2, 256, 6, 8),
}


def model_config(name: str, vocab_size: int) -> VLMConfig:
    if name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(VARIANTS)}")
    cfg = VARIANTS[name]
    return replace(cfg, decoder=replace(cfg.decoder, vocab_size=vocab_size))


def build_model(name: str, vocab_size: int) -> VLM:
    return VLM(model_config(name, vocab_size))


def lm_loss(logits: torch.Tensor, tokens: torch.Tensor, loss_mask: torch.Tensor
            ) -> torch.Tensor:
    """Mean cross-entropy of predicting tokens[:, 1:] where loss_mask[:, 1:] is set.

    logits (S, T, V) from `VLM.forward`, tokens and loss_mask (S, T). The mask covers the
    answer and its <eos> only: the prompt is given, not learnt, and padding is never a
    target, so whatever the pad positions hold cannot change the loss.
    """
    target = tokens[:, 1:]
    mask = loss_mask[:, 1:].to(logits.dtype)
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), target,
                                reduction="none")  # (S, T-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


class VLM(nn.Module):
    """forward: images (B, 3, H, W) normalised, tokens (S, T) [, image_index (S,)]
    -> logits (S, T, vocab) at the text positions; logits[:, j] predicts tokens[:, j + 1].

    `image_index` says which image each sequence is about, so one encoder pass can serve
    several sequences (a caption and questions) about the same frame.
    """

    def __init__(self, cfg: VLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ViT(cfg.vit)
        self.projector = Projector(cfg.projector)
        self.decoder = Decoder(cfg.decoder)
        self.apply(self._init)
        # GPT-2: residual output projections scaled down by depth, so the residual stream's
        # variance does not grow with the number of blocks at initialisation.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") and ".blocks." in name:
                depth = cfg.vit.depth if name.startswith("encoder") else cfg.decoder.depth
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * depth))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def visual_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(images))  # (B, 3, H, W) -> (B, V, D)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor,
                image_index: torch.Tensor | None = None) -> torch.Tensor:
        visual = self.visual_tokens(images)
        if image_index is not None:
            visual = visual[image_index]  # (B, V, D) -> (S, V, D)
        assert visual.shape[0] == tokens.shape[0], (
            f"{visual.shape[0]} images for {tokens.shape[0]} sequences: pass image_index")
        x = torch.cat([visual, self.decoder.embed(tokens)], dim=1)  # (S, V + T, D)
        return self.decoder(x)[:, visual.shape[1]:]

    @torch.inference_mode()
    def generate(self, images: torch.Tensor, prompts: torch.Tensor, max_new_tokens: int,
                 eos_id: int, use_cache: bool = True, stop_at_eos: bool = True
                 ) -> torch.Tensor:
        """Greedy decoding. images (B, 3, H, W), prompts (B, P) `<bos> ... <sep>`, all the
        same length -> (B, N) generated ids, N <= max_new_tokens; a row that finished holds
        <eos> from there on. `use_cache=False` runs the whole sequence again for every token
        (the reference's way; kept as the baseline the cache is measured and tested against).
        `stop_at_eos=False` always writes max_new_tokens (fixed-length benchmarks)."""
        visual = self.visual_tokens(images)
        b, v = visual.shape[:2]
        room = self.cfg.decoder.max_len - v - prompts.shape[1] + 1
        if room < 1:  # a question asked over `orstream ask`: the asker's error, not a bug
            raise ValueError(f"the question is too long: its prompt of {prompts.shape[1]} tokens "
                             f"leaves no room for an answer; ask a shorter one")
        steps = min(max_new_tokens, room)
        cache = self.decoder.new_cache(b, visual.device, visual.dtype) if use_cache else None
        x = torch.cat([visual, self.decoder.embed(prompts)], dim=1)
        logits = self.decoder(x, cache)[:, -1]  # (B, vocab): prompt read, cache filled
        out = torch.empty(b, steps, dtype=torch.long, device=visual.device)
        done = torch.zeros(b, dtype=torch.bool, device=visual.device)
        for i in range(steps):
            nxt = logits.argmax(-1).masked_fill(done, eos_id)  # (B,)
            out[:, i] = nxt
            done |= nxt == eos_id
            if (stop_at_eos and bool(done.all())) or i == steps - 1:
                return out[:, :i + 1]
            if cache is not None:
                logits = self.decoder(self.decoder.embed(nxt[:, None]), cache)[:, -1]
            else:
                x = torch.cat([x, self.decoder.embed(nxt[:, None])], dim=1)
                logits = self.decoder(x)[:, -1]
        return out
