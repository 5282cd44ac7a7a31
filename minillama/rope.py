"""Rotary position embeddings (rotate-half layout, as in Hugging Face Llama), with llama3/linear/dynamic scaling.

Angles are computed from positions on the fly (a product and two trig ops per pair), which keeps rotation by
an arbitrary, even negative, position delta exact; the context shift re-rotates cached keys that way.
"""
from __future__ import annotations

import math

import torch

from .config import ModelConfig, rope_scaling_type


def inverse_frequencies(config: ModelConfig, seq_len: int | None = None) -> torch.Tensor:
    """inv_freq[i] = theta^(-2i/d), adjusted by the checkpoint's rope_scaling. Float32, on the CPU."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    kind = rope_scaling_type(scaling)
    factor = float(scaling.get("factor", 1.0))
    if kind == "linear":
        return inv_freq / factor
    if kind == "dynamic":
        # NTK-aware: once the context outgrows the trained length, stretch the base instead of the positions.
        original = int(scaling.get("original_max_position_embeddings") or config.max_seq_len)
        if seq_len is None or seq_len <= original:
            return inv_freq
        base = config.rope_theta * ((factor * seq_len / original) - (factor - 1)) ** (d / (d - 2))
        return 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    # llama3: leave high frequencies alone, divide low ones by `factor`, blend smoothly in between.
    low_ff = float(scaling.get("low_freq_factor", 1.0))
    high_ff = float(scaling.get("high_freq_factor", 4.0))
    original = int(scaling.get("original_max_position_embeddings", 8192))
    low_wavelen = original / low_ff
    high_wavelen = original / high_ff
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low_ff) / (high_ff - low_ff)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, scaled)


class Rotary:
    """Holds inv_freq for one model and rotates [..., T, heads, head_dim] tensors by their positions."""

    def __init__(self, config: ModelConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.inv_freq = inverse_frequencies(config).to(self.device)
        self._dynamic = config.rope_scaling is not None and rope_scaling_type(config.rope_scaling) == "dynamic"
        self._dynamic_len = config.max_seq_len

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype, signed: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin of shape [*positions.shape, 1, head_dim] (the 1 broadcasts over heads). With `signed`, the first
        half of sin is negated, as `apply_rope` needs."""
        if self._dynamic:
            self._maybe_stretch(int(positions.max()) + 1)
        freqs = positions.to(torch.float32).unsqueeze(-1) * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(-2)
        sin = torch.cat((-freqs, freqs), dim=-1).unsqueeze(-2).sin() if signed else emb.sin()
        return emb.cos().to(dtype), sin.to(dtype)

    def _maybe_stretch(self, seq_len: int) -> None:
        # Like transformers, the frequencies only ever grow with the longest context seen.
        if seq_len > self._dynamic_len:
            self._dynamic_len = seq_len
            self.inv_freq = inverse_frequencies(self.config, seq_len).to(self.device)

    def rotate(self, x: torch.Tensor, positions: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """Apply RoPE to x [..., T, heads, d] at positions [..., T]; `inverse` undoes it."""
        cos, sin = self.cos_sin(positions, x.dtype, signed=True)
        return apply_rope(x, cos, -sin if inverse else sin)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE in three ops: the halves swapped, [x2, x1], times the signed sin is [-x2, x1]. (The swap as
    a flip of a [2, d/2] view: one copy, where roll slices, narrows and concatenates.)"""
    d = x.shape[-1]
    swapped = x.unflatten(-1, (2, d // 2)).flip(-2).flatten(-2)
    return torch.addcmul(x * cos, swapped, signed_sin)
