"""The entropix "classic" four-quadrant sampler (xjdr-alt/entropix, Oct 2024), with its known bugs fixed.

Each step measures the next-token distribution (entropy and varentropy, in bits) and the last layer's attention
row of the newest token (entropy, varentropy across heads, agreement, interaction strength; bits), then picks a
regime, first match wins:

    flowing     LELV  ent < low_ent  and vent < low_vent    -> argmax
    treading    HELV  ent > helv_ent and vent < low_vent    -> emit the question token unless it was the last
                                                               token, else sample hotter (attention entropy)
    exploring   LEHV  ent < lehv_ent and vent > high_vent   -> hotter by interaction strength, top-k widened
                                                               when heads disagree
    resampling  HEHV  ent > hehv_ent and vent > high_vent   -> hot, top-p lowered by attention entropy
    adaptive    otherwise                                  -> temp/top-p/top-k/min-p blended from all metrics,
                                                               best of n draws

Fixed, openly (see ANCHORS.md §2):
- attention metrics use the valid context only (entropix softmaxed empty static-cache slots too);
- min-p removes tokens before the draw (entropix's `_sample` computed the mask and dropped it), and top-p keeps
  the most likely tokens (entropix's ascending cumsum kept the least likely);
- the draw is a correct categorical draw from the sequence's generator (the torch twin divided by uniform noise);
- HEHV's temperature is capped, `min(hehv_max_temp, ...)`, where entropix wrote `max(2.0, ...)` (a floor of 2.0
  that every other quadrant writes as a cap);
- adaptive best-of-n: entropix added a "confidence" term that is the same for all n draws, so it never changed
  the choice. Here `adaptive_score="logprob"` says what entropix really did (keep the draw with the highest
  log p) and `"lookahead"` gives the confidence a meaning: it is computed per distinct draw from what the model
  predicts one token after it (ctx.lookahead, one batched forward on cache forks).
"""
from __future__ import annotations

import copy
import warnings
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any

import torch

from ..capture import AttentionStats, CaptureRequest
from ..errors import SamplerArgumentError
from .base import StepContext
from .metrics import attention_metrics, draw, sample_logits, token_entropy_varentropy, truncated_probs

REGIMES = ("flowing", "treading", "exploring", "resampling", "adaptive")
ADAPTIVE_SCORES = ("logprob", "lookahead")


