"""The llama.cpp sampler chain, element by element, against results computed by hand on constructed logits.

Where a case also appears in llama.cpp's tests/test-sampling.cpp, its expected numbers are the same.
"""
import math

import pytest
import torch

from minillama.errors import GenerationError, SamplerArgumentError
from minillama.sampling.base import Greedy, StepContext
from minillama.sampling.chain import (XTC, Candidates, Dist, DynamicTemperature, GreedyFinal, LogitBias, MinP,
                                      SamplerChain, Temperature, TopK, TopNSigma, TopP, Typical)
from minillama.sampling.dry import DRY, breakers_from_text
from minillama.sampling.mirostat import MirostatV1, MirostatV2
from minillama.sampling.penalties import Penalties


def make_ctx(logits, tokens=(), seed=0):
    if not isinstance(logits, torch.Tensor):
        logits = torch.tensor(logits, dtype=torch.float32)
    return StepContext(logits=logits, tokens=list(tokens), prompt_len=len(tokens), hidden=torch.zeros(4),
                       generator=torch.Generator().manual_seed(seed))


def from_probs(probs):
    return [math.log(p) for p in probs]


def apply(element, logits, tokens=(), seed=0):
    ctx = make_ctx(logits, tokens, seed)
    return element.apply(Candidates.from_logits(ctx.logits), ctx)


def dist_of(candidates):
    """token id -> probability over a candidate set"""
    probs = torch.softmax(candidates.logits.double(), 0)
    return {int(t): float(p) for t, p in zip(candidates.token_ids(), probs)}


def assert_dist(candidates, expected, tol=1e-5):
    got = dist_of(candidates)
    assert set(got) == set(expected), (got, expected)
    for token, p in expected.items():
        assert got[token] == pytest.approx(p, abs=tol), (token, got, expected)


P4 = [0.1, 0.2, 0.3, 0.4]


# ---------------------------------------------------------------------------------------------- candidates, draws

def test_candidates_start_as_the_vocabulary_and_top_k_sorts_partially():
    c = Candidates.from_logits(torch.tensor([1.0, 5.0, 3.0, 4.0, 2.0]))
    assert len(c) == 5 and c.ids is None and not c.is_sorted
    top = TopK(2).apply(c, make_ctx([0.0]))
    assert top.token_ids().tolist() == [1, 3] and top.logits.tolist() == [5.0, 4.0] and top.is_sorted
    assert TopK(0).apply(c, make_ctx([0.0])) is c
    everything = TopK(10).apply(c, make_ctx([0.0]))
    assert everything.token_ids().tolist() == [1, 3, 2, 4, 0]


def test_the_chain_never_writes_to_the_step_logits():
    logits = torch.randn(300, generator=torch.Generator().manual_seed(3))
    before = logits.clone()
    chain = SamplerChain([LogitBias({3: 2.0}), Penalties(8, 1.3, 0.2, 0.1), DRY(0.8, 1.75, 2, 16, [[7]]),
                          TopNSigma(3.0), TopK(50), Typical(0.95), TopP(0.9), MinP(0.01), XTC(1.0, 0.05),
                          DynamicTemperature(0.8, 0.3)], Dist())
    ctx = make_ctx(logits, tokens=[1, 2, 3, 1, 2, 3, 1, 2])
    for _ in range(5):
        chain.accept(chain.sample(ctx))
    assert torch.equal(logits, before)


def test_dist_draws_by_inverting_the_cdf_with_one_uniform_from_the_generator():
    logits = torch.tensor(from_probs([0.5, 0.3, 0.2]))
    ctx = make_ctx(logits, seed=11)
    twin = torch.Generator().manual_seed(11)
    for _ in range(20):
        u = float(torch.rand(1, generator=twin, dtype=torch.float64))
        expected = 0 if u < 0.5 else 1 if u < 0.8 else 2
        assert SamplerChain([], Dist()).sample(ctx) == expected


