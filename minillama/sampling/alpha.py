"""AlphaSampler (seed 004): one uncertainty number α sets temperature, top-k, top-p and repetition penalty; in the
COLD state the next token is chosen by a one-token lookahead on cache forks.

α, precisely (the seed only says "token entropy and attention entropy, normalized, combined"):

    Ĥ_tok  = H(softmax(logits)) / ln(vocab)                       in [0, 1]
    Ĥ_attn = mean over heads of H(attention row) / ln(context)   in [0, 1]   (last captured layer, valid positions;
                                                                              0 when the context is one position)
    α      = alpha_scale · (token_weight · Ĥ_tok + (1 − token_weight) · Ĥ_attn)
    α      = alpha_scale · Ĥ_tok                                  when no attention was captured (recorded)

averaged over the last `alpha_window` steps. The seed's code used alpha_scale 2 on a re-softmaxed, head-averaged
attention row and a 100-step average; on real models that α hardly leaves MIXED. Measured with this definition
(records of AlphaSampler itself, lookahead off):
  SmolLM2-135M-Instruct Q4_1, 3 chat prompts, 223 tokens: Ĥ_tok 0.00/0.19/0.44, Ĥ_attn 0.20/0.44/0.54 (5/50/95 %).
      seed-like (weight ½, scale 2-3): COLD ≤ 10 %, HOT 0 %;  weight 0.7, scale 4: COLD 16 %, HOT 4 %.
  stories260K, 200 tokens at T = 1: weight ½, scale 2: COLD 10 %, HOT 0 %;  weight 0.7, scale 4: COLD 2 %, HOT 18 %.
Defaults: token_weight 0.7, alpha_scale 4, no averaging (alpha_window 1), so all three states occur on a real
chat model; all are config fields (COLD more often with a smaller scale, HOT with a larger).

States: COLD α < cold_point, HOT α > hot_point, MIXED otherwise. Parameters, the seed's formulas exactly
(σ(x) = 1 / (1 + e^−x)):

    temperature = 0.1 + 1.2 · σ(1.5 (α − 1))
    top_k       = int(10 + 190 · (atan(α − 1) / π + 0.5))
    top_p       = base_top_p + 0.1 · (2 σ(0.8 α) − 1)             (base_top_p = 0.85 is the seed's constant)
    rep_penalty = base_rep_penalty + 0.3 · σ(2 (α − 1))           (base_rep_penalty = 1.0 likewise)

The repetition penalty covers the last `rep_window` (128) tokens of the history (prompt included, as in the seed),
with llama.cpp's sign rule. COLD: the top `lookahead_candidates` tokens of the penalized distribution are each
appended on a fork and the one whose next distribution scores lowest on
    entropy_weight · H_next + varentropy_weight · V_next + attention_weight · H_attn_next     (bits)
is chosen. Without ctx.lookahead (or with lookahead off) COLD samples at base_temp / base_top_k / base_top_p — the
seed declares those two base values but its formulas never read them; this is where minillama uses them.
"""
from __future__ import annotations

import copy
import math
from collections import Counter, deque
from dataclasses import dataclass, fields
from typing import Any

import torch

from ..capture import CaptureRequest
from ..errors import SamplerArgumentError
from .base import StepContext
from .metrics import (apply_repetition_penalty, attention_metrics, normalized_attention_entropy, sample_logits,
                      token_entropy, token_entropy_varentropy)

STATES = ("cold", "mixed", "hot")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@dataclass(frozen=True)
class SamplerConfig:
    """AlphaSampler's settings: the seed's fields (COLD_POINT/HOT_POINT spelled cold_point/hot_point) plus what the
    seed left implicit (α's definition, the lookahead's scoring)."""
    base_temp: float = 0.4
    base_top_p: float = 0.85
    base_top_k: int = 40
    base_rep_penalty: float = 1.0
    cold_point: float = 0.6
    hot_point: float = 1.8
    alpha_scale: float = 4.0
    token_weight: float = 0.7
    alpha_window: int = 1
    rep_window: int = 128
    lookahead: bool = True
    lookahead_candidates: int = 3
    entropy_weight: float = 0.8
    varentropy_weight: float = 0.2
    attention_weight: float = 0.2

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise SamplerArgumentError(f"SamplerConfig.{name} = {getattr(self, name)!r}: must be {rule}")

        need(self.base_temp >= 0, "base_temp", ">= 0")
        need(0 < self.base_top_p <= 1, "base_top_p", "in (0, 1]")
        need(self.base_top_k >= 0, "base_top_k", ">= 0 (0 = off)")
        need(self.base_rep_penalty > 0, "base_rep_penalty", "> 0")
        need(self.cold_point >= 0, "cold_point", ">= 0")
        need(self.hot_point >= self.cold_point, "hot_point", f">= cold_point ({self.cold_point})")
        need(self.alpha_scale > 0, "alpha_scale", "> 0")
        need(0 <= self.token_weight <= 1, "token_weight", "in [0, 1]")
        need(self.alpha_window >= 1, "alpha_window", ">= 1")
        need(self.rep_window >= 0, "rep_window", ">= 0")
        need(self.lookahead_candidates >= 1, "lookahead_candidates", ">= 1")
        for name in ("entropy_weight", "varentropy_weight", "attention_weight"):
            need(getattr(self, name) >= 0, name, ">= 0")

    # The seed's formulas. Pure functions of α so they can be checked by hand.
    def temperature(self, alpha: float) -> float:
        return 0.1 + 1.2 * _sigmoid(1.5 * (alpha - 1.0))

    def top_k(self, alpha: float) -> int:
        return int(10 + 190 * (math.atan(alpha - 1.0) / math.pi + 0.5))

    def top_p(self, alpha: float) -> float:
        return self.base_top_p + 0.1 * (2 * _sigmoid(0.8 * alpha) - 1)

    def rep_penalty(self, alpha: float) -> float:
        return self.base_rep_penalty + 0.3 * _sigmoid(2 * (alpha - 1.0))

    def state(self, alpha: float) -> str:
        if alpha < self.cold_point:
            return "cold"
        if alpha > self.hot_point:
            return "hot"
        return "mixed"


