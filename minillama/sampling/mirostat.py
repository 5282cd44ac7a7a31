"""Mirostat v1 and v2 (Basu et al. 2021): final samplers that steer the surprise -log2 p of the drawn tokens toward
tau by adapting a truncation threshold mu (mu_0 = 2·tau; after each token mu -= eta·(surprise - tau)).

llama.cpp updates mu inside its draw; here the draw remembers the truncated distribution and accept(token) applies
the update for the token actually committed. With the engine's sample-then-accept loop this is the same update,
and a clone that accepts a different token moves only its own mu.
"""
from __future__ import annotations

import math

import torch

from .base import StepContext
from .chain import Candidates, ChainElement, check_number, draw_index


class _Mirostat(ChainElement):
    def __init__(self, tau: float, eta: float) -> None:
        check_number("mirostat_tau", tau, 0.0, None)
        check_number("mirostat_eta", eta, 0.0, None)
        self.tau, self.eta = float(tau), float(eta)
        self.mu = 2.0 * self.tau
        self._drawn_from: tuple[torch.Tensor, torch.Tensor] | None = None   # (token ids, probs) of the last draw

    def _draw(self, kept: Candidates, ctx: StepContext) -> Candidates:
        ctx.record["mu"] = self.mu
        probs = kept.probs()
        self._drawn_from = (kept.token_ids(), probs)
        return kept.select(draw_index(probs, ctx.generator) if len(kept) > 1 else 0)

    def accept(self, token: int) -> None:
        if self._drawn_from is None:
            return
        ids, probs = self._drawn_from
        self._drawn_from = None
        hit = (ids == token).nonzero()
        if hit.numel() == 0:
            return       # a token forced from outside the truncated set has no surprise here: leave mu alone
        surprise = -math.log2(float(probs[int(hit[0])]))
        self.mu -= self.eta * (surprise - self.tau)

    def reset(self) -> None:
        self.mu = 2.0 * self.tau
        self._drawn_from = None

    def clone(self) -> "_Mirostat":
        twin = object.__new__(type(self))
        twin.__dict__.update(self.__dict__)    # floats and immutable tensors: a shallow copy is a deep copy here
        return twin


class MirostatV2(_Mirostat):
    """Keeps the tokens whose surprise -log2 p is at most mu (at least the top one), renormalises, draws.

    llama.cpp sorts the whole set and cuts at the first token above mu; since surprise falls with the logit, the
    same set is {logit >= logsumexp - mu·ln 2}, found without a sort.
    """
    name = "mirostat-v2"

    def apply(self, candidates: Candidates, ctx: StepContext) -> Candidates:
        logits = candidates.logits
        keep = logits >= torch.logsumexp(logits, dim=0) - self.mu * math.log(2.0)
        if not bool(keep.any()):
            return self._draw(candidates.top(1), ctx)
        kept = candidates if bool(keep.all()) else candidates.take(keep, candidates.is_sorted)
        return self._draw(kept, ctx)

    def describe(self) -> str:
        return f"mirostat-v2(tau={self.tau:g}, eta={self.eta:g}, mu={self.mu:.3g})"


class MirostatV1(_Mirostat):
    """Estimates the Zipf exponent s from the top m tokens, derives the k that yields surprise mu for a Zipfian
    vocabulary of size N, keeps the top k, renormalises and draws."""
    name = "mirostat"

    def __init__(self, tau: float, eta: float, m: int = 100) -> None:
        super().__init__(tau, eta)
        check_number("mirostat m", m, 2, None, integer=True)
        self.m = m

    def zipf_k(self, probs: torch.Tensor, n_vocab: int) -> float:
        """k = (eps·2^mu / (1 - N^-eps))^(1/s), eps = s - 1, with s fitted by least squares on the top m ratios."""
        pairs = min(self.m - 1, probs.shape[0] - 1)
        rank = torch.arange(pairs, dtype=torch.float64)
        t = torch.log((rank + 2) / (rank + 1))
        p = probs[:pairs + 1].to(torch.float64)
        b = torch.log(p[:-1] / p[1:])
        s_hat = float((t * b).sum() / (t * t).sum())
        if s_hat <= 0.0:
            return math.inf        # a flat head: no Zipfian decay to fit, keep everything
        eps = s_hat - 1.0
        try:
            return (eps * 2.0 ** self.mu / (1.0 - float(n_vocab) ** -eps)) ** (1.0 / s_hat)
        except (OverflowError, ZeroDivisionError):
            return math.inf

    def apply(self, candidates: Candidates, ctx: StepContext) -> Candidates:
        head = candidates.top(self.m)          # the fit needs only the m most likely tokens, not a full sort
        head_probs = torch.exp(head.logits - torch.logsumexp(candidates.logits, dim=0))
        positive = int((head_probs > 0).sum())   # zero-probability tokens can never be drawn; keep them out of the fit
        if positive <= 1:
            return self._draw(head.head(1), ctx)
        k = self.zipf_k(head_probs[:positive], candidates.n_vocab)
        if not math.isfinite(k) or k >= len(candidates):
            return self._draw(candidates, ctx)
        return self._draw(candidates.top(max(int(k), 1)), ctx)

    def describe(self) -> str:
        return f"mirostat(tau={self.tau:g}, eta={self.eta:g}, m={self.m}, mu={self.mu:.3g})"