def test_dist_frequencies_match_the_distribution():
    ctx = make_ctx(from_probs([0.6, 0.3, 0.1]), seed=5)
    chain = SamplerChain([], Dist())
    counts = [0, 0, 0]
    for _ in range(3000):
        counts[chain.sample(ctx)] += 1
    for got, p in zip(counts, [0.6, 0.3, 0.1]):
        assert abs(got / 3000 - p) < 0.03


def test_dist_with_every_logit_banned_says_so():
    ctx = make_ctx([0.0, 1.0])
    chain = SamplerChain([LogitBias({0: -math.inf, 1: -math.inf})], Dist())
    with pytest.raises(GenerationError, match="-inf"):
        chain.sample(ctx)


def test_greedy_final_is_exactly_argmax_and_takes_the_first_of_ties():
    logits = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    ctx = make_ctx(logits)
    assert SamplerChain([], GreedyFinal()).sample(ctx) == int(torch.argmax(logits)) == Greedy().sample(ctx)
    assert SamplerChain([], GreedyFinal()).sample(make_ctx([1.0, 3.0, 3.0, 0.0])) == 1


# --------------------------------------------------------------------------------------------- temperature

def test_temperature_divides_logits_and_zero_keeps_only_the_max():
    out = apply(Temperature(0.5), [2.0, 1.0, 0.0])
    assert out.logits.tolist() == [4.0, 2.0, 0.0]
    for temp in (0.0, -1.0):
        # llama.cpp test_temp({0.1,0.2,0.3,0.4}, temp 0) -> {0,0,0,1}
        out = apply(Temperature(temp), from_probs(P4))
        assert out.token_ids().tolist() == [3]


def test_dynamic_temperature_maps_normalised_entropy_to_the_range():
    probs = [0.5, 0.25, 0.125, 0.125]
    entropy = -sum(p * math.log(p) for p in probs)          # 1.2130 nats
    normalized = entropy / math.log(4)                        # 0.8750
    low, high = 1.0 - 0.5, 1.0 + 0.5
    for exponent in (1.0, 2.0):
        expected_t = low + (high - low) * normalized ** exponent
        ctx = make_ctx(from_probs(probs))
        out = DynamicTemperature(1.0, 0.5, exponent).apply(Candidates.from_logits(ctx.logits), ctx)
        assert ctx.record["temperature"] == pytest.approx(expected_t, rel=1e-5)
        expected = [p ** (1 / expected_t) for p in probs]
        assert_dist(out, {i: e / sum(expected) for i, e in enumerate(expected)})
    # a flat set has H = ln N: the top of the range; T_min is clamped at 0
    ctx = make_ctx([0.0] * 8)
    DynamicTemperature(0.3, 0.5).apply(Candidates.from_logits(ctx.logits), ctx)
    assert ctx.record["temperature"] == pytest.approx(0.8)
    # range 0 is plain temperature (llama.cpp test_temp_ext with delta 0)
    assert_dist(apply(DynamicTemperature(1.0, 0.0), from_probs(P4)), dict(enumerate(P4)))


# --------------------------------------------------------------------------------------------- truncations

def test_top_p_keeps_the_smallest_head_reaching_p():
    # llama.cpp test_top_p: p 0.7 -> {0.4, 0.3} renormalised; 0.8 -> three; 0 -> one; 1 -> all
    assert_dist(apply(TopP(0.7), from_probs(P4)), {3: 0.571429, 2: 0.428571})
    assert_dist(apply(TopP(0.8), from_probs(P4)), {3: 0.44444, 2: 0.33333, 1: 0.22222})
    assert apply(TopP(0.0), from_probs(P4)).token_ids().tolist() == [3]
    assert len(apply(TopP(1.0), from_probs(P4))) == 4
    assert apply(TopP(0.3, min_keep=3), from_probs(P4)).token_ids().tolist() == [3, 2, 1]


