"""The VLM's text decoder: a GPT-style causal transformer with a KV cache, leaves first.

Compared with the reference SeeMore decoder: blocks are pre-norm (the residual is added to
the block's input, not after a layer norm), attention is scaled by the head size, a position
embedding is added exactly once to each token when it enters the model (cached keys and
values already hold it), and generation reuses the keys and values of earlier tokens instead
of running the whole sequence again for every new word.

The decoder takes embeddings, not token ids, so that visual tokens from the projector and
embedded text tokens enter it the same way: `embed(tokens)` makes the text half.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int = 256  # set from the tokenizer when a model is built
    max_len: int = 96  # positions: 21 visual tokens + prompt (<= 14) + answer (<= 45) + slack
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        assert self.dim % self.heads == 0, (
            f"decoder dim {self.dim} must divide by heads {self.heads}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


class KVCache:
    """Keys and values of every layer for up to `max_len` positions, preallocated.

    A fixed shape (rather than a growing concatenation) costs nothing on the CPU and is what
    an exported decoder step needs: a static cache it writes into at `length`.
    """

    def __init__(self, cfg: DecoderConfig, batch: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        shape = (cfg.depth, batch, cfg.heads, cfg.max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = cfg.max_len
        self.length = 0  # positions filled; the decoder advances it after all layers ran

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions' (B, H, T, hd) keys and values; return all so far."""
        end = self.length + k.shape[2]
        assert end <= self.max_len, f"KV cache holds {self.max_len} positions, {end} asked for"
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (sequences that are still generating)."""
        self.k = self.k[:, rows]
        self.v = self.v[:, rows]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.head_dim
        # Per-head scaling: softmax(q k^T / sqrt(head_dim)), not / sqrt(dim) as in SeeMore,
        # which flattens every head's attention more the more heads there are.
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0
                ) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, T, 3, H, hd) -> 3 x (B, H, T, hd)
        start = 0
        if cache is not None:
            start = cache.length
            k, v = cache.update(layer, k, v)  # -> (B, H, start + T, hd)
        drop = self.dropout if self.training else 0.0
        if start == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale,
                                               dropout_p=drop)
        elif t == 1:  # one new token may see every cached one: no mask needed
            y = F.scaled_dot_product_attention(q, k, v, scale=self.scale, dropout_p=drop)
        else:  # several new tokens after cached ones: token i sees positions <= start + i
            mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale,
                                               dropout_p=drop)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))  # (B, H, T, hd) -> (B, T, D)


class MLP(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.dim, cfg.mlp_ratio * cfg.dim)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.dim, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cache, layer)
        return x + self.mlp(self.norm2(x))


class Decoder(nn.Module):
    """forward: (B, T, D) input embeddings [+ cache] -> (B, T, vocab) logits, always.

    With a cache, the T embeddings are the positions after the cached ones; the cache then
    holds them too.
    """

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_embed = nn.Parameter(torch.zeros(cfg.max_len, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_embed.weight  # tied: fewer weights, as in GPT-2
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tok_embed(tokens)  # (B, T) int64 -> (B, T, D)

    def new_cache(self, batch: int, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> KVCache:
        return KVCache(self.cfg, batch, device, dtype)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        t = x.shape[1]
        start = cache.length if cache is not None else 0
        assert start + t <= self.cfg.max_len, (
            f"decoder sequence of {start + t} positions exceeds max_len {self.cfg.max_len}")
        x = x + self.pos_embed[start:start + t]  # once per position, as the token enters
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.length += t
        return self.head(self.norm(x))
