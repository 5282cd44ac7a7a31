"""Attention capture: the newest token's attention over its context, and the statistics samplers read from it.

A `CaptureRequest` travels into the forward pass; layers it names compute their attention explicitly for the
last query position and hand back a `CapturedAttention`. When no request is made nothing is computed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CaptureRequest:
    """Which layers' attention rows to return. `layers=None` means every layer; negative indices count from the end."""
    layers: tuple[int, ...] | None = (-1,)

    def resolve(self, n_layers: int) -> frozenset[int]:
        if self.layers is None:
            return frozenset(range(n_layers))
        return frozenset(l % n_layers for l in self.layers)

    def merge(self, other: "CaptureRequest | None") -> "CaptureRequest":
        if other is None:
            return self
        if self.layers is None or other.layers is None:
            return CaptureRequest(None)
        return CaptureRequest(tuple(sorted(set(self.layers) | set(other.layers))))


@dataclass
class CapturedAttention:
    """One sequence's newest-token attention, per captured layer.

    probs[layer]:  [n_heads, context_len] float32, softmax over the valid context (rows sum to 1)
    scores[layer]: [n_heads, context_len] float32, the scaled pre-softmax scores q·k/sqrt(d) of the same row
    Only valid (cached, causal) positions are present: there is no padding to mask.
    """
    probs: dict[int, torch.Tensor]
    scores: dict[int, torch.Tensor]

    @property
    def last_layer(self) -> int:
        return max(self.probs)


@dataclass(frozen=True)
class AttentionStats:
    """entropix's attention statistics of one layer's newest row (entropies in nats unless `bits` is asked)."""
    entropy: float               # mean over heads of each head's attention entropy
    varentropy: float            # variance across heads of the per-head entropies
    agreement: float             # mean |p_head - mean_heads(p)|
    interaction_strength: float  # mean |pre-softmax score|
    head_entropy: torch.Tensor   # [n_heads]


def attention_stats(captured: CapturedAttention, layer: int | None = None, *, bits: bool = False) -> AttentionStats:
    """Statistics of one captured layer (the last captured one by default), over valid positions only."""
    layer = captured.last_layer if layer is None else layer
    p = captured.probs[layer].float()
    logp = torch.log(p.clamp_min(1e-30))
    head_entropy = -(p * logp).sum(-1)
    if bits:
        head_entropy = head_entropy / math.log(2)
    mean_p = p.mean(0, keepdim=True)
    return AttentionStats(
        entropy=float(head_entropy.mean()),
        varentropy=float(head_entropy.var(unbiased=False)) if head_entropy.numel() > 1 else 0.0,
        agreement=float((p - mean_p).abs().mean()),
        interaction_strength=float(captured.scores[layer].abs().mean()),
        head_entropy=head_entropy,
    )