def test_top_p_on_a_large_unsorted_set_matches_a_full_sort_both_when_the_top_256_suffice_and_when_not():
    gen = torch.Generator().manual_seed(1)
    for scale in (8.0, 0.01):        # peaked: the nucleus is in the top 256; nearly flat: it is not
        logits = torch.randn(3000, generator=gen) * scale
        out = apply(TopP(0.9), logits)
        order = torch.argsort(logits, descending=True, stable=True)
        n = int((torch.cumsum(torch.softmax(logits, 0)[order], 0) < 0.9).sum()) + 1
        assert out.is_sorted and len(out) == n
        assert sorted(out.token_ids().tolist()) == sorted(order[:n].tolist())
        assert (n < 256) == (scale == 8.0)


def test_min_p_keeps_tokens_at_least_p_times_the_top_probability():
    # llama.cpp test_min_p cases
    assert len(apply(MinP(0.24), from_probs(P4))) == 4
    assert_dist(apply(MinP(0.26), from_probs(P4)), {1: 0.2 / 0.9, 2: 0.3 / 0.9, 3: 0.4 / 0.9})
    assert_dist(apply(MinP(0.74), from_probs(P4)), {2: 0.3 / 0.7, 3: 0.4 / 0.7})
    assert apply(MinP(1.0), from_probs(P4)).token_ids().tolist() == [3]
    assert apply(MinP(1.0, min_keep=2), from_probs(P4)).token_ids().tolist() == [3, 2]


def test_min_keep_means_a_chain_never_runs_dry():
    flat = [0.0] * 6
    assert len(apply(MinP(1.0), flat)) == 6          # every token equals the max
    chain = SamplerChain([MinP(1.0), TopP(0.0), Typical(0.0), XTC(1.0, 0.0), TopNSigma(0.01)], Dist())
    ctx = make_ctx(from_probs([0.4, 0.3, 0.2, 0.1]))
    assert len(chain.candidates(ctx)) >= 1
    assert chain.sample(ctx) in range(4)


def test_typical_keeps_tokens_whose_surprise_is_closest_to_the_entropy():
    probs = [0.5, 0.3, 0.15, 0.05]
    entropy = -sum(p * math.log(p) for p in probs)                       # 1.1421
    shift = [abs(-math.log(p) - entropy) for p in probs]                 # 0.449, 0.062, 0.755, 1.854
    assert sorted(range(4), key=shift.__getitem__) == [1, 0, 2, 3]
    # running mass in that order: 0.3, 0.8, 0.95, 1.0 -> first above 0.5 is the second token
    assert sorted(apply(Typical(0.5), from_probs(probs)).token_ids().tolist()) == [0, 1]
    assert apply(Typical(0.25), from_probs(probs)).token_ids().tolist() == [1]
    # llama.cpp test_typical cases
    assert apply(Typical(0.5), from_probs([0.97, 0.01, 0.01, 0.01])).token_ids().tolist() == [0]
    assert sorted(apply(Typical(0.5), from_probs([0.4, 0.2, 0.2, 0.2])).token_ids().tolist()) == [1, 2, 3]


def test_top_n_sigma_cuts_below_max_minus_n_standard_deviations():
    logits = [4.0, 2.0, 0.0, 0.0, 0.0, -6.0]
    std = math.sqrt(sum(x * x for x in logits) / 6)          # mean 0, population std sqrt(56/6) = 3.055
    assert 4.0 - std == pytest.approx(0.945, abs=1e-3)
    assert apply(TopNSigma(1.0), logits).token_ids().tolist() == [0, 1]
    assert apply(TopNSigma(2.0), logits).token_ids().tolist() == [0, 1, 2, 3, 4]      # cut at -2.11
    # llama.cpp test_top_n_sigma: n 1 on {0.1..0.4} keeps {0.3, 0.4}; n 0 is off; n 3 keeps all
    assert_dist(apply(TopNSigma(1.0), from_probs(P4)), {2: 0.428571, 3: 0.571429})
    assert len(apply(TopNSigma(0.0), from_probs(P4))) == 4
    assert len(apply(TopNSigma(3.0), from_probs(P4))) == 4
    # earlier bans (-inf) are left out of the statistics
    banned = apply(TopNSigma(1.0), [4.0, 2.0, 0.0, 0.0, 0.0, -6.0, -math.inf])
    assert banned.token_ids().tolist() == [0, 1]


