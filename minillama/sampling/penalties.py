"""Repetition, frequency and presence penalties in llama.cpp's form, over a window of the last accepted tokens."""
from __future__ import annotations

from collections import Counter, deque
from typing import Sequence

import torch

from .base import StepContext
from .chain import Candidates, ChainElement, check_number


class TokenWindow:
    """The last `capacity` tokens of one sequence (capacity None: every token), as penalties and DRY see them.

    llama.cpp's CLI and server pass the prompt through the sampler's accept() before generating, so penalties
    cover the prompt too. minillama's engine accepts only generated tokens, so a window that has seen nothing yet
    takes the history from the first StepContext it meets (ctx.tokens: the prompt or the conversation so far);
    after that it grows only by accept().
    """

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self.tokens: deque[int] = deque(maxlen=capacity)
        self.counts: Counter[int] = Counter()
        self.started = False

    def start(self, history: Sequence[int]) -> None:
        if self.started:
            return
        self.started = True
        tail = history if self.capacity is None else history[max(0, len(history) - self.capacity):]
        for token in tail:
            self._push(int(token))

    def push(self, token: int) -> None:
        self.started = True
        self._push(int(token))

    def _push(self, token: int) -> None:
        if self.capacity is not None and len(self.tokens) == self.capacity:
            evicted = self.tokens[0]
            self.counts[evicted] -= 1
            if self.counts[evicted] == 0:
                del self.counts[evicted]
        self.tokens.append(token)
        self.counts[token] += 1

    def clear(self) -> None:
        self.tokens.clear()
        self.counts.clear()
        self.started = False

    def copy(self) -> "TokenWindow":
        twin = TokenWindow(self.capacity)
        twin.tokens = deque(self.tokens, maxlen=self.capacity)
        twin.counts = Counter(self.counts)
        twin.started = self.started
        return twin


class Penalties(ChainElement):
    """For each token seen c > 0 times in the last `last_n` tokens (-1: all, 0: off):
    logit /= repeat if logit > 0 else logit *= repeat (dividing a negative logit would make the token *more*
    likely), then logit -= c·frequency + presence."""
    name = "penalties"

    def __init__(self, last_n: int = 64, repeat: float = 1.0, frequency: float = 0.0, presence: float = 0.0) -> None:
        check_number("penalty_last_n", last_n, -1, None, integer=True, note=" (-1 = whole context, 0 = off)")
        check_number("repeat_penalty", repeat, 0.0, None, lo_open=True, note=" (1.0 = off)")
        check_number("frequency_penalty", frequency, None, None)
        check_number("presence_penalty", presence, None, None)
        self.last_n, self.repeat = last_n, float(repeat)
        self.frequency, self.presence = float(frequency), float(presence)
        self.window = TokenWindow(None if last_n < 0 else last_n)

    @property
    def inert(self) -> bool:
        return self.last_n == 0 or (self.repeat == 1.0 and self.frequency == 0.0 and self.presence == 0.0)

    def accept(self, token: int) -> None:
        if self.last_n != 0:
            self.window.push(token)

    def reset(self) -> None:
        self.window.clear()

    def clone(self) -> "Penalties":
        twin = Penalties(self.last_n, self.repeat, self.frequency, self.presence)
        twin.window = self.window.copy()
        return twin

    def apply(self, candidates: Candidates, ctx: StepContext) -> Candidates:
        if self.inert:
            return candidates
        self.window.start(ctx.tokens)
        if not self.window.counts:
            return candidates
        device = candidates.logits.device
        tokens = torch.tensor(list(self.window.counts.keys()), dtype=torch.long, device=device)
        counts = torch.tensor(list(self.window.counts.values()), dtype=torch.float32, device=device)
        positions, which = candidates.positions_of(tokens)
        seen = candidates.logits[positions]
        penalized = torch.where(seen <= 0, seen * self.repeat, seen / self.repeat)
        penalized = penalized - (counts[which] * self.frequency + self.presence)
        logits = candidates.logits.clone()
        logits[positions] = penalized
        return candidates.with_logits(logits)

    def describe(self) -> str:
        return (f"penalties(last_n={self.last_n}, repeat={self.repeat:g}, frequency={self.frequency:g}, "
                f"presence={self.presence:g})")
