"""EntropySampler: every regime reached on constructed logits/attention and acting as entropix specifies."""
import math
import warnings

import pytest
import torch

from minillama.capture import CapturedAttention, CaptureRequest
from minillama.errors import SamplerArgumentError
from minillama.sampling.base import LookaheadResult, Sampler, StepContext
from minillama.sampling.entropy import EntropyConfig, EntropySampler, find_question_token
from minillama.sampling.metrics import attention_metrics


def attention(probs_rows, scores_rows=None) -> CapturedAttention:
    probs = torch.tensor(probs_rows, dtype=torch.float32)
    scores = torch.tensor(scores_rows, dtype=torch.float32) if scores_rows is not None else torch.zeros_like(probs)
    return CapturedAttention(probs={0: probs}, scores={0: scores})


FOCUSED = attention([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])            # all attention metrics 0


def ctx(logits, tokens=(1, 2, 3), att=FOCUSED, seed=0, lookahead=None) -> StepContext:
    return StepContext(logits=logits, tokens=list(tokens), prompt_len=1, hidden=torch.zeros(4),
                       generator=torch.Generator().manual_seed(seed), attention=att, lookahead=lookahead)


def peaked(vocab, p_top, top=0):
    """p_top on `top`, the rest spread uniformly over the other vocab-1 tokens."""
    logits = torch.full((vocab,), math.log((1 - p_top) / (vocab - 1)))
    logits[top] = math.log(p_top)
    return logits


FLOWING = torch.tensor([30.0] + [0.0] * 7)
TREADING = torch.zeros(64)                       # 6 bits, varentropy 0
EXPLORING = peaked(4096, 0.7)                    # ≈ 4.5 bits, varentropy ≈ 36
RESAMPLING = peaked(65536, 0.5)                  # ≈ 9 bits, varentropy ≈ 64
ADAPTIVE = torch.tensor([3.0, 2.0, 1.0, 0.0, 0.0, -1.0, -2.0, -3.0])


def test_protocol_and_capture():
    s = EntropySampler()
    assert isinstance(s, Sampler)
    assert s.capture == CaptureRequest(layers=(-1,))


@pytest.mark.parametrize("logits,regime", [(FLOWING, "flowing"), (TREADING, "treading"), (EXPLORING, "exploring"),
                                           (RESAMPLING, "resampling"), (ADAPTIVE, "adaptive")])
def test_each_regime_is_reached_and_recorded(logits, regime):
    s = EntropySampler(question_token=7)
    c = ctx(logits)
    s.sample(c)
    assert c.record["regime"] == regime
    for key in ("entropy", "varentropy", "attn_entropy", "attn_varentropy", "agreement", "interaction_strength"):
        assert key in c.record
    assert s.regime_counts[regime] == 1 and sum(s.regime_counts.values()) == 1


def test_flowing_is_argmax():
    s = EntropySampler()
    assert all(s.sample(ctx(FLOWING, seed=i)) == 0 for i in range(5))


def test_treading_inserts_question_token_unless_just_used():
    s = EntropySampler(question_token=9)
    c = ctx(TREADING, tokens=(1, 2))
    assert s.sample(c) == 9 and c.record["treading_action"] == "insert"
    c = ctx(TREADING, tokens=(1, 9))
    s.sample(c)
    assert c.record["treading_action"] == "sample (just asked)"
    # hotter sampling: min(1.5, temp·(1.3 + 0.2·attn_entropy)), attention entropy 0 here
    assert c.record["temperature"] == pytest.approx(0.666 * 1.3)


def test_treading_without_question_token_warns_and_samples():
    s = EntropySampler()          # no tokenizer, no ids
    c = ctx(TREADING)
    with pytest.warns(RuntimeWarning, match="no '\\?'"):
        token = s.sample(c)
    assert 0 <= token < 64 and c.record["treading_action"] == "sample (no question token)"
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # warned once only
        s.sample(ctx(TREADING))


def test_exploring_temperature_and_top_k_follow_interaction_and_agreement():
    att = attention([[1.0, 0.0], [0.0, 1.0]], [[2.0, -2.0], [1.0, 1.0]])
    stats = attention_metrics(att, bits=True)
    s = EntropySampler()
    c = ctx(EXPLORING, att=att)
    s.sample(c)
    assert c.record["regime"] == "exploring"
    assert c.record["temperature"] == pytest.approx(min(1.5, 0.666 * (1.2 + 0.3 * stats.interaction_strength)))
    assert c.record["top_k"] == max(5, int(27 * (1 + 0.5 * (1 - stats.agreement))))


def test_resampling_temperature_is_capped_not_floored():
    s = EntropySampler()
    c = ctx(RESAMPLING)                      # attention varentropy 0: 0.666·2.0 = 1.332 (entropix: max(2.0, ·) = 2.0)
    s.sample(c)
    assert c.record["regime"] == "resampling"
    assert c.record["temperature"] == pytest.approx(1.332)
    assert c.record["top_p"] == pytest.approx(0.9)
    wide = attention([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])   # attn entropy 1 bit, varentropy 1
    c = ctx(RESAMPLING, att=wide)
    s.sample(c)
    assert c.record["temperature"] == pytest.approx(min(2.0, 0.666 * (2.0 + 0.5 * 1.0)))
    assert c.record["top_p"] == pytest.approx(max(0.5, 0.9 - 0.2 * 1.0))