def test_xtc_removes_all_top_choices_above_the_threshold_but_the_least_likely():
    probs = [0.4, 0.3, 0.2, 0.1]
    # llama.cpp test_xtc: thresholds 0.09 / 0.19 / 0.29 leave {0.1} / {0.2, 0.1} / {0.3, 0.2, 0.1}
    for threshold, kept in ((0.09, [3]), (0.19, [2, 3]), (0.29, [1, 2, 3]), (0.39, [0, 1, 2, 3])):
        assert apply(XTC(1.0, threshold), from_probs(probs)).token_ids().tolist() == kept
    assert len(apply(XTC(1.0, 0.6), from_probs(probs))) == 4          # > 0.5 disables
    assert len(apply(XTC(1.0, 0.09, min_keep=2), from_probs(probs))) == 4


def test_xtc_fires_with_its_probability_using_the_step_generator():
    probs = from_probs([0.4, 0.3, 0.2, 0.1])
    twin = torch.Generator().manual_seed(4)
    ctx = make_ctx(probs, seed=4)
    xtc = XTC(0.5, 0.25)
    for _ in range(20):
        coin = float(torch.rand(1, generator=twin, dtype=torch.float64))
        out = xtc.apply(Candidates.from_logits(ctx.logits), ctx)
        assert len(out) == (3 if coin <= 0.5 else 4)


# --------------------------------------------------------------------------------------------- logit bias, penalties

def test_logit_bias_adds_to_chosen_tokens_and_minus_inf_bans():
    out = apply(LogitBias({1: 2.0, 3: -math.inf}), [0.0, 0.0, 1.0, 5.0])
    assert out.logits.tolist() == [0.0, 2.0, 1.0, -math.inf]
    ctx = make_ctx([0.0, 0.0, 1.0, 5.0])
    assert SamplerChain([LogitBias({3: -math.inf})], GreedyFinal()).sample(ctx) == 2
    with pytest.raises(SamplerArgumentError, match="vocabulary has 4 tokens"):
        apply(LogitBias({9: 1.0}), [0.0] * 4)


def test_penalties_sign_rule_counts_and_presence():
    logits = [2.0, -1.0, 0.5, 3.0, 0.0]
    penalties = Penalties(last_n=8, repeat=2.0, frequency=0.5, presence=0.25)
    for token in (0, 1, 0, 4):
        penalties.accept(token)
    out = apply(penalties, logits)
    # token 0 seen twice: 2.0 / 2 - 2·0.5 - 0.25; token 1 once: -1.0 · 2 - 0.5 - 0.25; token 4 (logit 0): 0·2 - 0.75
    assert out.logits.tolist() == pytest.approx([-0.25, -2.75, 0.5, 3.0, -0.75])


def test_penalties_forget_tokens_that_leave_the_window():
    penalties = Penalties(last_n=2, repeat=2.0, frequency=0.5, presence=0.25)
    for token in (0, 1, 0):          # window: [1, 0]
        penalties.accept(token)
    out = apply(penalties, [2.0, -1.0, 0.5])
    assert out.logits.tolist() == pytest.approx([2.0 / 2 - 0.75, -2.0 - 0.75, 0.5])
    penalties.accept(2)
    penalties.accept(2)               # window: [2, 2]
    out = apply(penalties, [2.0, -1.0, 0.5])
    assert out.logits.tolist() == pytest.approx([2.0, -1.0, 0.25 - 1.0 - 0.25])


def test_penalties_match_llama_cpp_reference_cases():
    flat = from_probs([0.2] * 5)
    p = Penalties(3, 50.0)
    for token in (0, 1, 2):
        p.accept(token)
    assert_dist(apply(p, flat), {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.5, 4: 0.5}, tol=1e-4)
    p = Penalties(5, 1.0, 5.0, 5.0)
    for token in (0, 1, 2, 0, 0):
        p.accept(token)
    assert_dist(apply(p, flat), {0: 0.0, 1: 0.000023, 2: 0.000023, 3: 0.499977, 4: 0.499977})


