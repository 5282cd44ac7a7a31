"""DRY ("Don't Repeat Yourself", p-e-w; llama.cpp's port of koboldcpp PR 982): penalise the token that would extend
a sequence already present in the recent context, exponentially in the length of that repeat.

Per step, over the last `penalty_last_n` tokens t_0 .. t_{L-1} (newest last):
1. A sequence breaker near the end caps how far back a repeat may reach (`limit`): the most recent breaker
   occurrence i tokens from the end sets limit = i - (breaker length - 1).
2. For every position e, match_len[e] = length of the longest common suffix of t_0..t_e and the whole context
   (capped at `limit`), found with the Z-algorithm on the reversed context in O(L).
3. If match_len[e] >= allowed_length, emitting t_{e+1} would repeat that sequence one token further: token t_{e+1}
   gets the longest such length n.
4. logit -= multiplier · base^(n - allowed_length), except for tokens that are single-token breakers.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from ..errors import SamplerArgumentError
from .base import StepContext
from .chain import Candidates, ChainElement, check_number
from .penalties import TokenWindow

# llama.cpp clamps breaker strings to 40 characters and a breaker's tokenised tail to 20 tokens, which keeps step 1
# linear in the context length.
MAX_BREAKER_CHARS = 40
MAX_BREAKER_TAIL = 20
# base^exponent must stay a finite float32: ln(float32 max) ~ 88.72
FLOAT32_MAX_LOG = 88.7228391

Breakers = dict[int, list[tuple[int, ...]]]   # head token -> tails (a single-token breaker has the empty tail)


_PIECES: dict[tuple[int, int], tuple[Any, tuple[str, ...]]] = {}


def _token_pieces(tokenizer: Any, n_tokens: int) -> tuple[str, ...]:
    """The text of every token on its own, cached per tokenizer: the scan costs one decode per vocabulary entry,
    and every clone or rebuilt chain (e.g. after `/sampler` in chat) would otherwise pay it again."""
    key = (id(tokenizer), n_tokens)
    cached = _PIECES.get(key)
    if cached is None or cached[0] is not tokenizer:
        if len(_PIECES) >= 4:
            _PIECES.clear()
        # minillama's Tokenizer gives a token's bytes directly; any object with decode() works too
        token_bytes = getattr(tokenizer, "token_bytes", None)
        if token_bytes is not None:
            pieces = tuple(token_bytes(token).decode("utf-8", errors="replace") for token in range(n_tokens))
        else:
            pieces = tuple(tokenizer.decode([token]) for token in range(n_tokens))
        cached = (tokenizer, pieces)
        _PIECES[key] = cached
    return cached[1]


def breakers_from_text(texts: Sequence[str], tokenizer: Any, n_vocab: int) -> Breakers:
    """Every (head token, tail tokens) that spells a breaker string, the way llama.cpp derives them.

    A token whose text contains the whole breaker is a single-token breaker. A token whose text *ends with* a
    prefix of the breaker starts a multi-token one; its tail is the tokenisation of the rest of the breaker.
    """
    size = min(n_vocab, getattr(tokenizer, "vocab_size", n_vocab))
    pieces = _token_pieces(tokenizer, size)
    breakers: Breakers = {}
    for text in texts:
        text = text[:MAX_BREAKER_CHARS]
        if not text:
            continue
        for token, piece in enumerate(pieces):
            if text in piece:
                _add(breakers, token, ())
                continue
            start = piece.find(text[0])
            while start != -1:
                overlap = len(piece) - start
                if overlap < len(text) and piece[start:] == text[:overlap]:
                    tail = tuple(tokenizer.encode(text[overlap:], bos=False)[:MAX_BREAKER_TAIL])
                    _add(breakers, token, tail)
                start = piece.find(text[0], start + 1)
    return breakers


def _add(breakers: Breakers, head: int, tail: tuple[int, ...]) -> None:
    tails = breakers.setdefault(head, [])
    if tail not in tails:
        tails.append(tail)


class DRY(ChainElement):
    """DRY repetition penalty. `sequence_breakers` holds strings (need a tokenizer: constructor or bind()) and/or
    token-id sequences. multiplier 0, base < 1 or penalty_last_n 0 turn it off; penalty_last_n -1 = whole context."""
    name = "dry"

    def __init__(self, multiplier: float, base: float = 1.75, allowed_length: int = 2, penalty_last_n: int = -1,
                 sequence_breakers: Sequence[str | Sequence[int]] = ("\n", ":", "\"", "*"),
                 tokenizer: Any = None) -> None:
        check_number("dry_multiplier", multiplier, 0.0, None, note=" (0 = off)")
        check_number("dry_base", base, 1.0, None)
        check_number("dry_allowed_length", allowed_length, 1, None, integer=True)
        check_number("dry_penalty_last_n", penalty_last_n, -1, None, integer=True, note=" (-1 = whole context)")
        self.multiplier, self.base = float(multiplier), float(base)
        self.allowed_length, self.penalty_last_n = allowed_length, penalty_last_n
        self.texts: list[str] = []
        token_breakers: Breakers = {}
        for breaker in sequence_breakers:
            if isinstance(breaker, str):
                self.texts.append(breaker)
            elif len(breaker) > 0:
                _add(token_breakers, int(breaker[0]), tuple(int(t) for t in breaker[1:MAX_BREAKER_TAIL + 1]))
            else:
                raise SamplerArgumentError("dry_sequence_breakers must hold non-empty strings or token-id lists")
        self._token_breakers = token_breakers
        self.breakers: Breakers | None = None if self.texts else token_breakers
        self.tokenizer = tokenizer
        self.window = TokenWindow(None if penalty_last_n < 0 else penalty_last_n)
        self.max_exponent = int(FLOAT32_MAX_LOG / math.log(self.base)) if self.base > 1.000001 else 0

    @property
    def inert(self) -> bool:
        return self.multiplier == 0.0 or self.penalty_last_n == 0

    def bind(self, tokenizer: Any) -> "DRY":
        self.tokenizer = tokenizer
        if self.texts:
            self.breakers = None      # re-derive with this tokenizer at the next step
        return self

    def accept(self, token: int) -> None:
        if not self.inert:
            self.window.push(token)

    def reset(self) -> None:
        self.window.clear()

    def clone(self) -> "DRY":
        twin = object.__new__(DRY)
        twin.__dict__.update(self.__dict__)      # configuration and derived breakers are read-only: share them
        twin.window = self.window.copy()
        return twin

    def _breakers(self, n_vocab: int) -> Breakers:
        if self.breakers is None:
            if self.tokenizer is None:
                raise SamplerArgumentError(
                    f"dry_sequence_breakers {self.texts!r} are text and need the tokenizer: build the chain with "
                    f"SamplingParams.to_sampler(tokenizer) or call .bind(tokenizer)")
            derived = breakers_from_text(self.texts, self.tokenizer, n_vocab)
            for head, tails in self._token_breakers.items():
                for tail in tails:
                    _add(derived, head, tail)
            self.breakers = derived
        return self.breakers

    def repeat_lengths(self, context: Sequence[int], breakers: Breakers) -> dict[int, int]:
        """Token -> the longest repeat it would extend (only lengths >= allowed_length); steps 1-3 above."""
        length = len(context)
        if length <= self.allowed_length:
            return {}
        # step 1: the most recent breaker bounds the repeat
        limit = length
        for back in range(length):
            tails = breakers.get(context[length - 1 - back])
            if not tails:
                continue
            longest = -1
            for tail in tails:
                if longest < len(tail) <= back and all(
                        context[length - back + offset] == token for offset, token in enumerate(tail)):
                    longest = len(tail)
            if longest >= 0:
                limit = back - longest
                break
        if limit < self.allowed_length:
            return {}
        # step 2: Z-algorithm on the reversed context; z[k] = common prefix of rev and rev[k:]
        rev = context[::-1]
        z = [0] * length
        left = right = 0
        for k in range(1, length):
            n = min(right - k, z[k - left]) if k < right else 0
            while k + n < length and rev[n] == rev[k + n]:
                n += 1
            z[k] = n
            if k + n > right:
                left, right = k, k + n
        # step 3: position e = length-1-k ends a repeat of z[k] tokens; the token after it would extend it
        lengths: dict[int, int] = {}
        for k in range(1, length):
            n = min(z[k], limit)
            if n >= self.allowed_length:
                token = context[length - k]
                if lengths.get(token, -1) < n:
                    lengths[token] = n
        return lengths

    def apply(self, candidates: Candidates, ctx: StepContext) -> Candidates:
        if self.inert:
            return candidates
        self.window.start(ctx.tokens)
        breakers = self._breakers(candidates.n_vocab)
        lengths = self.repeat_lengths(list(self.window.tokens), breakers)
        for token in [t for t, tails in breakers.items() if () in tails and t in lengths]:
            del lengths[token]            # a single-token breaker is never penalised
        if not lengths:
            return candidates
        device = candidates.logits.device
        tokens = torch.tensor(list(lengths.keys()), dtype=torch.long, device=device)
        exponents = [n - self.allowed_length for n in lengths.values()]
        if self.max_exponent > 0:
            exponents = [min(e, self.max_exponent) for e in exponents]
        penalty = torch.tensor([self.multiplier * self.base ** e for e in exponents], dtype=torch.float32,
                               device=device)
        positions, which = candidates.positions_of(tokens)
        logits = candidates.logits.clone()
        logits[positions] -= penalty[which]
        return candidates.with_logits(logits)

    def describe(self) -> str:
        return (f"dry(multiplier={self.multiplier:g}, base={self.base:g}, allowed_length={self.allowed_length}, "
                f"last_n={self.penalty_last_n})")
