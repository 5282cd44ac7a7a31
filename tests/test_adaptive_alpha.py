"""AlphaSampler: the seed's formulas at α = 0, 1, 2.5, the three states, the COLD lookahead and its fallback."""
import math

import pytest
import torch

from minillama.capture import CapturedAttention
from minillama.errors import SamplerArgumentError
from minillama.sampling.alpha import AlphaSampler, SamplerConfig
from minillama.sampling.base import LookaheadResult, Sampler, StepContext


def sig(x):
    return 1 / (1 + math.exp(-x))


# (α, temperature, top_k, top_p, rep_penalty), each from the seed's formula written out by hand
HAND = [
    (0.0, 0.1 + 1.2 / (1 + math.exp(1.5)), 57, 0.85, 1.0 + 0.3 / (1 + math.exp(2.0))),
    (1.0, 0.7, 105, 0.85 + 0.1 * (2 / (1 + math.exp(-0.8)) - 1), 1.15),
    (2.5, 0.1 + 1.2 / (1 + math.exp(-2.25)), int(10 + 190 * (math.atan(1.5) / math.pi + 0.5)),
     0.85 + 0.1 * (2 / (1 + math.exp(-2.0)) - 1), 1.0 + 0.3 / (1 + math.exp(-3.0))),
]


@pytest.mark.parametrize("alpha,temp,top_k,top_p,rep", HAND)
def test_formulas_at_alpha_0_1_2_5(alpha, temp, top_k, top_p, rep):
    c = SamplerConfig()
    assert c.temperature(alpha) == pytest.approx(temp)
    assert c.top_k(alpha) == top_k
    assert c.top_p(alpha) == pytest.approx(top_p)
    assert c.rep_penalty(alpha) == pytest.approx(rep)


def test_hand_numbers():
    c = SamplerConfig()
    assert c.temperature(0.0) == pytest.approx(0.31891, abs=1e-4)   # 0.1 + 1.2 · 0.18243
    assert c.top_k(2.5) == 164            # atan(1.5)/π = 0.31283: 10 + 190 · 0.81283 = 164.44
    assert c.rep_penalty(2.5) == pytest.approx(1.28577, abs=1e-4)
    assert [c.state(a) for a in (0.0, 0.6, 1.0, 1.8, 2.5)] == ["cold", "mixed", "mixed", "mixed", "hot"]


def one_hot_attention(n_heads=2, ctx_len=8):
    probs = torch.zeros(n_heads, ctx_len)
    probs[:, -1] = 1.0
    return CapturedAttention(probs={3: probs}, scores={3: torch.zeros(n_heads, ctx_len)})


def uniform_attention(n_heads=2, ctx_len=8):
    return CapturedAttention(probs={3: torch.full((n_heads, ctx_len), 1 / ctx_len)},
                             scores={3: torch.zeros(n_heads, ctx_len)})


def ctx(logits, att, tokens=(1, 2, 3), lookahead=None, seed=0):
    return StepContext(logits=logits, tokens=list(tokens), prompt_len=1, hidden=torch.zeros(4),
                       generator=torch.Generator().manual_seed(seed), attention=att, lookahead=lookahead)


PEAKED = torch.tensor([30.0] + [0.0] * 1023)
UNIFORM = torch.zeros(1024)


def test_alpha_definition_and_states():
    s = AlphaSampler(SamplerConfig(lookahead=False))
    assert isinstance(s, Sampler)
    # α = 4·(0.7·Ĥ_tok + 0.3·Ĥ_attn)
    c = ctx(PEAKED, one_hot_attention())
    s.sample(c)
    assert c.record["state"] == "cold" and c.record["alpha"] == pytest.approx(0.0, abs=1e-6)
    assert c.record["lookahead"] == "off"
    assert (c.record["temperature"], c.record["top_k"], c.record["top_p"]) == (0.4, 40, 0.85)
    c = ctx(PEAKED, uniform_attention())
    s.sample(c)
    assert c.record["state"] == "mixed" and c.record["alpha"] == pytest.approx(1.2, abs=1e-4)
    assert c.record["temperature"] == pytest.approx(SamplerConfig().temperature(c.record["alpha"]))
    c = ctx(UNIFORM, uniform_attention())
    s.sample(c)
    assert c.record["state"] == "hot" and c.record["alpha"] == pytest.approx(4.0, abs=1e-4)
    c = ctx(UNIFORM, None)                        # no attention: α = 4·Ĥ_tok
    s.sample(c)
    assert c.record["attn_entropy_norm"] is None and c.record["alpha"] == pytest.approx(4.0, abs=1e-4)
    assert s.state_counts == {"cold": 1, "mixed": 1, "hot": 2}