@dataclass(frozen=True)
class EntropyConfig:
    """entropix's SamplerConfig (JAX `entropix/sampler.py` @eaaddb2 defaults). Entropies in bits.

    entropix names its entropy thresholds low/med/high and the JAX and torch versions use them in different
    quadrants, so here each quadrant names its own: JAX uses high (5.0) for HELV and LEHV and med (3.0) for HEHV;
    the torch twin uses med (3.0) for HELV and high (5.0) for LEHV and HEHV (`torch_preset()`).
    """
    temp: float = 0.666
    top_p: float = 0.90
    top_k: int = 27
    min_p: float = 0.03
    low_ent_thresh: float = 0.1
    low_vent_thresh: float = 0.1
    helv_ent_thresh: float = 5.0
    lehv_ent_thresh: float = 5.0
    hehv_ent_thresh: float = 3.0
    high_vent_thresh: float = 5.0
    # treading (HELV)
    helv_attn_ent_offset: float = 1.3
    helv_attn_ent_coef: float = 0.2
    # exploring (LEHV)
    lehv_interaction_strength_offset: float = 1.2
    lehv_interaction_strength_coef: float = 0.3
    lehv_agreement_coef: float = 0.5
    lehv_min_top_k: int = 5
    quadrant_max_temp: float = 1.5        # entropix's min(1.5, ...) in HELV and LEHV
    # resampling (HEHV)
    hehv_attn_ent_coef: float = 0.2
    hehv_attn_vent_offset: float = 2.0
    hehv_attn_vent_coef: float = 0.5
    hehv_max_temp: float = 2.0            # entropix: max(2.0, ...), fixed to a cap
    hehv_min_top_p: float = 0.5
    # adaptive
    n_adaptive_samples: int = 5
    adaptive_score: str = "logprob"
    ada_base_top_k: int | None = None     # None: top_k (the torch twin used 40 here)
    ada_base_min_p: float | None = None   # None: min_p (the torch twin used 0.03 here, 0.0 elsewhere)
    ada_temp_logits: float = 0.3
    ada_temp_attn: float = 0.2
    ada_temp_agree: float = 0.2
    ada_top_p: float = 0.1
    ada_top_k_int: float = 0.3
    ada_top_k_agree: float = 0.2
    ada_min_p: float = 0.5
    ada_score_logits_ent: float = 0.1
    ada_score_attn_ent: float = 0.2
    ada_score_logits_vent: float = 0.3
    ada_score_attn_vent: float = 0.4
    ada_score_agree: float = 0.5
    ada_score_int: float = 0.6

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise SamplerArgumentError(f"EntropyConfig.{name} = {getattr(self, name)!r}: must be {rule}")

        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and f.name != "adaptive_score":
                need(value >= 0, f.name, ">= 0")
        need(self.temp >= 0, "temp", ">= 0 (0 = argmax)")
        need(0 < self.top_p <= 1, "top_p", "in (0, 1]")
        need(self.top_k >= 1, "top_k", ">= 1")
        need(self.min_p < 1, "min_p", "in [0, 1)")
        need(self.quadrant_max_temp > 0, "quadrant_max_temp", "> 0")
        need(self.hehv_max_temp > 0, "hehv_max_temp", "> 0")
        need(self.hehv_min_top_p <= 1, "hehv_min_top_p", "in [0, 1]")
        need(self.lehv_min_top_k >= 1, "lehv_min_top_k", ">= 1")
        need(self.n_adaptive_samples >= 1, "n_adaptive_samples", ">= 1")
        need(self.adaptive_score in ADAPTIVE_SCORES, "adaptive_score", f"one of {ADAPTIVE_SCORES}")
        need(self.ada_base_top_k is None or self.ada_base_top_k >= 1, "ada_base_top_k", "None or >= 1")
        need(self.ada_base_min_p is None or self.ada_base_min_p < 1, "ada_base_min_p", "None or in [0, 1)")
        for name in ("helv_ent_thresh", "lehv_ent_thresh", "hehv_ent_thresh"):
            need(self.low_ent_thresh <= getattr(self, name), name, f">= low_ent_thresh ({self.low_ent_thresh})")
        need(self.low_vent_thresh <= self.high_vent_thresh, "high_vent_thresh",
             f">= low_vent_thresh ({self.low_vent_thresh})")

    @classmethod
    def torch_preset(cls, **overrides: Any) -> "EntropyConfig":
        """The torch twin's (`entropix/torch_sampler.py`) thresholds and defaults: HELV at ent > 3.0, HEHV at
        ent > 5.0, min_p 0.0 in the quadrants, base top-k 40 and min-p 0.03 in the adaptive regime."""
        base = dict(helv_ent_thresh=3.0, lehv_ent_thresh=5.0, hehv_ent_thresh=5.0, min_p=0.0,
                    ada_base_top_k=40, ada_base_min_p=0.03)
        return cls(**{**base, **overrides})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "EntropyConfig":
        """"jax" (the default, entropix's classic JAX sampler) or "torch" (its torch twin)."""
        if name == "jax":
            return cls(**overrides)
        if name == "torch":
            return cls.torch_preset(**overrides)
        raise SamplerArgumentError(f"entropy preset {name!r} is unknown; choose 'jax' or 'torch'")


# ----- finding the question / pause tokens in a vocabulary -----

