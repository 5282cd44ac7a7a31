"""DRµGS inside the engine: θ=0 is greedy, seeds repeat, K/V noise never reaches the cache, the cold shower."""
from __future__ import annotations

import pytest
import torch

from minillama import Drugs, Engine
from minillama.errors import SamplerArgumentError

ALL_SITES = ("H", "Q", "pK", "K", "V", "A")
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def engine(stories_dir) -> Engine:
    return Engine.from_pretrained(stories_dir, block_size=8)


def cached_kv(engine: Engine, seq) -> tuple[torch.Tensor, torch.Tensor]:
    slots = engine.cache.read_slots(seq, len(seq))
    return engine.cache.k[:, :, slots].clone(), engine.cache.v[:, :, slots].clone()


def clean_kv(engine: Engine, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    seq = engine.cache.new_sequence()
    engine._forward([seq], [tokens])
    kv = cached_kv(engine, seq)
    engine.cache.free(seq)
    return kv


def test_zero_dose_is_plain_greedy(engine):
    greedy = engine.generate(PROMPT, max_new_tokens=40)
    off = engine.generate(PROMPT, max_new_tokens=40, drugs=Drugs(dose_theta=0.0, sites=ALL_SITES), seed=1)
    assert off.tokens == greedy.tokens


@pytest.mark.parametrize("site", ALL_SITES)
def test_same_seed_same_tokens(engine, site):
    drugs = Drugs(dose_theta=0.5, sites=site)
    a = engine.generate(PROMPT, max_new_tokens=30, drugs=drugs, seed=11)
    b = engine.generate(PROMPT, max_new_tokens=30, drugs=drugs, seed=11)
    assert a.tokens == b.tokens


def test_different_seeds_give_different_continuations(engine):
    drugs = Drugs(dose_theta=0.6, sites=("K", "Q"))
    texts = {engine.generate(PROMPT, max_new_tokens=40, drugs=drugs, seed=s).text for s in range(4)}
    assert len(texts) > 1


def test_n_samples_each_get_their_own_noise(engine):
    out = engine.generate(PROMPT, max_new_tokens=40, drugs=Drugs(dose_theta=0.6, sites=ALL_SITES), seed=5, n=3)
    assert len({c.text for c in out.choices}) == 3
    alone = engine.generate(PROMPT, max_new_tokens=40, drugs=Drugs(dose_theta=0.6, sites=ALL_SITES), seed=5)
    assert alone.text == out.choices[0].text           # a sample's noise does not depend on its batch


@pytest.mark.parametrize("kind", ["rotation", "rotation-compat"])
def test_pk_is_k_for_isotropic_noise_and_differs_for_compat(engine, kind):
    """RoPE is a rotation and a Gaussian direction is isotropic, so noise before RoPE (pK) has the same distribution
    as noise after it (K), and the engine draws both alike; DRUGS' uniform [0, 1) directions are not isotropic."""
    ids = engine.tokenizer.encode(PROMPT + ", there was a little girl")
    outs = {}
    for site in ("pK", "K"):
        seq = engine.cache.new_sequence()
        engine._forward([seq], [ids[:-1]])
        plan = Drugs(dose_theta=0.5, sites=site, kind=kind).plan(engine.config.n_layers,
                                                                 [torch.Generator().manual_seed(0)])
        outs[site] = engine._forward([seq], [ids[-1:]], noise=plan).logits[0]
        engine.cache.free(seq)
    clean = engine.logits(ids)[-1]
    assert torch.equal(outs["pK"], outs["K"]) is (kind == "rotation")
    assert not torch.allclose(outs["pK"], clean) and not torch.allclose(outs["K"], clean)


@pytest.mark.parametrize("sites", [("K", "pK"), ALL_SITES])
def test_streams_of_different_lengths_stepped_together_get_their_own_noise(engine, sites):
    """Batched decode pads the shorter context; each row still draws its own noise over its real positions only."""
    drugs = Drugs(dose_theta=0.5, sites=sites)
    prompts = ["Once upon a time", "The little dog ran to the park with his ball and"]
    alone = [engine.generate(p, max_new_tokens=12, drugs=drugs, seed=3 + i).tokens for i, p in enumerate(prompts)]
    streams = [engine.stream(p, max_new_tokens=12, drugs=drugs, seed=3 + i) for i, p in enumerate(prompts)]
    while not all(s.finished for s in streams):
        engine.step([s for s in streams if not s.finished])
    assert [s.completion.tokens for s in streams] == alone
    assert engine.cache.manager.used_blocks == 0


def test_k_and_v_noise_perturb_a_copy_never_the_cache(engine):
    seq = engine.cache.new_sequence()
    ids = engine.tokenizer.encode(PROMPT + ", there was a little girl")
    engine._forward([seq], [ids])
    before_k, before_v = cached_kv(engine, seq)
    plan = Drugs(dose_theta=0.8, sites=("pK", "K", "V")).plan(engine.config.n_layers, [torch.Generator().manual_seed(0)])
    engine._forward([seq], [[5]], noise=plan)
    k, v = cached_kv(engine, seq)
    n = len(ids)
    assert torch.equal(k[:, :, :n], before_k) and torch.equal(v[:, :, :n], before_v)   # context untouched
    clean_k, _ = clean_kv(engine, seq.tokens)
    # the new token's first-layer keys are clean; later layers saw noisy attention, so it is marked drugged
    assert (k[0, :, n] - clean_k[0, :, n]).abs().max() <= 1e-5
    assert seq.drugged_from == n
    engine.cache.free(seq)


def test_cold_shower_recomputes_exactly_the_drugged_span(engine):
    engine.reset_chat()
    messages = [{"role": "user", "content": PROMPT}]
    engine.chat(messages, max_new_tokens=30, drugs=Drugs(dose_theta=0.6, sites=ALL_SITES), seed=2)
    seq = engine._chat_seq
    start = seq.drugged_from
    assert start is not None and start > 0               # the prompt was prefilled clean
    k, _ = cached_kv(engine, seq)
    k_clean, v_clean = clean_kv(engine, seq.tokens)
    assert (k - k_clean).abs().max() > 1e-3              # noise did reach the cache through later layers
    recomputed = engine.cold_shower()
    assert recomputed == len(seq) - start                # cost: the drugged span, not the context
    k, v = cached_kv(engine, seq)
    # equal to a clean prefill up to float32 rounding (1e-5, relative to keys of magnitude ~15)
    assert torch.allclose(k, k_clean, atol=1e-5, rtol=1e-5) and torch.allclose(v, v_clean, atol=1e-5, rtol=1e-5)
    nxt = engine._forward([seq], [[5]]).logits[0]
    assert (nxt - engine.logits(seq.tokens)[-1]).abs().max() <= 1e-4
    assert engine.cold_shower() == 0
    engine.reset_chat()


def test_cold_shower_every_bounds_the_drugged_span(engine):
    drugs = Drugs(dose_theta=0.5, sites="H", cold_shower_every=5)
    stream = engine.stream(PROMPT, max_new_tokens=40, drugs=drugs, seed=4)
    seq = stream._runs[0].seq
    spans = []
    for _ in stream:
        spans.append(seq.drugged_count)
    assert max(spans) <= 6 and stream.completion.stats.new_tokens == 40


def test_drugs_with_context_shift(stories_dir):
    engine = Engine.from_pretrained(stories_dir, context_length=64, context_shift=True)
    out = engine.generate(PROMPT, max_new_tokens=300, drugs=Drugs(dose_theta=0.3, sites=ALL_SITES), seed=1)
    assert out.stats.new_tokens == 300 and engine.cache.manager.used_blocks == 0


def test_a_shape_that_does_not_fit_the_model_is_named(engine):
    with pytest.raises(SamplerArgumentError, match="dose_shape"):
        engine.generate(PROMPT, max_new_tokens=3, drugs=Drugs(dose_theta=0.3, sites="K", dose_shape=[1.0, 0.5]))
    assert engine.cache.manager.used_blocks == 0