def test_penalties_start_from_the_context_the_first_step_sees():
    # llama.cpp's CLI/server feed the prompt through accept(); the engine only accepts generated tokens
    penalties = Penalties(last_n=3, repeat=2.0)
    out = apply(penalties, [1.0, 1.0, 1.0, 1.0], tokens=[3, 0, 1, 2])       # window: the last 3 -> [0, 1, 2]
    assert out.logits.tolist() == [0.5, 0.5, 0.5, 1.0]
    penalties.accept(3)                                                        # window: [1, 2, 3]
    out = apply(penalties, [1.0, 1.0, 1.0, 1.0], tokens=[3, 0, 1, 2, 3])
    assert out.logits.tolist() == [1.0, 0.5, 0.5, 0.5]


def test_penalties_work_on_a_truncated_candidate_set():
    penalties = Penalties(last_n=4, repeat=2.0)
    penalties.accept(7)
    chain = SamplerChain([TopK(3), penalties], GreedyFinal())
    ctx = make_ctx([0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 4.0, 3.0])
    # top-3 = {7: 4.0, 8: 3.0, 4: 1.0}; penalised 7 -> 2.0, so 8 wins
    assert chain.sample(ctx) == 8


# --------------------------------------------------------------------------------------------- DRY

def dry_logits(dry, n_vocab, history):
    for token in history:
        dry.accept(token)
    return apply(dry, [0.0] * n_vocab, tokens=history).logits.tolist()


def test_dry_penalises_the_token_that_would_extend_a_repeat():
    # context 1 2 3 4 9 1 2 3: the suffix "1 2 3" also ends at position 2, so emitting 4 would repeat 4 tokens;
    # repeat length 3, allowed 2: penalty = multiplier · base^(3 - 2) = 1 · 2
    logits = dry_logits(DRY(1.0, 2.0, 2, 64, []), 10, [1, 2, 3, 4, 9, 1, 2, 3])
    assert logits == [0.0, 0.0, 0.0, 0.0, -2.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_dry_repeat_shorter_than_allowed_length_is_free():
    assert dry_logits(DRY(1.0, 2.0, 4, 64, []), 10, [1, 2, 3, 4, 9, 1, 2, 3]) == [0.0] * 10
    assert dry_logits(DRY(1.0, 2.0, 3, 64, []), 10, [1, 2, 3, 4, 9, 1, 2, 3])[4] == -1.0     # 2^0
    logits = dry_logits(DRY(1.0, 2.0, 2, 64, []), 10, [5, 1, 2, 3, 4, 5, 1, 2, 3])
    assert logits[4] == -4.0                        # repeat of 4 (5 1 2 3): 2^(4-2)


def test_dry_sequence_breaker_caps_the_repeat_length():
    # the same context with 5 as a breaker: the latest 5 is 3 tokens from the end, so repeats count at most 3
    logits = dry_logits(DRY(1.0, 2.0, 2, 64, [[5]]), 10, [5, 1, 2, 3, 4, 5, 1, 2, 3])
    assert logits[4] == -2.0
    # a breaker right at the end stops everything (limit 0 < allowed length)
    assert dry_logits(DRY(1.0, 2.0, 2, 64, [[3]]), 10, [1, 2, 3, 4, 1, 2, 3]) == [0.0] * 10


def test_dry_multi_token_breaker_and_single_token_breakers_are_never_penalised():
    # breaker [7, 8]: its head 7 sits 2 tokens from the end (tail length 1) -> limit 2 - 1 = 1 < 2: no penalty
    assert dry_logits(DRY(1.0, 2.0, 2, 64, [[7, 8]]), 10, [1, 2, 3, 1, 7, 8, 2]) == [0.0] * 10
    # 1 2 5 1 2: token 5 would extend "1 2", but 5 is itself a breaker
    logits = dry_logits(DRY(1.0, 2.0, 2, 64, [[5]]), 10, [1, 2, 5, 1, 2])
    assert logits == [0.0] * 10


def test_dry_window_and_llama_cpp_reference_cases():
    flat4, flat5 = [0.25] * 4, [0.2] * 5
    cases = [  # (probs, history, expected, multiplier, base, allowed, last_n, breakers): llama.cpp test_dry
        (flat4, [0, 1], flat4, 1.0, 1.1, 2, 4, []),
        (flat4, [0, 1, 2, 0, 1], [0.296923, 0.296923, 0.109232, 0.296923], 1.0, 1.1, 2, 5, []),
        (flat5, [0, 1, 3, 4, 0, 1], flat5, 1.0, 1.1, 2, 6, [[3]]),
        (flat5, [0, 1, 2, 0, 1], [0.241818, 0.241818, 0.032727, 0.241818, 0.241818], 2.0, 1.1, 2, 5, []),
        (flat5, [0, 1, 2, 3, 4, 0, 1], flat5, 1.0, 1.1, 4, 7, []),
    ]
    for probs, history, expected, multiplier, base, allowed, last_n, breakers in cases:
        dry = DRY(multiplier, base, allowed, last_n, breakers)
        for token in history:
            dry.accept(token)
        assert_dist(apply(dry, from_probs(probs), tokens=history), dict(enumerate(expected)))
    # a window of 4 holds [1, 2, 0, 1]: "0 1" no longer occurs twice, so nothing is penalised
    dry = DRY(1.0, 1.1, 2, 4, [])
    for token in [0, 1, 2, 0, 1]:
        dry.accept(token)
    assert_dist(apply(dry, from_probs(flat4)), dict(enumerate(flat4)))


def test_dry_penalty_last_n_minus_one_sees_the_whole_context():
    history = [1, 2, 3, 4] + [9] * 100 + [1, 2, 3]
    assert dry_logits(DRY(1.0, 2.0, 2, 64, []), 10, history)[4] == 0.0        # the first "1 2 3 4" is out of reach
    assert dry_logits(DRY(1.0, 2.0, 2, -1, []), 10, history)[4] == -2.0


class PieceTokenizer:
    """A toy tokenizer: token i is pieces[i]; encode is greedy longest match."""

    def __init__(self, pieces):
        self.pieces = pieces
        self.vocab_size = len(pieces)

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)

    def encode(self, text, bos=True):
        out = []
        while text:
            best = max((i for i, p in enumerate(self.pieces) if p and text.startswith(p)),
                       key=lambda i: len(self.pieces[i]))
            out.append(best)
            text = text[len(self.pieces[best]):]
        return out


