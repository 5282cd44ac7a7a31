"""RD-NET (seed 003): a fixed random fast-weight memory read with drifting keys, added to the logits.

Per step, with h = ctx.hidden (the final normed hidden state of the newest position, dimension d):

    K' = K + drift(t) · ε,   ε ~ N(0, 1) drawn from ctx.generator    (keys K: [memory_size, d], fixed, seeded)
    w  = softmax(K' h / √d)                                           (the memory read's weights over slots)
    z  = w · V_vocab                      projection="random": the values drawn directly in vocab space
    z  = lm_head(w · V)                   projection given as a callable: values V: [memory_size, d] in hidden
                                          space, projected by it (the model's own LM head, for example)
    b  = (z − mean z) / std z             so that `mix` is in units of one standard deviation, whatever the model
    logits' = logits + mix · b            then `base` draws (argmax when base is None)

"Projects this into vocab space" is read two ways, both offered. The default draws each slot's value straight in
vocab space ([memory_size, vocab], seeded): a fixed random projection of hidden-space values would need a
[vocab, d] matrix (a 128k × 4096 one is 2 GiB) for nothing the direct draw lacks. Pass `lm_head` (a callable
[d] -> [vocab]) to project hidden-space values with the model's own head instead.

Drift schedule, exactly: drift(t) = drift_floor + (drift_start − drift_floor) · exp(−t / decay), with t the number
of tokens this sampler has drawn (sample() calls) since construction or reset() — strong at first, decaying to the
floor with an e-folding time of `decay` tokens. (Not accept() calls: the engine feeds the prompt through accept().) Each fork (clone()) keeps t and draws its noise from its own ctx.generator,
so n samples drift independently yet reproducibly. mix = 0 skips the memory altogether (no generator draw), so
the tokens are exactly the base sampler's.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch

from ..capture import CaptureRequest
from ..errors import SamplerArgumentError
from .base import Greedy, Sampler, StepContext


class RDNet:
    """Random drifted fast-weight memory over the logits, delegating the draw to `base`."""

    def __init__(self, base: Sampler | None = None, *, memory_size: int = 64, dim: int | None = None,
                 lm_head: Callable[[torch.Tensor], torch.Tensor] | None = None, mix: float = 1.0,
                 drift_start: float = 0.1, drift_floor: float = 0.02, decay: float = 10_000.0, seed: int = 0):
        if memory_size < 1:
            raise SamplerArgumentError(f"RDNet memory_size must be >= 1, got {memory_size}")
        if dim is not None and dim < 1:
            raise SamplerArgumentError(f"RDNet dim must be >= 1 or None (taken from ctx.hidden), got {dim}")
        if mix < 0:
            raise SamplerArgumentError(f"RDNet mix must be >= 0 (0 = the base sampler alone), got {mix}")
        if drift_start < 0 or drift_floor < 0:
            raise SamplerArgumentError(f"RDNet drift_start and drift_floor must be >= 0, got {drift_start}, "
                                       f"{drift_floor}")
        if drift_floor > drift_start:
            raise SamplerArgumentError(f"RDNet drift_floor ({drift_floor}) must be <= drift_start ({drift_start})")
        if not decay > 0:
            raise SamplerArgumentError(f"RDNet decay must be > 0 tokens, got {decay}")
        self.base: Sampler = base if base is not None else Greedy()
        self.memory_size = memory_size
        self.dim = dim
        self.lm_head = lm_head
        self.mix = mix
        self.drift_start = drift_start
        self.drift_floor = drift_floor
        self.decay = decay
        self.seed = seed
        self.step = 0
        self._keys: torch.Tensor | None = None     # [memory_size, dim]
        self._values: torch.Tensor | None = None   # [memory_size, vocab] or [memory_size, dim] with lm_head

    @property
    def capture(self) -> CaptureRequest | None:
        return self.base.capture

    def drift_at(self, step: int) -> float:
        """The drift scale at the `step`-th drawn token, from 0 (see the module docstring for the schedule)."""
        return self.drift_floor + (self.drift_start - self.drift_floor) * math.exp(-step / self.decay)

    def _build(self, dim: int, vocab: int, device: torch.device) -> None:
        if self.dim is not None and self.dim != dim:
            raise SamplerArgumentError(f"RDNet dim={self.dim} but the model's hidden state has {dim} dimensions")
        self.dim = dim
        g = torch.Generator().manual_seed(self.seed)
        self._keys = torch.randn(self.memory_size, dim, generator=g).to(device)
        width = dim if self.lm_head is not None else vocab
        self._values = torch.randn(self.memory_size, width, generator=g).to(device)

    def memory_bias(self, ctx: StepContext, step: int) -> tuple[torch.Tensor, float]:
        """The standardized memory read b in vocab space at drift step `step`, and the drift scale used."""
        h = ctx.hidden.float().reshape(-1)
        vocab = ctx.logits.shape[-1]
        if self._keys is None or self._keys.device != h.device or (self.lm_head is None
                                                                    and self._values.shape[1] != vocab):
            self._build(h.numel(), vocab, h.device)
        drift = self.drift_at(step)
        noise = torch.randn(self._keys.shape, generator=ctx.generator, device=ctx.generator.device)
        keys = self._keys + drift * noise.to(h.device)
        weights = torch.softmax(keys @ h / math.sqrt(h.numel()), dim=0)
        read = weights @ self._values
        z = self.lm_head(read).float().reshape(-1) if self.lm_head is not None else read
        if z.shape[-1] != vocab:
            raise SamplerArgumentError(f"RDNet lm_head returned {z.shape[-1]} values for a {vocab}-token vocabulary")
        b = (z - z.mean()) / (z.std() + 1e-6)
        return b.to(ctx.logits.device), drift

    def sample(self, ctx: StepContext) -> int:
        step = self.step
        self.step += 1
        if self.mix == 0:
            ctx.record.update(rdnet_drift=self.drift_at(step), rdnet_step=step, rdnet_mix=0.0)
            return self.base.sample(ctx)
        bias, drift = self.memory_bias(ctx, step)
        ctx.record.update(rdnet_drift=drift, rdnet_step=step, rdnet_mix=self.mix)
        mixed = StepContext(logits=ctx.logits.float() + self.mix * bias, tokens=ctx.tokens,
                            prompt_len=ctx.prompt_len, hidden=ctx.hidden, generator=ctx.generator,
                            attention=ctx.attention, lookahead=ctx.lookahead, record=ctx.record)
        return self.base.sample(mixed)

    def accept(self, token: int) -> None:
        self.base.accept(token)

    def reset(self) -> None:
        self.step = 0
        self.base.reset()

    def clone(self) -> "RDNet":
        """A fork: its own step counter and base sampler state; the fixed memory and lm_head are shared."""
        twin = copy.copy(self)
        twin.base = self.base.clone()
        return twin

    def __repr__(self) -> str:
        return (f"RDNet(base={self.base!r}, memory_size={self.memory_size}, mix={self.mix}, "
                f"drift_start={self.drift_start}, drift_floor={self.drift_floor}, decay={self.decay}, "
                f"seed={self.seed})")


__all__ = ["RDNet"]