def alpha_config_fields() -> list[str]:
    return [f.name for f in fields(SamplerConfig)]


class AlphaSampler:
    """The seed's AdaptiveEntropixSampler on one sequence. Records α, the state and the parameters each step."""

    def __init__(self, config: SamplerConfig | None = None):
        self.config = config or SamplerConfig()
        self.capture = CaptureRequest(layers=(-1,))
        self._alphas: deque[float] = deque(maxlen=self.config.alpha_window)
        self._counts: Counter[str] = Counter()

    @property
    def state_counts(self) -> dict[str, int]:
        return {s: self._counts.get(s, 0) for s in STATES}

    def alpha(self, ctx: StepContext) -> tuple[float, float, float | None]:
        """(α of this step before averaging, Ĥ_tok, Ĥ_attn or None when no attention was captured)."""
        c = self.config
        vocab = ctx.logits.shape[-1]
        h_tok = float(token_entropy(ctx.logits)) / math.log(vocab) if vocab > 1 else 0.0
        if ctx.attention is None:
            return c.alpha_scale * h_tok, h_tok, None
        h_attn = normalized_attention_entropy(ctx.attention)
        return c.alpha_scale * (c.token_weight * h_tok + (1 - c.token_weight) * h_attn), h_tok, h_attn

    def sample(self, ctx: StepContext) -> int:
        c = self.config
        raw_alpha, h_tok, h_attn = self.alpha(ctx)
        self._alphas.append(raw_alpha)
        alpha = sum(self._alphas) / len(self._alphas)
        state = c.state(alpha)
        self._counts[state] += 1
        temp, top_k, top_p, penalty = c.temperature(alpha), c.top_k(alpha), c.top_p(alpha), c.rep_penalty(alpha)
        recent = list(ctx.tokens[-c.rep_window:]) if c.rep_window > 0 else []
        logits = apply_repetition_penalty(ctx.logits, recent, penalty)
        rec = ctx.record
        rec.update(state=state, alpha=alpha, alpha_step=raw_alpha, token_entropy_norm=h_tok,
                   attn_entropy_norm=h_attn, rep_penalty=penalty)

        if state == "cold":
            if c.lookahead and ctx.lookahead is not None:
                return self._lookahead(ctx, logits)
            rec["lookahead"] = "off" if not c.lookahead else "unavailable"
            temp, top_k, top_p = c.base_temp, c.base_top_k, c.base_top_p
        rec.update(temperature=temp, top_k=top_k, top_p=top_p)
        return sample_logits(logits, ctx.generator, temperature=temp, top_k=top_k, top_p=top_p)

    def _lookahead(self, ctx: StepContext, logits: torch.Tensor) -> int:
        c = self.config
        k = min(c.lookahead_candidates, logits.shape[-1])
        candidates = [int(t) for t in torch.topk(logits, k).indices]
        if len(candidates) == 1:
            ctx.record.update(lookahead="single candidate")
            return candidates[0]
        result = ctx.lookahead(candidates)
        scores = []
        for i in range(len(candidates)):
            ent, vent = token_entropy_varentropy(result.logits[i], bits=True)
            score = c.entropy_weight * float(ent) + c.varentropy_weight * float(vent)
            if result.attention is not None and c.attention_weight > 0:
                score += c.attention_weight * attention_metrics(result.attention[i], bits=True).entropy
            scores.append(score)
        best = min(range(len(candidates)), key=lambda i: scores[i])
        ctx.record.update(lookahead="used", candidates=candidates, candidate_scores=scores)
        return candidates[best]

    def accept(self, token: int) -> None:
        pass  # the penalty window is read from ctx.tokens, which already holds the accepted history

    def reset(self) -> None:
        self._alphas.clear()
        self._counts.clear()

    def clone(self) -> "AlphaSampler":
        return copy.deepcopy(self)

    def __repr__(self) -> str:
        return f"AlphaSampler({self.config})"


__all__ = ["AlphaSampler", "SamplerConfig", "STATES", "alpha_config_fields"]