def test_dry_text_breakers_map_through_the_tokenizer():
    tok = PieceTokenizer(["a", "b", "\n", "x\n", ":", "q:", "c", "ba", "r", "bar", "oo", "o"])
    breakers = breakers_from_text(["\n", ":"], tok, 12)
    assert breakers == {2: [()], 3: [()], 4: [()], 5: [()]}
    # "bar": contained in token 9; token 1 "b" and 7 "ba" end with a prefix, their tails spell the rest
    breakers = breakers_from_text(["bar"], tok, 12)
    assert breakers[9] == [()]
    assert breakers[7] == [(8,)]                   # "ba" + "r"
    assert breakers[1] == [(0, 8)]                 # "b" + "a" "r"
    dry = DRY(1.0, 2.0, 2, 64, ["\n"])
    with pytest.raises(SamplerArgumentError, match="tokenizer"):
        apply(dry, [0.0] * 12, tokens=[0, 1, 6, 0, 1])
    dry.bind(tok)
    # "a b c a b": token 6 ("c") would extend "a b"
    assert apply(dry, [0.0] * 12, tokens=[0, 1, 6, 0, 1]).logits.tolist()[6] == -1.0
    # with a newline after the first repeat, the repeat is cut at the breaker
    assert apply(DRY(1.0, 2.0, 2, 64, ["\n"], tok), [0.0] * 12, tokens=[0, 1, 6, 0, 2, 0, 1]).logits.tolist()[6] \
        == -1.0
    assert apply(DRY(1.0, 2.0, 2, 64, ["\n"], tok), [0.0] * 12, tokens=[0, 1, 6, 0, 1, 2]).logits.tolist() \
        == [0.0] * 12


