"""The adaptive samplers inside the engine's decode loop on stories260K: records, lookahead on cache forks, RD-NET."""
import pytest
import torch

from minillama.capture import CaptureRequest
from minillama.engine import Engine
from minillama.sampling.alpha import AlphaSampler, SamplerConfig
from minillama.sampling.base import Greedy
from minillama.sampling.entropy import REGIMES, EntropySampler
from minillama.sampling.rdnet import RDNet

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def engine(stories_dir):
    return Engine.from_pretrained(stories_dir)


class LookaheadProbe(Greedy):
    """Greedy, but at one step asks the engine for a lookahead on three candidates and keeps what it saw."""
    capture = CaptureRequest(layers=(-1,))

    def __init__(self, at_step=3):
        self.at_step, self.step, self.seen = at_step, 0, None

    def sample(self, ctx):
        if self.step == self.at_step:
            cands = [int(t) for t in torch.topk(ctx.logits, 3).indices]
            self.seen = (list(ctx.tokens), cands, ctx.lookahead(cands))
        self.step += 1
        return super().sample(ctx)

    def clone(self):
        return self        # the test reads the probe the engine used


def test_lookahead_on_forks_equals_recomputation_and_leaves_the_parent(engine):
    probe = LookaheadProbe()
    out = engine.generate(PROMPT, max_new_tokens=8, sampler=probe, seed=0)
    assert out.tokens == engine.generate(PROMPT, max_new_tokens=8).tokens      # the parent sequence is untouched
    history, cands, result = probe.seen
    assert result.candidates == cands and result.logits.shape == (3, engine.config.vocab_size)
    for i, c in enumerate(cands):
        expected = engine.logits(history + [c])[-1]
        torch.testing.assert_close(result.logits[i], expected, atol=1e-4, rtol=1e-4)
        probs = result.attention[i].probs[engine.config.n_layers - 1]
        assert probs.shape[-1] == len(history) + 1
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[0]))


def test_entropy_sampler_records_regimes_and_repeats_with_the_seed(engine):
    sampler = EntropySampler(tokenizer=engine.tokenizer)
    assert engine.tokenizer.decode([sampler.question_token]).strip() == "?"
    a = engine.generate(PROMPT, max_new_tokens=16, sampler=sampler, seed=3, records=True)
    b = engine.generate(PROMPT, max_new_tokens=16, sampler=sampler, seed=3, records=True)
    assert a.tokens == b.tokens
    assert len(a.records) == len(a.tokens) and all(r["regime"] in REGIMES for r in a.records)
    assert all(r["attention_captured"] for r in a.records)


def test_alpha_sampler_uses_the_engine_lookahead_in_cold(engine):
    sampler = AlphaSampler(SamplerConfig(cold_point=1.5, hot_point=2.5))   # mostly COLD on this model
    c = engine.generate(PROMPT, max_new_tokens=12, sampler=sampler, seed=0, records=True)
    used = [r for r in c.records if r.get("lookahead") == "used"]
    assert used and all(r["state"] == "cold" for r in used)
    for r, token in zip(c.records, c.tokens):
        if r.get("lookahead") == "used":
            assert token == r["candidates"][r["candidate_scores"].index(min(r["candidate_scores"]))]


def test_rdnet_mix_zero_is_the_base_and_lm_head_projection_runs(engine):
    base = AlphaSampler(SamplerConfig(lookahead=False))
    plain = engine.generate(PROMPT, max_new_tokens=12, sampler=base, seed=5)
    wrapped = engine.generate(PROMPT, max_new_tokens=12, sampler=RDNet(base, mix=0.0), seed=5)
    assert wrapped.tokens == plain.tokens
    head = engine.model.output_weight().float()
    r = RDNet(lm_head=lambda h: head @ h, mix=2.0, seed=1)
    c = engine.generate(PROMPT, max_new_tokens=12, sampler=r, seed=5, records=True)
    assert [rec["rdnet_step"] for rec in c.records] == list(range(len(c.tokens)))
    assert c.records[0]["rdnet_drift"] == pytest.approx(r.drift_at(0))