def test_alpha_window_averages():
    s = AlphaSampler(SamplerConfig(alpha_window=2, lookahead=False))
    s.sample(ctx(PEAKED, one_hot_attention()))
    c = ctx(UNIFORM, uniform_attention())
    s.sample(c)
    assert c.record["alpha_step"] == pytest.approx(4.0, abs=1e-4)
    assert c.record["alpha"] == pytest.approx(2.0, abs=1e-4)


def test_cold_lookahead_picks_min_score_candidate():
    seen = []

    def lookahead(cands):
        seen.append(list(cands))
        # candidate 0 (the argmax) leads to a uniform next step, candidate 2 to a near-certain one
        rows = {0: torch.zeros(16), 1: torch.tensor([1.0] * 8 + [0.0] * 8), 2: torch.tensor([20.0] + [0.0] * 15)}
        return LookaheadResult(candidates=list(cands), logits=torch.stack([rows[c] for c in cands]),
                               hidden=torch.zeros(len(cands), 4), attention=None)

    logits = torch.full((1024,), -10.0)
    logits[0], logits[1], logits[2] = 12.0, 11.0, 10.0
    s = AlphaSampler()
    c = ctx(logits, one_hot_attention(), lookahead=lookahead)
    token = s.sample(c)
    assert c.record["state"] == "cold" and c.record["lookahead"] == "used"
    assert seen == [[0, 1, 2]]
    scores = c.record["candidate_scores"]
    assert token == 2 and scores[2] == min(scores)
    assert scores[0] == pytest.approx(0.8 * 4.0)          # uniform over 16: 4 bits, varentropy 0


def test_cold_without_lookahead_falls_back_and_records():
    logits = torch.full((1024,), -10.0)
    logits[0] = 12.0
    c = ctx(logits, one_hot_attention(), lookahead=None)
    AlphaSampler().sample(c)
    assert c.record["state"] == "cold" and c.record["lookahead"] == "unavailable"


def test_repetition_penalty_covers_the_last_128_tokens():
    # two near-tied tokens in COLD; with one candidate the lookahead returns the penalized argmax directly
    logits = torch.full((1024,), -20.0)
    logits[0], logits[1] = 10.0, 9.9
    s = AlphaSampler(SamplerConfig(lookahead_candidates=1))
    recent = ctx(logits, one_hot_attention(), tokens=[5] * 10 + [0], lookahead=lambda c: None)
    assert s.sample(recent) == 1 and recent.record["rep_penalty"] > 1.0
    old = ctx(logits, one_hot_attention(), tokens=[0] + [5] * 128, lookahead=lambda c: None)
    assert s.sample(old) == 0


def test_validation():
    for bad in (dict(hot_point=0.5), dict(base_top_p=0.0), dict(token_weight=1.5), dict(alpha_window=0),
                dict(lookahead_candidates=0), dict(entropy_weight=-1.0), dict(alpha_scale=0.0)):
        with pytest.raises(SamplerArgumentError):
            SamplerConfig(**bad)


def test_clone_is_independent():
    s = AlphaSampler(SamplerConfig(alpha_window=4, lookahead=False))
    s.sample(ctx(PEAKED, one_hot_attention()))
    twin = s.clone()
    s.sample(ctx(UNIFORM, uniform_attention()))
    assert twin.state_counts == {"cold": 1, "mixed": 0, "hot": 0}
    assert len(twin._alphas) == 1 and len(s._alphas) == 2
    s.reset()
    assert sum(s.state_counts.values()) == 0