# --------------------------------------------------------------------------------------------- mirostat

def test_mirostat_v2_truncates_by_surprise_and_updates_mu_on_accept():
    probs = [0.5, 0.3, 0.15, 0.05]
    miro = MirostatV2(tau=1.0, eta=0.5)
    assert miro.mu == 2.0                                     # mu0 = 2 tau
    ctx = make_ctx(from_probs(probs), seed=3)
    out = miro.apply(Candidates.from_logits(ctx.logits), ctx)
    # keep -log2 p <= 2, i.e. p >= 0.25: {0.5, 0.3} renormalised to {0.625, 0.375}
    assert_dist(out, {0: 0.625, 1: 0.375})
    token = out.selected_token
    miro.accept(token)
    surprise = -math.log2({0: 0.625, 1: 0.375}[token])
    assert miro.mu == pytest.approx(2.0 - 0.5 * (surprise - 1.0))
    miro.reset()
    assert miro.mu == 2.0


def test_mirostat_v1_keeps_the_zipf_k_and_updates_mu():
    probs = [0.4, 0.2, 0.15, 0.1, 0.08, 0.07]
    # s_hat: least squares of b_i = ln(p_i/p_i+1) on t_i = ln((i+2)/(i+1)) over the 5 ratios (0.972 here)
    t = [math.log((i + 2) / (i + 1)) for i in range(5)]
    b = [math.log(probs[i] / probs[i + 1]) for i in range(5)]
    s_hat = sum(x * y for x, y in zip(t, b)) / sum(x * x for x in t)
    eps = s_hat - 1
    k = (eps * 2 ** 3.0 / (1 - 6 ** -eps)) ** (1 / s_hat)     # tau 1.5 -> mu0 3: k = 4.54 over N = 6
    assert 4 < k < 5
    miro = MirostatV1(tau=1.5, eta=0.1, m=100)
    assert miro.zipf_k(torch.tensor(probs), 6) == pytest.approx(k, rel=1e-4)
    ctx = make_ctx(from_probs(probs), seed=1)
    out = miro.apply(Candidates.from_logits(ctx.logits), ctx)
    assert out.token_ids().tolist() == [0, 1, 2, 3]
    chosen = out.selected_token
    miro.accept(chosen)
    surprise = -math.log2(probs[chosen] / sum(probs[:4]))
    assert miro.mu == pytest.approx(3.0 - 0.1 * (surprise - 1.5), rel=1e-5)
    # a token from outside the kept set (forced by the caller) leaves mu alone
    miro.apply(Candidates.from_logits(ctx.logits), ctx)
    mu = miro.mu
    miro.accept(5)
    assert miro.mu == mu


# --------------------------------------------------------------------------------------------- chain state

def test_clone_gives_the_child_its_own_penalty_window_and_mu():
    penalties, miro = Penalties(4, 2.0), MirostatV2(1.0, 0.5)
    parent = SamplerChain([penalties], miro)
    ctx = make_ctx(from_probs([0.5, 0.3, 0.15, 0.05]), seed=0)
    parent.accept(parent.sample(ctx))
    mu, window = miro.mu, list(penalties.window.tokens)
    child = parent.clone()
    for _ in range(3):
        child.accept(child.sample(make_ctx(from_probs([0.05, 0.15, 0.3, 0.5]), seed=9)))
    assert miro.mu == mu and list(penalties.window.tokens) == window
    assert child.samplers[0].window.tokens != penalties.window.tokens or child.final.mu != mu


