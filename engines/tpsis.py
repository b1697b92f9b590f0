"""TP-SIS: text-promptable surgical instrument segmentation, leaves first.

Zhou et al., "Text Promptable Surgical Instrument Segmentation with Vision-Language Models"
(NeurIPS 2023), rebuilt small for two CPU cores and for text encoders that ship offline:

- visual encoder: a U-Net without its head (engines/unet.py's blocks, the shape of the shipped
  types U-Net, whose weights start training); it gives full-resolution features and, from its
  decoder, stride-16 tokens;
- text: WordLlama word features (T, 256) and their pooled sentence feature (engines/
  text_encoder.py) in place of CLIP's;
- attention prompting: a small transformer decoder in which the image tokens attend to the
  prompt's word tokens (plus its sentence token and a learned "nothing" token);
- convolution prompting: the sentence feature becomes dynamic kernels over the fused map
  (full-resolution features + the upsampled prompted tokens);
- a mixing head: the masks of several prompts of one class mixed by per-pixel weights.

The model is split where a prompt stops mattering: `encode_prompts` turns the prompts into a
`PromptState` (word keys and values of every decoder layer, dynamic kernels) once per prompt,
and `forward(image, state)` reuses it for every frame.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from orstream.engines.tpsis_config import TPSISConfig
from orstream.engines.unet import DoubleConv, Up

__all__ = ["THRESHOLD", "PerFrame", "PromptState", "TPSIS", "TPSISConfig", "labels_from_logits"]

THRESHOLD = 0.35  # probability above which a pixel belongs to a prompt, as in the paper
MIX_SCORE_BOUND = 10.0  # mixing scores live in [-10, 10]: exp() never under/overflows


class PromptState(NamedTuple):
    """Everything frame-independent about a list of P prompts in G groups (one class each).

    keys, values: (L, P, heads, T + 2, head_dim) word keys/values of each decoder layer
    key_bias: (P, T + 2) 0 for a token, -inf for padding
    fine_kernel: (P, C0, k, k) dynamic conv over the full-resolution features
    coarse_kernel: (P, dim) dynamic 1x1 conv over the prompted tokens
    bias: (P,)
    groups: (G, P) 1.0 where prompt p belongs to group g; every prompt in exactly one group
    """

    keys: torch.Tensor
    values: torch.Tensor
    key_bias: torch.Tensor
    fine_kernel: torch.Tensor
    coarse_kernel: torch.Tensor
    bias: torch.Tensor
    groups: torch.Tensor


class VisualEncoder(nn.Module):
    """The U-Net's encoder and decoder (same module names, so a U-Net's weights load into it),
    returning two levels of the decoder instead of the head's logits."""

    def __init__(self, cfg: TPSISConfig) -> None:
        super().__init__()
        u = cfg.unet
        self.cfg = cfg
        widths = [u.width * 2**i for i in range(u.depth + 1)]
        self.stem = DoubleConv(u.in_channels, widths[0])
        self.down = nn.ModuleList(DoubleConv(widths[i], widths[i + 1]) for i in range(u.depth))
        self.up = nn.ModuleList(Up(widths[i + 1], widths[i], widths[i], u.attention)
                                for i in reversed(range(u.depth)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        m = self.cfg.multiple
        assert h % m == 0 and w % m == 0, f"TP-SIS input {h}x{w} must divide by {m}"
        skips = [self.stem(x)]  # (B, w0, H, W)
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2)))
        x = skips.pop()  # (B, w0 * 2**depth, H / 2**depth, W / 2**depth)
        coarse = x
        for i, block in enumerate(self.up):
            x = block(x, skips.pop())
            if i + 1 == self.cfg.attn_level:
                coarse = x  # (B, token_channels, H / token_stride, W / token_stride)
        return x, coarse  # (B, w0, H, W), (B, Ct, H/s, W/s)


