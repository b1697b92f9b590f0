"""The deployable graph: uint8 frames in, uint8 label maps out.

Exported engines (ONNX Runtime, OpenVINO, AOTInductor, TensorRT) all compile this one module
(TP-SIS: `PromptLabelNet`, the same with the prompt state as inputs),
so normalisation and the argmax run inside the engine, fused with the convolutions, and the
host hands over the resized uint8 frame as it is: no float blob is built on the host and
only one byte per pixel comes back. The eager torch backend computes the same thing op for op
(engines/preprocess.py + argmax), which is what the parity tests compare against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from orstream.engines.checkpoint import Checkpoint
from orstream.engines.tpsis import THRESHOLD, TPSIS, PromptState
from orstream.engines.tpsis_checkpoint import TPSISCheckpoint


class Normalize(nn.Module):
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) normalised as training did, in `dtype`: the
    first layer of every exported graph, so engines take the live path's uint8 frames."""

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float],
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.dtype = dtype
        # Buffers, not constants: they move with .to(device) and export as initialisers.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0,
                             persistent=False)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std).view(1, 3, 1, 1) * 255.0),
                             persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).float()
        return ((x - self.mean) * self.inv_std).to(self.dtype)


class LabelNet(nn.Module):
    """(N, H, W, 3) uint8 RGB -> (N, H, W) uint8 class ids."""

    def __init__(self, checkpoint: Checkpoint, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.unet = checkpoint.build().to(dtype)
        self.dtype = dtype
        self.normalize = Normalize(checkpoint.mean, checkpoint.std, dtype)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.unet(self.normalize(frames)).argmax(dim=1).to(torch.uint8)


class ExportableTPSIS(TPSIS):
    """TP-SIS's per-frame part as the live path runs it, with ops every runtime takes.

    - Every prompt is its own group (each its own colour and legend entry), so the mixing
      head, which weighs the prompts within a group, is the identity: its scores are not
      computed, and the labels come from the prompts' logits directly.
    - sigmoid is monotonic: "the most probable prompt, if its probability reaches the
      threshold" is the largest logit, if it reaches logit(threshold). No sigmoid per pixel.
    - F.conv2d with the prompts' kernels as an input has a weight whose first axis (P) is
      dynamic, which OpenVINO's CPU plugin refuses ("doesn't support dynamic weights
      shape"). The same sum, reordered: contract the channels of every kernel tap first,
      one MatMul (P * k * k, C0) @ (C0, H * W), then add the k * k shifted maps of each
      prompt with a fixed one-hot k x k convolution over (B * P, k * k, H, W): P rides in
      the batch axis, which is dynamic everywhere, and that convolution's weight is a
      constant.
    - The k * k shifted maps are added as k * k slices of the zero-padded maps, not with a
      convolution that reads k * k channels to write one: OpenVINO ran that convolution
      (and the reorder it needed) in 3.6 of the 9 ms TP-SIS took over the U-Net (bf16,
      AVX-512 BF16); the adds are memory-bound and cheap.
    - The bilinear upsampling of the coarse logits (stride 16 -> full resolution) is two
      MatMuls with constant interpolation matrices, the same weights bilinear uses
      (`bilinear_matrix`): 1.1 ms as OpenVINO's Interpolate.
    The eager torch backend runs the model's own forward; the parity tests compare them."""

    def fine_logits(self, fine: torch.Tensor, state: PromptState) -> torch.Tensor:
        b, c, h, w = fine.shape
        k = self.cfg.kernel
        p = state.bias.shape[0]
        # (P, C0, k, k) -> (P * k * k, C0): row p * k * k + t is prompt p's tap t
        kernels = state.fine_kernel.permute(0, 2, 3, 1).reshape(p * k * k, c)
        r = k // 2
        # Zero-padding the C0 features costs less than padding the P * k * k tap maps, and
        # a zero feature gives a zero tap: the same as padding each tap map.
        padded = F.pad(fine, (r, r, r, r))
        hp, wp = h + 2 * r, w + 2 * r
        per_tap = (kernels @ padded.reshape(b, c, hp * wp)).reshape(b, p, k * k, hp, wp)
        # tap t of the kernel reads offset (t // k - r, t % k - r): one Slice per tap (an
        # index would add a Gather), summed
        summed = per_tap[:, :, 0:1, :h, :w]
        for t in range(1, k * k):
            dy, dx = divmod(t, k)
            summed = summed + per_tap[:, :, t:t + 1, dy:dy + h, dx:dx + w]
        return summed.reshape(b, p, h, w) + state.bias.view(1, p, 1, 1)

    def labels(self, image: torch.Tensor, state: PromptState) -> torch.Tensor:
        """(B, 3, H, W) normalised -> (B, H, W) uint8: what labels_from_logits(forward(...))
        gives with every prompt its own group."""
        fine, coarse = self.visual(image)  # (B, C0, H, W), (B, Ct, h, w)
        b, p = fine.shape[0], state.bias.shape[0]
        h, w = coarse.shape[-2:]
        z = self.prompt_tokens(coarse, state)  # (B, P, N, D)
        coarse_logit = (z @ state.coarse_kernel[:, :, None]).view(b, p, h, w)
        hh, ww = fine.shape[-2:]
        rows = bilinear_matrix(h, hh).to(fine.dtype)  # (H, h)
        cols = bilinear_matrix(w, ww).to(fine.dtype).T  # (w, W)
        up = rows @ (coarse_logit @ cols)  # = F.interpolate(..., "bilinear"), (B, P, H, W)
        best, index = (self.fine_logits(fine, state) + up).max(dim=1)  # (B, H, W) each
        return torch.where(best >= LOGIT_THRESHOLD, index + 1, 0).to(torch.uint8)


LOGIT_THRESHOLD = math.log(THRESHOLD / (1 - THRESHOLD))  # sigmoid(l) >= THRESHOLD


def bilinear_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in): row o holds the weights F.interpolate(mode="bilinear",
    align_corners=False, size=...) gives input samples for output sample o along one axis
    (source coordinate (o + 0.5) * in / out - 0.5, clamped at 0; the two neighbours, the
    last one repeated at the far edge). A few whole-tensor ops of constants: an export
    folds them into one initializer (a Python loop of indexed writes took minutes to trace)."""
    src = ((torch.arange(size_out, dtype=torch.float64) + 0.5) * (size_in / size_out)
           - 0.5).clamp(min=0.0)
    i0 = src.floor().clamp(max=size_in - 1)
    i1 = (i0 + 1).clamp(max=size_in - 1)
    frac = (src - i0)[:, None]
    cols = torch.arange(size_in, dtype=torch.float64)[None]
    weights = (cols == i0[:, None]) * (1.0 - frac) + (cols == i1[:, None]) * frac
    return weights.to(torch.float32)


class PromptLabelNet(nn.Module):
    """TP-SIS's per-frame part: (N, H, W, 3) uint8 RGB and the prompt state (engines/
    tpsis_engine.py: P prompts, the token axis padded) -> (N, H, W) uint8, 0 background and
    1 + i where prompt i is the most probable and at least tpsis.THRESHOLD."""

    def __init__(self, checkpoint: TPSISCheckpoint, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.tpsis = ExportableTPSIS(checkpoint.config)
        self.tpsis.load_state_dict(checkpoint.state_dict)  # fp16 shipped tensors become fp32
        self.tpsis.eval().to(dtype)
        self.dtype = dtype
        self.normalize = Normalize(checkpoint.mean, checkpoint.std, dtype)

    def forward(self, frames: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                key_bias: torch.Tensor, fine_kernel: torch.Tensor, coarse_kernel: torch.Tensor,
                bias: torch.Tensor) -> torch.Tensor:
        # No groups: every prompt is its own, and the mixing head is left out.
        state = PromptState(keys, values, key_bias, fine_kernel, coarse_kernel, bias,
                            groups=None)  # type: ignore[arg-type]  # never read
        return self.tpsis.labels(self.normalize(frames), state)


def example_input(size: tuple[int, int], batch: int = 1, device: str = "cpu") -> torch.Tensor:
    h, w = size
    return torch.zeros((batch, h, w, 3), dtype=torch.uint8, device=device)
