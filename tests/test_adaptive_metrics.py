"""The adaptive samplers' metrics against values computed by hand, and their minimal draw's truncation rules."""
import math

import pytest
import torch

from minillama.capture import CapturedAttention
from minillama.errors import SamplerArgumentError
from minillama.sampling.metrics import (Rep4Logger, apply_repetition_penalty, attention_entropy, attention_metrics,
                                        normalized_attention_entropy, rep4_char, sample_logits, token_entropy,
                                        token_varentropy, truncated_probs)

LN2 = math.log(2)


def test_entropy_and_varentropy_by_hand():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    # surprisals 1, 2, 2 bits: H = 1.5 bits; varentropy = 0.5·(1-1.5)² + 0.5·(2-1.5)² = 0.25 bits²
    assert float(token_entropy(logits, bits=True)) == pytest.approx(1.5)
    assert float(token_entropy(logits)) == pytest.approx(1.5 * LN2)
    assert float(token_varentropy(logits, bits=True)) == pytest.approx(0.25)
    assert float(token_varentropy(logits)) == pytest.approx(0.25 * LN2 ** 2)


def test_uniform_and_batched_and_masked():
    uniform = torch.zeros(8)
    assert float(token_entropy(uniform, bits=True)) == pytest.approx(3.0)
    assert float(token_varentropy(uniform)) == pytest.approx(0.0, abs=1e-6)
    batch = torch.stack([uniform, torch.log(torch.tensor([0.5, 0.25, 0.25, 0, 0, 0, 0, 0]))])
    h = token_entropy(batch, bits=True)
    assert h.shape == (2,) and h.tolist() == pytest.approx([3.0, 1.5])
    # -inf logits are p = 0 tokens: no NaN
    assert token_varentropy(batch, bits=True).tolist() == pytest.approx([0.0, 0.25], abs=1e-6)


def test_attention_metrics_on_known_rows():
    probs = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    scores = torch.tensor([[2.0, -1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    cap = CapturedAttention(probs={4: probs}, scores={4: scores})
    assert attention_entropy(probs).tolist() == pytest.approx([0.0, math.log(4)])
    assert attention_entropy(probs, bits=True).tolist() == pytest.approx([0.0, 2.0])
    stats = attention_metrics(cap, bits=True)
    assert stats.entropy == pytest.approx(1.0)           # mean of 0 and 2 bits
    assert stats.varentropy == pytest.approx(1.0)        # population variance of {0, 2}
    # mean row (0.625, .125, .125, .125): every |p_h - mean| row is (.375, .125, .125, .125)
    assert stats.agreement == pytest.approx(0.1875)
    assert stats.interaction_strength == pytest.approx(4.0 / 8)
    assert normalized_attention_entropy(cap) == pytest.approx(0.5)
    one = CapturedAttention(probs={0: torch.ones(3, 1)}, scores={0: torch.zeros(3, 1)})
    assert normalized_attention_entropy(one) == 0.0


def test_rep4_char_by_hand():
    assert rep4_char("abc") == 0.0                  # no 4-gram at all
    assert rep4_char("abcdefgh") == 0.0             # 5 distinct 4-grams
    # "abababab": 5 grams, 2 distinct (abab, baba) -> 1 - 2/5
    assert rep4_char("abababab") == pytest.approx(0.6)
    assert rep4_char("aaaaaaaa") == pytest.approx(1 - 1 / 5)
    # only the trailing window counts: the varied head is cut off
    assert rep4_char("abcdefghij" + "x" * 10, window=10) == pytest.approx(1 - 1 / 7)


def test_rep4_logger_every_k_tokens():
    lines = []
    log = Rep4Logger(every_k_tokens=4, window=100, sink=lines.append)
    outs = [log.add("ab", drift=0.05) for _ in range(8)]
    assert outs[:3] == [None] * 3 and outs[3] is not None and outs[7] is not None
    assert lines == [o for o in outs if o]
    assert lines[0] == "4 tokens | rep-4 = 0.6000 | drift = 0.0500"    # "abababab"
    assert [h[0] for h in log.history] == [4, 8]
    with pytest.raises(SamplerArgumentError):
        Rep4Logger(0)


def test_truncation_min_p_before_draw_and_top_p_keeps_likeliest():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    # min-p 0.2: 0.05 < 0.2·0.5 is removed before the draw (entropix dropped this mask)
    p = truncated_probs(logits, 1.0, min_p=0.2)
    assert p[3] == 0 and p.sum() == pytest.approx(1.0)
    # top-p 0.7 keeps {0.5, 0.3}: the smallest most-likely set reaching 0.7
    p = truncated_probs(logits, 1.0, top_p=0.7)
    assert (p > 0).tolist() == [True, True, False, False]
    assert p[0] == pytest.approx(0.5 / 0.8)
    p = truncated_probs(logits, 1.0, top_k=1)
    assert p.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert truncated_probs(logits, 0.0).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_draw_is_a_categorical_sample_from_the_generator():
    logits = torch.log(torch.tensor([0.7, 0.2, 0.1]))
    g = torch.Generator().manual_seed(0)
    draws = [sample_logits(logits, g, temperature=1.0) for _ in range(3000)]
    freq = [draws.count(i) / len(draws) for i in range(3)]
    assert freq == pytest.approx([0.7, 0.2, 0.1], abs=0.03)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert [sample_logits(logits, g1, temperature=1.0) for _ in range(20)] == \
           [sample_logits(logits, g2, temperature=1.0) for _ in range(20)]


def test_repetition_penalty_sign_rule():
    logits = torch.tensor([2.0, -2.0, 1.0])
    out = apply_repetition_penalty(logits, [0, 1, 0], 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0]
    assert logits.tolist() == [2.0, -2.0, 1.0]          # the input is untouched
    assert apply_repetition_penalty(logits, [0], 1.0) is logits
