"""RD-NET: mix=0 is exactly the base sampler, the drift schedule, seeded per-sequence noise, argument checks."""
import math

import pytest
import torch

from minillama.errors import SamplerArgumentError
from minillama.sampling.alpha import AlphaSampler, SamplerConfig
from minillama.sampling.base import Greedy, Sampler, StepContext
from minillama.sampling.rdnet import RDNet

VOCAB, DIM = 64, 16


def steps(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(VOCAB, generator=g) * 2, torch.randn(DIM, generator=g)) for _ in range(n)]


def run(sampler, data, gen_seed=1):
    gen = torch.Generator().manual_seed(gen_seed)
    tokens, records = [1, 2, 3], []
    for logits, hidden in data:
        ctx = StepContext(logits=logits, tokens=list(tokens), prompt_len=3, hidden=hidden, generator=gen)
        t = sampler.sample(ctx)
        sampler.accept(t)
        tokens.append(t)
        records.append(ctx.record)
    return tokens[3:], records


def test_mix_zero_is_exactly_the_base_sampler():
    data = steps(30)
    base = AlphaSampler(SamplerConfig(lookahead=False))        # a stochastic base: the generator must be untouched
    plain, _ = run(base.clone(), data)
    wrapped, records = run(RDNet(base.clone(), mix=0.0), data)
    assert wrapped == plain
    assert records[0]["rdnet_step"] == 0 and records[-1]["rdnet_step"] == 29
    greedy, _ = run(RDNet(mix=0.0), data)
    assert greedy == [int(torch.argmax(l)) for l, _ in data]


def test_memory_changes_tokens_reproducibly_and_uses_the_sequence_generator():
    data = steps(30)
    greedy = [int(torch.argmax(l)) for l, _ in data]
    a, recs = run(RDNet(mix=3.0, seed=7), data, gen_seed=1)
    b, _ = run(RDNet(mix=3.0, seed=7), data, gen_seed=1)
    c, _ = run(RDNet(mix=3.0, seed=7), data, gen_seed=2)
    assert a == b and a != greedy
    assert recs[0]["rdnet_drift"] == pytest.approx(0.1) and recs[0]["rdnet_mix"] == 3.0
    # a different drift stream gives a different memory read (the tokens may or may not differ)
    r1, r2 = RDNet(mix=1.0, seed=7), RDNet(mix=1.0, seed=7)
    logits, hidden = data[0]
    mk = lambda s: StepContext(logits=logits, tokens=[1], prompt_len=1, hidden=hidden,
                               generator=torch.Generator().manual_seed(s))
    b1, _ = r1.memory_bias(mk(1), 0)
    b2, _ = r2.memory_bias(mk(2), 0)
    b3, _ = RDNet(mix=1.0, seed=7).memory_bias(mk(1), 0)
    assert not torch.equal(b1, b2) and torch.equal(b1, b3)
    assert float(b1.mean()) == pytest.approx(0.0, abs=1e-5) and float(b1.std()) == pytest.approx(1.0, abs=1e-3)


def test_drift_schedule():
    r = RDNet(drift_start=0.2, drift_floor=0.05, decay=100.0)
    assert r.drift_at(0) == pytest.approx(0.2)
    assert r.drift_at(100) == pytest.approx(0.05 + 0.15 * math.exp(-1))
    assert r.drift_at(10**6) == pytest.approx(0.05)
    assert all(r.drift_at(t) >= r.drift_at(t + 1) for t in range(0, 500, 7))


def test_lm_head_projection():
    head = torch.randn(VOCAB, DIM, generator=torch.Generator().manual_seed(3))
    r = RDNet(lm_head=lambda h: head @ h, mix=2.0, memory_size=8)
    toks, _ = run(r, steps(5))
    assert len(toks) == 5 and r._values.shape == (8, DIM)
    bad = RDNet(lm_head=lambda h: torch.zeros(VOCAB + 1), mix=1.0)
    with pytest.raises(SamplerArgumentError, match="lm_head"):
        run(bad, steps(1))


def test_dim_from_hidden_and_mismatch():
    r = RDNet(mix=1.0)
    run(r, steps(1))
    assert r.dim == DIM
    with pytest.raises(SamplerArgumentError, match="dim"):
        run(RDNet(mix=1.0, dim=DIM + 1), steps(1))


@pytest.mark.parametrize("kwargs", [dict(memory_size=0), dict(memory_size=-3), dict(mix=-0.1),
                                    dict(drift_start=-1.0), dict(drift_floor=-0.1),
                                    dict(drift_start=0.01, drift_floor=0.1), dict(decay=0.0)])
def test_bad_arguments(kwargs):
    with pytest.raises(SamplerArgumentError):
        RDNet(**kwargs)


def test_protocol_clone_and_reset():
    base = AlphaSampler(SamplerConfig(lookahead=False))
    r = RDNet(base, mix=1.0)
    assert isinstance(r, Sampler) and r.capture == base.capture
    assert RDNet().capture is None and isinstance(RDNet().base, Greedy)
    run(r, steps(3))
    twin = r.clone()
    run(r, steps(2))
    assert (r.step, twin.step) == (5, 3)
    assert twin.base is not r.base and sum(twin.base.state_counts.values()) == 3
    r.reset()
    assert r.step == 0 and sum(r.base.state_counts.values()) == 0