def _vocab_size(tokenizer: Any) -> int | None:
    for name in ("vocab_size", "n_vocab"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    try:
        return len(tokenizer)
    except TypeError:
        return None


def find_token(tokenizer: Any, texts: tuple[str, ...], piece_names: tuple[str, ...]) -> int | None:
    """The id of a single token that decodes to one of `texts` (tried in order), or None.

    First asks `tokenizer.id_of` for each text and then for the raw piece spellings (GPT-2 "Ġ" space, SentencePiece
    "▁" space) of tokenizers that look pieces up by name; then scans `tokenizer.token_bytes(i)` over the vocabulary
    for exact byte matches.
    """
    id_of = getattr(tokenizer, "id_of", None)
    if callable(id_of):
        for name in texts + piece_names:
            try:
                found = id_of(name)
            except (KeyError, ValueError, LookupError):
                continue
            if isinstance(found, int) and found >= 0:
                return found
    token_bytes = getattr(tokenizer, "token_bytes", None)
    size = _vocab_size(tokenizer)
    if not callable(token_bytes) or size is None:
        return None
    wanted = [t.encode("utf-8") for t in texts]
    best: tuple[int, int] | None = None       # (rank in `texts`, id)
    for i in range(size):
        try:
            b = token_bytes(i)
        except (KeyError, ValueError, IndexError, LookupError):
            continue
        if b in wanted:
            rank = wanted.index(b)
            if best is None or rank < best[0]:
                best = (rank, i)
                if rank == 0:
                    break
    return None if best is None else best[1]


def find_question_token(tokenizer: Any) -> int | None:
    return find_token(tokenizer, ("?", " ?"), ("?", "Ġ?", "▁?"))


def find_pause_token(tokenizer: Any) -> int | None:
    return find_token(tokenizer, ("...", " ..."), ("...", "Ġ...", "▁..."))


# ----- the sampler -----

_NO_ATTENTION = AttentionStats(entropy=0.0, varentropy=0.0, agreement=0.0, interaction_strength=0.0,
                               head_entropy=torch.zeros(0))


class EntropySampler:
    """entropix's quadrant sampler on one sequence. Records per step: regime, the six metrics, the parameters used.

    The "treading" regime inserts `question_token` (found from the tokenizer when not given; the pause token
    "..." stands in when the vocabulary has no "?"). With neither, the sampler warns once, records
    `treading_action = "sample (no question token)"` and samples hotter instead.
    """

    def __init__(self, config: EntropyConfig | None = None, tokenizer: Any = None, pause_token: int | None = None,
                 question_token: int | None = None):
        self.config = config or EntropyConfig()
        if question_token is None and tokenizer is not None:
            question_token = find_question_token(tokenizer)
        if pause_token is None and tokenizer is not None:
            pause_token = find_pause_token(tokenizer)
        self.question_token = question_token
        self.pause_token = pause_token
        self.insert_token = question_token if question_token is not None else pause_token
        self.capture = CaptureRequest(layers=(-1,))
        self._counts: Counter[str] = Counter()
        self._warned: set[str] = set()

    @property
    def regime_counts(self) -> dict[str, int]:
        return {r: self._counts.get(r, 0) for r in REGIMES}

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def classify(self, ent: float, vent: float) -> str:
        c = self.config
        if ent < c.low_ent_thresh and vent < c.low_vent_thresh:
            return "flowing"
        if ent > c.helv_ent_thresh and vent < c.low_vent_thresh:
            return "treading"
        if ent < c.lehv_ent_thresh and vent > c.high_vent_thresh:
            return "exploring"
        if ent > c.hehv_ent_thresh and vent > c.high_vent_thresh:
            return "resampling"
        return "adaptive"

    def sample(self, ctx: StepContext) -> int:
        c = self.config
        ent_t, vent_t = token_entropy_varentropy(ctx.logits, bits=True)
        ent, vent = float(ent_t), float(vent_t)
        if ctx.attention is not None:
            attn = attention_metrics(ctx.attention, bits=True)
        else:
            self._warn_once("attention", "EntropySampler got no captured attention; attention metrics read as 0")
            attn = _NO_ATTENTION
        regime = self.classify(ent, vent)
        self._counts[regime] += 1
        rec = ctx.record
        rec.update(regime=regime, entropy=ent, varentropy=vent, attn_entropy=attn.entropy,
                   attn_varentropy=attn.varentropy, agreement=attn.agreement,
                   interaction_strength=attn.interaction_strength, attention_captured=ctx.attention is not None)

        if regime == "flowing":
            rec.update(temperature=0.0)
            return int(torch.argmax(ctx.logits))

        if regime == "treading":
            last = ctx.tokens[-1] if len(ctx.tokens) else None
            if self.insert_token is None:
                self._warn_once("question", "EntropySampler: this vocabulary has no '?' or '...' token; the "
                                "treading regime samples hotter instead of asking")
                rec["treading_action"] = "sample (no question token)"
            elif last != self.insert_token:
                rec["treading_action"] = "insert"
                return self.insert_token
            else:
                rec["treading_action"] = "sample (just asked)"
            temp = min(c.quadrant_max_temp, c.temp * (c.helv_attn_ent_offset + c.helv_attn_ent_coef * attn.entropy))
            return self._draw(ctx, temp, c.top_k, c.top_p, c.min_p)

        if regime == "exploring":
            temp = min(c.quadrant_max_temp, c.temp * (c.lehv_interaction_strength_offset
                                                      + c.lehv_interaction_strength_coef * attn.interaction_strength))
            top_k = max(c.lehv_min_top_k, int(c.top_k * (1 + c.lehv_agreement_coef * (1 - attn.agreement))))
            return self._draw(ctx, temp, top_k, c.top_p, c.min_p)

        if regime == "resampling":
            temp = min(c.hehv_max_temp, c.temp * (c.hehv_attn_vent_offset + c.hehv_attn_vent_coef * attn.varentropy))
            top_p = max(c.hehv_min_top_p, c.top_p - c.hehv_attn_ent_coef * attn.entropy)
            return self._draw(ctx, temp, c.top_k, top_p, c.min_p)

        return self._adaptive(ctx, ent, vent, attn)

    def _draw(self, ctx: StepContext, temp: float, top_k: int, top_p: float, min_p: float) -> int:
        ctx.record.update(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p)
        return sample_logits(ctx.logits, ctx.generator, temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p)

    def adaptive_params(self, ent: float, vent: float, attn: AttentionStats) -> tuple[float, int, float, float]:
        """(temperature, top_k, top_p, min_p) of the adaptive regime, entropix's formulas."""
        c = self.config
        logits_unc = ent + vent
        attn_unc = attn.entropy + attn.varentropy
        temp = c.temp * (1 + c.ada_temp_logits * logits_unc + c.ada_temp_attn * attn_unc
                         - c.ada_temp_agree * attn.agreement)
        top_p = min(1.0, max(0.1, c.top_p * (1 + c.ada_top_p * attn.varentropy)))
        base_k = c.ada_base_top_k if c.ada_base_top_k is not None else c.top_k
        top_k = int(min(100, max(1, round(base_k * (1 + c.ada_top_k_int * attn.interaction_strength
                                                    - c.ada_top_k_agree * attn.agreement)))))
        base_min_p = c.ada_base_min_p if c.ada_base_min_p is not None else c.min_p
        min_p = min(0.5, max(0.01, base_min_p * (1 - c.ada_min_p * logits_unc)))
        return max(temp, 0.0), top_k, top_p, min_p

    def _adaptive(self, ctx: StepContext, ent: float, vent: float, attn: AttentionStats) -> int:
        c = self.config
        temp, top_k, top_p, min_p = self.adaptive_params(ent, vent, attn)
        ctx.record.update(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p)
        if temp <= 0:
            return int(torch.argmax(ctx.logits))
        samples = draw(truncated_probs(ctx.logits, temp, top_k, top_p, min_p), ctx.generator, c.n_adaptive_samples)
        logp = torch.log_softmax(ctx.logits.float(), dim=-1)
        candidates = list(dict.fromkeys(samples))           # distinct draws, in draw order
        scores = [float(logp[t]) for t in candidates]
        used = "logprob"
        if c.adaptive_score == "lookahead" and len(candidates) > 1:
            if ctx.lookahead is None:
                self._warn_once("lookahead", "EntropySampler: adaptive_score='lookahead' but the engine offers no "
                                "lookahead; scoring by log-probability")
                used = "logprob (no lookahead)"
            else:
                result = ctx.lookahead(candidates)
                scores = [s + self._confidence(result, i) for i, s in enumerate(scores)]
                used = "lookahead"
        best = max(range(len(candidates)), key=lambda i: scores[i])
        ctx.record.update(adaptive_score=used, adaptive_candidates=candidates, adaptive_scores=scores)
        return candidates[best]

    def _confidence(self, result: Any, i: int) -> float:
        """entropix's confidence term, computed from candidate i's *next* step instead of the current one."""
        c = self.config
        ent, vent = (float(x) for x in token_entropy_varentropy(result.logits[i], bits=True))
        score = (1 - ent) * c.ada_score_logits_ent + (1 - vent) * c.ada_score_logits_vent
        if result.attention is not None:
            a = attention_metrics(result.attention[i], bits=True)
            score += ((1 - a.entropy) * c.ada_score_attn_ent + (1 - a.varentropy) * c.ada_score_attn_vent
                      + a.agreement * c.ada_score_agree + a.interaction_strength * c.ada_score_int)
        return score

    def accept(self, token: int) -> None:
        pass  # the only history used (the last token, for "treading") is read from ctx.tokens

    def reset(self) -> None:
        self._counts.clear()

    def clone(self) -> "EntropySampler":
        return copy.deepcopy(self)

    def __repr__(self) -> str:
        return f"EntropySampler(question_token={self.question_token}, pause_token={self.pause_token})"


def entropy_config_fields() -> list[str]:
    return [f.name for f in fields(EntropyConfig)]


__all__ = ["EntropyConfig", "EntropySampler", "REGIMES", "find_question_token", "find_pause_token",
           "entropy_config_fields"]
