"""What the adaptive samplers measure: token entropy/varentropy, attention statistics, RD-NET's char-level rep-4.

Also the adaptive samplers' own minimal draw (temperature, min-p, top-k, top-p on one logits vector, then a
categorical draw from the sequence's generator). It is deliberately small; the llama.cpp chain lives in chain.py.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..capture import AttentionStats, CapturedAttention, attention_stats
from ..errors import SamplerArgumentError

LN2 = math.log(2.0)


def token_entropy_varentropy(logits: torch.Tensor, bits: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy H = -Σ p log p and varentropy Σ p (log p + H)² of softmax(logits), over the last axis.

    logits: [vocab] or [B, vocab]; returns two tensors of shape [] or [B]. Tokens masked to -inf count as p = 0.
    In bits both use log2 (so the varentropy is the nats one divided by ln(2)²), as the entropix thresholds expect.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    # 0 · (-inf) is NaN; a token with p = 0 contributes nothing to either sum.
    logp = torch.where(p > 0, logp, torch.zeros_like(logp))
    if bits:
        logp = logp / LN2
    entropy = -(p * logp).sum(-1)
    varentropy = (p * (logp + entropy.unsqueeze(-1)) ** 2).sum(-1)
    return entropy, varentropy


def token_entropy(logits: torch.Tensor, bits: bool = False) -> torch.Tensor:
    """Entropy of softmax(logits) over the last axis, in nats (bits=True: in bits). [vocab] -> [], [B, vocab] -> [B]."""
    return token_entropy_varentropy(logits, bits)[0]


def token_varentropy(logits: torch.Tensor, bits: bool = False) -> torch.Tensor:
    """Varentropy Σ p (log p + H)² of softmax(logits): the variance of the surprisal -log p under p."""
    return token_entropy_varentropy(logits, bits)[1]


def attention_entropy(probs: torch.Tensor, bits: bool = False) -> torch.Tensor:
    """Per-head entropy of attention rows. probs: [n_heads, context] rows over valid positions -> [n_heads]."""
    p = probs.float()
    logp = torch.log(p.clamp_min(1e-30))
    h = -(p * logp).sum(-1)
    return h / LN2 if bits else h


def attention_metrics(captured: CapturedAttention, layer: int | None = None, bits: bool = False) -> AttentionStats:
    """entropix's attention statistics of one captured layer (last captured by default), valid positions only.

    entropy: mean over heads of per-head entropy; varentropy: variance of the per-head entropies across heads
    (entropix's definition, not the varentropy of one distribution); agreement: mean |p_head - mean_heads(p)|;
    interaction_strength: mean |scaled pre-softmax score|. The capture holds no padding, so unlike entropix's
    static-cache version nothing from empty or future slots enters these numbers.
    """
    return attention_stats(captured, layer, bits=bits)


def normalized_attention_entropy(captured: CapturedAttention, layer: int | None = None) -> float:
    """Mean over heads of H_head / ln(context length), in [0, 1]; 0 when the context is a single position."""
    layer = captured.last_layer if layer is None else layer
    probs = captured.probs[layer]
    n = probs.shape[-1]
    if n < 2:
        return 0.0
    return float(attention_entropy(probs).mean()) / math.log(n)


# ----- rep-4 (RD-NET seed: "a simple char-level rep-4 score over the last 50k characters") -----

def rep4_char(text: str, window: int = 50_000, n: int = 4) -> float:
    """Character-level repetition over the trailing `window` characters: 1 - unique n-grams / total n-grams.

    The n-grams are all overlapping runs of `n` characters of text[-window:] (n = 4). 0.0 means no 4-character
    run occurs twice; values near 1 mean the tail is a loop. A tail shorter than n characters scores 0.0.
    This is the seed's unit (characters), not SimCTG's token-level rep-n.
    """
    tail = text[-window:] if window > 0 else text
    total = len(tail) - n + 1
    if total <= 0:
        return 0.0
    unique = len({tail[i:i + n] for i in range(total)})
    return 1.0 - unique / total


class Rep4Logger:
    """Logs rep-4 every `every_k_tokens` generated tokens of a long run, in RD-NET's log format.

    Feed it each decoded piece with `add(piece, drift=...)`; it keeps only the trailing `window` characters. Each
    time the token count reaches a multiple of `every_k_tokens` it appends (tokens, rep4, drift) to `history`,
    passes the line "10k tokens | rep-4 = 0.4321 | drift = 0.0720" to `sink` (if given) and returns it.
    """

    def __init__(self, every_k_tokens: int, window: int = 50_000, sink: Callable[[str], None] | None = None):
        if every_k_tokens < 1:
            raise SamplerArgumentError(f"every_k_tokens must be >= 1, got {every_k_tokens}")
        self.every_k_tokens = every_k_tokens
        self.window = window
        self.sink = sink
        self.tokens = 0
        self.history: list[tuple[int, float, float | None]] = []
        self._tail = ""

    def add(self, piece: str, n_tokens: int = 1, drift: float | None = None) -> str | None:
        self._tail += piece
        if len(self._tail) > 2 * self.window:   # trim in amortized chunks, not on every token
            self._tail = self._tail[-self.window:]
        before = self.tokens
        self.tokens += n_tokens
        if self.tokens // self.every_k_tokens == before // self.every_k_tokens:
            return None
        score = rep4_char(self._tail, self.window)
        self.history.append((self.tokens, score, drift))
        count = f"{self.tokens // 1000}k" if self.tokens % 1000 == 0 else str(self.tokens)
        line = f"{count} tokens | rep-4 = {score:.4f}"
        if drift is not None:
            line += f" | drift = {drift:.4f}"
        if self.sink is not None:
            self.sink(line)
        return line


# ----- the adaptive samplers' minimal draw -----

def truncated_probs(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0,
                    min_p: float = 0.0) -> torch.Tensor:
    """softmax(logits / T) truncated by min-p, then top-k, then top-p, renormalized. [vocab] -> [vocab].

    Order as entropix (temperature first, like HF), but min-p really removes tokens before the draw (entropix's
    `_sample` masked a tensor it then ignored). top-p keeps the smallest set of most likely tokens whose mass
    reaches top_p (entropix's ascending-order cumsum removed the *most* likely tokens instead). The most likely
    token always survives. temperature <= 0 puts all mass on the argmax. top_k <= 0 disables top-k.
    """
    logits = logits.float()
    if temperature <= 0:
        probs = torch.zeros_like(logits)
        probs[torch.argmax(logits)] = 1.0
        return probs
    probs = torch.softmax(logits / temperature, dim=-1)
    if min_p > 0:
        probs = torch.where(probs >= min_p * probs.max(), probs, torch.zeros_like(probs))
    if 0 < top_k < probs.numel():
        kth = torch.topk(probs, top_k).values[-1]
        probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        mass_before = torch.cumsum(sorted_p, 0) - sorted_p
        keep_sorted = mass_before < top_p * sorted_p.sum()
        keep_sorted[0] = True
        keep = torch.zeros_like(keep_sorted).scatter(0, order, keep_sorted)
        probs = torch.where(keep, probs, torch.zeros_like(probs))
    return probs / probs.sum()


def draw(probs: torch.Tensor, generator: torch.Generator, n: int = 1) -> list[int]:
    """n independent categorical draws from `probs` with the sequence's generator (a correct categorical draw)."""
    probs = probs.to(generator.device)
    return [int(t) for t in torch.multinomial(probs, n, replacement=True, generator=generator)]


def sample_logits(logits: torch.Tensor, generator: torch.Generator, *, temperature: float, top_k: int = 0,
                  top_p: float = 1.0, min_p: float = 0.0) -> int:
    """One token from `logits` under temperature/min-p/top-k/top-p (see truncated_probs)."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    return draw(truncated_probs(logits, temperature, top_k, top_p, min_p), generator)[0]


def apply_repetition_penalty(logits: torch.Tensor, recent: Sequence[int], penalty: float) -> torch.Tensor:
    """A new logits tensor with each distinct token of `recent` penalized (llama.cpp's sign rule).

    Positive logits are divided by `penalty`, non-positive ones multiplied, so a penalty never makes a token
    more likely (dividing a negative logit would). penalty == 1 returns the input unchanged.
    """
    if penalty == 1.0 or len(recent) == 0:
        return logits
    out = logits.clone()
    ids = torch.tensor(sorted(set(int(t) for t in recent)), dtype=torch.long, device=logits.device)
    picked = out[ids]
    out[ids] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return out