def test_a_cloned_chain_with_a_cloned_generator_draws_the_same_tokens():
    gen = torch.Generator().manual_seed(42)
    logits = torch.randn(2000, generator=gen)
    chain = SamplerChain([Penalties(16, 1.2), DRY(0.8, 1.75, 2, 32, [[0]]), TopK(100), XTC(0.5, 0.05),
                          DynamicTemperature(1.0, 0.5)], MirostatV2(4.0, 0.2))
    first = make_ctx(logits, seed=7)
    for _ in range(5):
        chain.accept(chain.sample(first))
    twin_gen = torch.Generator()
    twin_gen.set_state(first.generator.get_state())
    twin = chain.clone()
    original_tokens, twin_tokens = [], []
    for tokens, sampler, generator in ((original_tokens, chain, first.generator), (twin_tokens, twin, twin_gen)):
        for step in range(15):
            ctx = StepContext(logits=logits.roll(step), tokens=[], prompt_len=0, hidden=torch.zeros(1),
                              generator=generator)
            token = sampler.sample(ctx)
            sampler.accept(token)
            tokens.append(token)
    assert original_tokens == twin_tokens


def test_seeded_generators_reproduce_a_run_and_different_seeds_differ():
    logits = torch.randn(500, generator=torch.Generator().manual_seed(0))

    def run(seed):
        chain = SamplerChain([TopK(200), TopP(0.99), Temperature(1.5)], Dist())
        gen = torch.Generator().manual_seed(seed)
        out = []
        for step in range(30):
            ctx = StepContext(logits=logits.roll(step), tokens=out, prompt_len=0, hidden=torch.zeros(1),
                              generator=gen)
            out.append(chain.sample(ctx))
            chain.accept(out[-1])
        return out

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_reset_forgets_windows_and_mu():
    chain = SamplerChain([Penalties(4, 2.0), DRY(1.0, 2.0, 2, 8, [])], MirostatV2(2.0, 1.0))
    ctx = make_ctx(from_probs([0.5, 0.3, 0.2]), tokens=[1, 2])
    chain.accept(chain.sample(ctx))
    chain.reset()
    assert not chain.samplers[0].window.tokens and not chain.samplers[1].window.tokens
    assert chain.final.mu == 4.0


def test_describe_lists_the_chain_in_order_and_records_the_candidate_count():
    chain = SamplerChain([TopK(40), TopP(0.95), MinP(0.05), Temperature(0.8)], Dist())
    assert chain.describe() == "top-k(40) -> top-p(0.95) -> min-p(0.05) -> temp(0.8) -> dist"
    assert repr(chain) == f"SamplerChain({chain.describe()})"
    ctx = make_ctx(from_probs([0.5, 0.3, 0.15, 0.05]))
    chain.sample(ctx)
    assert ctx.record["candidates"] == 3           # top-p 0.95 stops at 0.5 + 0.3 + 0.15
    assert chain.capture is None


# --------------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("make, message", [
    (lambda: TopK(1.5), r"top_k must be an integer in \[-1, inf\)"),
    (lambda: TopP(1.2), r"top_p must be a number in \[0, 1\]"),
    (lambda: MinP(-0.1), r"min_p must be a number in \[0, 1\]"),
    (lambda: Typical(2), r"typical_p"),
    (lambda: Temperature(float("nan")), r"temp must be a number"),
    (lambda: Penalties(64, 0.0), r"repeat_penalty must be a number in \(0, inf\)"),
    (lambda: Penalties(-2, 1.1), r"penalty_last_n must be an integer in \[-1, inf\)"),
    (lambda: DRY(0.8, 0.5), r"dry_base must be a number in \[1, inf\)"),
    (lambda: DRY(0.8, 1.75, 0), r"dry_allowed_length"),
    (lambda: DRY(-1.0), r"dry_multiplier"),
    (lambda: XTC(1.5, 0.1), r"xtc_probability must be a number in \[0, 1\]"),
    (lambda: DynamicTemperature(0.8, -1.0), r"dynatemp_range"),
    (lambda: MirostatV2(-1.0, 0.1), r"mirostat_tau"),
    (lambda: MirostatV1(5.0, True), r"mirostat_eta"),
    (lambda: LogitBias({-1: 1.0}), r"logit_bias token id"),
    (lambda: LogitBias({3: math.inf}), r"logit_bias for token 3"),
    (lambda: TopP(0.9, min_keep=-1), r"min_keep"),
])
def test_elements_reject_out_of_range_arguments_naming_them(make, message):
    with pytest.raises(SamplerArgumentError, match=message):
        make()