def test_adaptive_parameters_and_logprob_choice():
    s = EntropySampler()
    c = ctx(ADAPTIVE)
    token = s.sample(c)
    r = c.record
    ent, vent = r["entropy"], r["varentropy"]
    assert r["temperature"] == pytest.approx(0.666 * (1 + 0.3 * (ent + vent)))
    assert r["top_k"] == 27 and r["top_p"] == pytest.approx(0.9)
    assert r["min_p"] == pytest.approx(min(0.5, max(0.01, 0.03 * (1 - 0.5 * (ent + vent)))))
    logp = torch.log_softmax(ADAPTIVE, -1)
    assert r["adaptive_score"] == "logprob"
    assert token == max(r["adaptive_candidates"], key=lambda t: float(logp[t]))


def test_adaptive_lookahead_scores_each_distinct_draw():
    calls = []

    def lookahead(cands):
        calls.append(list(cands))
        # the least likely candidate leads to a confident next step, the others to a high-varentropy one
        # (confidence (1 - 36)·0.3 ≈ -10.5): the log-prob gap (≤ 6 nats) cannot save them
        worst = min(cands, key=lambda t: float(ADAPTIVE[t]))
        rows = [peaked(4096, 0.999) if t == worst else EXPLORING for t in cands]
        return LookaheadResult(candidates=list(cands), logits=torch.stack(rows), hidden=torch.zeros(len(cands), 4),
                               attention=None)

    s = EntropySampler(EntropyConfig(adaptive_score="lookahead", n_adaptive_samples=16))
    c = ctx(ADAPTIVE, lookahead=lookahead, seed=3)
    token = s.sample(c)
    assert len(calls) == 1 and len(calls[0]) == len(set(calls[0])) > 1
    assert c.record["adaptive_score"] == "lookahead"
    assert token == min(calls[0], key=lambda t: float(ADAPTIVE[t]))


def test_missing_attention_is_recorded_not_fatal():
    s = EntropySampler()
    c = ctx(ADAPTIVE, att=None)
    with pytest.warns(RuntimeWarning):
        s.sample(c)
    assert c.record["attention_captured"] is False and c.record["attn_entropy"] == 0.0


def test_presets_and_validation():
    jax, torch_twin = EntropyConfig(), EntropyConfig.torch_preset()
    assert (jax.temp, jax.top_p, jax.top_k, jax.min_p) == (0.666, 0.90, 27, 0.03)
    assert (jax.helv_ent_thresh, jax.lehv_ent_thresh, jax.hehv_ent_thresh) == (5.0, 5.0, 3.0)
    assert (torch_twin.helv_ent_thresh, torch_twin.hehv_ent_thresh, torch_twin.min_p) == (3.0, 5.0, 0.0)
    # entropy 4 bits, varentropy 0: JAX (HELV needs > 5) says adaptive, torch twin (HELV > 3) says treading
    four_bits = torch.zeros(16)
    assert EntropySampler(jax).classify(4.0, 0.0) == "adaptive"
    assert EntropySampler(torch_twin).classify(4.0, 0.0) == "treading"
    c = ctx(four_bits)
    EntropySampler(torch_twin, question_token=3).sample(c)
    assert c.record["regime"] == "treading"
    for bad in (dict(temp=-1.0), dict(top_p=0.0), dict(top_k=0), dict(low_ent_thresh=6.0),
                dict(low_vent_thresh=9.0), dict(adaptive_score="best"), dict(n_adaptive_samples=0)):
        with pytest.raises(SamplerArgumentError):
            EntropyConfig(**bad)
    with pytest.raises(SamplerArgumentError):
        EntropyConfig.preset("pytorch")


class FakeTokenizer:
    def __init__(self, pieces):
        self.pieces = pieces
        self.vocab_size = len(pieces)

    def token_bytes(self, i):
        return self.pieces[i]

    def id_of(self, piece):
        raise KeyError(piece)


def test_question_and_pause_tokens_found_from_vocabulary():
    tok = FakeTokenizer([b"<s>", b"a", b" ?", b"...", b"?", b"b"])
    s = EntropySampler(tokenizer=tok)
    assert (s.question_token, s.pause_token) == (4, 3)
    assert find_question_token(FakeTokenizer([b"a", b" ?"])) == 1
    none = EntropySampler(tokenizer=FakeTokenizer([b"a", b"b"]))
    assert none.question_token is None and none.insert_token is None
    pause_only = EntropySampler(tokenizer=FakeTokenizer([b"a", b"..."]))
    assert pause_only.insert_token == 1


def test_clone_is_independent_and_reset_forgets():
    s = EntropySampler(question_token=1)
    s.sample(ctx(FLOWING))
    twin = s.clone()
    s.sample(ctx(FLOWING))
    assert s.regime_counts["flowing"] == 2 and twin.regime_counts["flowing"] == 1
    s.reset()
    assert sum(s.regime_counts.values()) == 0


def test_sampling_is_reproducible_with_the_generator():
    s = EntropySampler()
    a = [s.sample(ctx(EXPLORING, seed=11)) for _ in range(3)]
    b = [s.sample(ctx(EXPLORING, seed=11)) for _ in range(3)]
    assert a == b