class CrossAttentionBlock(nn.Module):
    """Image tokens attend to a prompt's word tokens, then an MLP. No self-attention among the
    image tokens: each already sees the whole frame through the U-Net, and self-attention would
    cost N^2 per prompt per frame."""

    def __init__(self, cfg: TPSISConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.heads = cfg.heads
        self.norm_q = nn.LayerNorm(d)
        self.norm_kv = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(d, d)
        self.norm_mlp = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(),
                                 nn.Linear(cfg.mlp_ratio * d, d))

    def keys_values(self, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (P, T, D) -> keys, values (P, heads, T, D / heads): per prompt, not per frame
        p, t, d = words.shape
        k, v = self.kv(self.norm_kv(words)).split(d, dim=-1)
        return (k.view(p, t, self.heads, -1).transpose(1, 2),
                v.view(p, t, self.heads, -1).transpose(1, 2))

    def forward(self, z: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                key_bias: torch.Tensor) -> torch.Tensor:
        b, p, n, d = z.shape  # (B, P, N, D): every image token, once per prompt
        q = self.q(self.norm_q(z)).view(b, p, n, self.heads, -1).transpose(2, 3)
        # (B, P, h, N, hd) @ (P, h, hd, T) -> (B, P, h, N, T)
        att = q @ keys.transpose(-1, -2) * q.shape[-1] ** -0.5
        att = (att + key_bias[:, None, None, :]).softmax(dim=-1)
        out = (att @ values).transpose(2, 3).reshape(b, p, n, d)  # (B, P, N, D)
        z = z + self.proj(out)
        return z + self.mlp(self.norm_mlp(z))


class TPSIS(nn.Module):
    """encode_prompts: (words (P, T, 256), mask (P, T), sentence (P, 256), groups (G, P))
    -> PromptState. forward: (image (B, 3, H, W) normalised, PromptState) -> (B, G, H, W)
    logits, one map per group, always."""

    def __init__(self, cfg: TPSISConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, c0 = cfg.dim, cfg.unet.width
        self.visual = VisualEncoder(cfg)
        self.image_proj = nn.Conv2d(cfg.token_channels, d, 1)
        self.word_proj = nn.Linear(cfg.text_dim, d)
        self.sentence_proj = nn.Linear(cfg.text_dim, d)
        # Attended to when no word of the prompt matches a token: lets text that names
        # nothing in view leave the image tokens alone.
        self.null_token = nn.Parameter(torch.zeros(1, 1, d))
        self.blocks = nn.ModuleList(CrossAttentionBlock(cfg) for _ in range(cfg.layers))
        self.norm_out = nn.LayerNorm(d)
        # Convolution prompting: sentence -> a k x k kernel over the C0 fine channels, a 1x1
        # kernel over the D prompted-token channels, and a bias.
        self.n_fine = c0 * cfg.kernel**2
        self.kernel_gen = nn.Sequential(nn.Linear(cfg.text_dim, 256), nn.GELU(),
                                        nn.Linear(256, self.n_fine + d + 1))
        self.mix_score = nn.Linear(d, 1)  # mixing head: how much to trust each prompt, where

    def encode_prompts(self, words: torch.Tensor, mask: torch.Tensor, sentence: torch.Tensor,
                       groups: torch.Tensor) -> PromptState:
        p = words.shape[0]
        assert groups.shape[1] == p, f"groups {tuple(groups.shape)} must be (G, {p})"
        tokens = torch.cat([self.null_token.expand(p, 1, -1),
                            self.sentence_proj(sentence)[:, None],
                            self.word_proj(words)], dim=1)  # (P, T + 2, D)
        valid = torch.cat([torch.ones(p, 2, dtype=torch.bool, device=mask.device), mask], 1)
        key_bias = torch.zeros(valid.shape, device=words.device).masked_fill(~valid, -torch.inf)
        kv = [blk.keys_values(tokens) for blk in self.blocks]
        keys = torch.stack([k for k, _ in kv])  # (L, P, h, T + 2, hd)
        values = torch.stack([v for _, v in kv])
        gen = self.kernel_gen(sentence)  # (P, C0 k^2 + D + 1)
        k = self.cfg.kernel
        fine = gen[:, :self.n_fine].reshape(p, self.cfg.unet.width, k, k)
        coarse = gen[:, self.n_fine:-1]  # (P, D)
        return PromptState(keys, values, key_bias, fine, coarse, gen[:, -1],
                           groups.to(words.dtype))

    def encode_texts(self, texts: list[str] | tuple[str, ...],
                     groups: torch.Tensor | None = None) -> PromptState:
        """Prompts as text -> PromptState (each prompt its own group unless `groups`)."""
        from orstream.engines.text_encoder import default_encoder

        words, mask, sentence = default_encoder().batch(texts)
        device = self.null_token.device
        return self.encode_prompts(torch.from_numpy(words).to(device),
                                   torch.from_numpy(mask).to(device),
                                   torch.from_numpy(sentence).to(device),
                                   (singleton_groups(len(texts)) if groups is None
                                    else groups).to(device))

    def prompt_tokens(self, coarse: torch.Tensor, state: PromptState) -> torch.Tensor:
        """Attention prompting: the image tokens after the decoder, once per prompt,
        (B, Ct, h, w) -> (B, P, N = h * w, D)."""
        b = coarse.shape[0]
        tok = self.image_proj(coarse)  # (B, D, h, w)
        h, w = tok.shape[-2:]
        z = tok.flatten(2).transpose(1, 2)  # (B, N, D)
        p = state.bias.shape[0]
        z = z[:, None].expand(b, p, h * w, z.shape[-1])  # (B, P, N, D)
        for i, blk in enumerate(self.blocks):
            z = blk(z, state.keys[i], state.values[i], state.key_bias)
        return self.norm_out(z)

    def prompt_logits(self, fine: torch.Tensor, coarse: torch.Tensor, state: PromptState
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-prompt logits and mixing scores, both (B, P, H, W), from the visual features."""
        b, _, hh, ww = fine.shape
        h, w = coarse.shape[-2:]
        p = state.bias.shape[0]
        z = self.prompt_tokens(coarse, state)  # (B, P, N, D)
        # A 1x1 conv commutes with bilinear upsampling: the dynamic kernel is applied to the
        # prompted tokens before they are upsampled into the fused map (same logits, D times
        # less full-resolution work).
        coarse_logit = (z @ state.coarse_kernel[:, :, None]).view(b, p, h, w)
        score = MIX_SCORE_BOUND * torch.tanh(self.mix_score(z).view(b, p, h, w)
                                             / MIX_SCORE_BOUND)
        up = torch.cat([coarse_logit, score], 1)  # (B, 2P, h, w)
        up = F.interpolate(up, size=(hh, ww), mode="bilinear", align_corners=False)
        return self.fine_logits(fine, state) + up[:, :p], up[:, p:]

    def fine_logits(self, fine: torch.Tensor, state: PromptState) -> torch.Tensor:
        """Convolution prompting over the full-resolution features: (B, C0, H, W) ->
        (B, P, H, W). A method of its own so that an exported graph can compute it another
        way (engines/deploy.py: OpenVINO has no convolution whose kernel count is dynamic)."""
        return F.conv2d(fine, state.fine_kernel, state.bias, padding=self.cfg.kernel // 2)

    def forward(self, image: torch.Tensor, state: PromptState) -> torch.Tensor:
        fine, coarse = self.visual(image)
        logits, score = self.prompt_logits(fine, coarse, state)
        return mix(logits, score, state.groups)


class PerFrame(nn.Module):
    """The per-frame part alone, with the prompt state as plain tensor inputs: what an exported
    engine runs (the state comes from `encode_prompts`, once per prompt list)."""

    def __init__(self, model: TPSIS) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, *state: torch.Tensor) -> torch.Tensor:
        return self.model(image, PromptState(*state))


def mix(logits: torch.Tensor, score: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mixing head: per pixel, a softmax over the prompts of each group of their scores weighs
    their logits. (B, P, H, W) x2, (G, P) -> (B, G, H, W); a group of one prompt is that
    prompt's logits (scores are bounded, so exp() is never 0 or inf)."""
    e = score.exp()
    num = torch.einsum("gp,bphw->bghw", groups, e * logits)
    return num / torch.einsum("gp,bphw->bghw", groups, e)


def labels_from_logits(logits: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """(B, G, H, W) group logits -> (B, H, W) uint8: 1 + the most probable group where its
    probability reaches `threshold`, else 0 (background)."""
    prob, best = logits.sigmoid().max(dim=1)
    return torch.where(prob >= threshold, best + 1, 0).to(torch.uint8)


def singleton_groups(p: int) -> torch.Tensor:
    """Every prompt its own group: (P, P) identity."""
    return torch.eye(p)
