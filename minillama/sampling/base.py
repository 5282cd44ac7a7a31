"""The one interface every sampler implements, and what the engine shows it at each decode step.

A sampler works on one sequence. The engine calls, per step and per sequence:
    token = sampler.sample(ctx)      # ctx: StepContext
    sampler.accept(token)            # after the token is committed (penalty windows, mirostat's mu, ...)
Forks (n > 1, lookahead, server sequences) call `sampler.clone()`, so a child's state never touches its parent's.
`reset()` forgets all state (a new conversation). A sampler that wants attention sets `capture` to a CaptureRequest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch

from ..capture import CapturedAttention, CaptureRequest


@dataclass
class LookaheadResult:
    """What the model predicts one token after each candidate, computed on forks of the cache in one batched forward.

    logits:    [k, vocab] float32, the next-token logits after appending candidate i
    hidden:    [k, dim] final normed hidden state at that position
    attention: one CapturedAttention per candidate when the sampler's capture request asked for it, else None
    """
    candidates: list[int]
    logits: torch.Tensor
    hidden: torch.Tensor
    attention: list[CapturedAttention] | None


@dataclass
class StepContext:
    """Everything a sampler may look at for one sequence at one decode step."""
    logits: torch.Tensor                 # [vocab] float32; samplers must not modify it in place
    tokens: Sequence[int]                # the whole token history (prompt + generated so far)
    prompt_len: int                      # how many of `tokens` are the prompt
    hidden: torch.Tensor                 # [dim] final normed hidden state of the newest position
    generator: torch.Generator           # this sequence's sampling stream (seeded; forks get their own)
    attention: CapturedAttention | None = None
    lookahead: Callable[[Sequence[int]], LookaheadResult] | None = None
    record: dict[str, Any] = field(default_factory=dict)   # what the sampler reports for this step (regime, temperature, ...)


@runtime_checkable
class Sampler(Protocol):
    capture: CaptureRequest | None

    def sample(self, ctx: StepContext) -> int: ...

    def accept(self, token: int) -> None: ...

    def reset(self) -> None: ...

    def clone(self) -> "Sampler": ...


class Greedy:
    """Argmax. The engine's default (sampler=None) takes a batched fast path with the same result."""
    capture: CaptureRequest | None = None

    def sample(self, ctx: StepContext) -> int:
        return int(torch.argmax(ctx.logits))

    def accept(self, token: int) -> None:
        pass

    def reset(self) -> None:
        pass

    def clone(self) -> "Greedy":
        return self

    def __repr__(self) -> str:
        return "Greedy()"
