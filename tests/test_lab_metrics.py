"""The lab's metric functions on hand-made texts, and its configuration and prompt parsing."""
from __future__ import annotations

import json
import math

import pytest
import torch

from minillama.errors import SamplerArgumentError
from minillama.lab import configs, metrics
from minillama.lab.run import load_prompts


def test_distinct_n_pools_the_samples():
    a = "the cat sat on the mat".split()
    assert metrics.distinct_n([a], 1) == pytest.approx(5 / 6)           # "the" twice
    assert metrics.distinct_n([a], 2) == 1.0
    assert metrics.distinct_n([a, a], 2) == pytest.approx(0.5)          # two copies: half the bigrams are new
    assert metrics.distinct_n([a, "a dog ran".split()], 3) == pytest.approx(5 / 5)
    assert metrics.distinct_n([["x"]], 2) == 0.0                        # no bigram at all


def test_self_bleu_identical_is_one_disjoint_is_zero():
    s = "once upon a time there was a little dog".split()
    assert metrics.self_bleu([s, s, s]) == pytest.approx(1.0)
    assert metrics.self_bleu([s, "red green blue yellow purple orange".split()]) == 0.0
    assert metrics.self_bleu([s]) is None


def test_bleu_by_hand():
    hyp = "a b c d e".split()
    ref = "a b c d f".split()
    # 1-grams 4/5, 2-grams 3/4, 3-grams 2/3, 4-grams 1/2, same length (no brevity penalty)
    expected = math.exp((math.log(4 / 5) + math.log(3 / 4) + math.log(2 / 3) + math.log(1 / 2)) / 4)
    assert metrics.bleu(hyp, [ref]) == pytest.approx(expected)
    # clipping: "a a a a" against "a b c d" counts one "a"; no shared bigram -> 0
    assert metrics.bleu("a a a a".split(), ["a b c d".split()]) == 0.0
    # brevity penalty with a longer reference: exp(1 - 8/4)
    assert metrics.bleu("a b c d".split(), ["a b c d e f g h".split()]) == pytest.approx(math.exp(1 - 8 / 4))


def test_unique_count_and_compression():
    assert metrics.unique_count(["a", "b", "a"]) == 2
    loop = ["the same line again"] * 20
    varied = [f"line {i} with words {i * 7} {i ** 2} and more {chr(65 + i)}" for i in range(20)]
    assert metrics.compression_ratio(loop) > metrics.compression_ratio(varied) > 1.0


def test_rep_n_and_diversity():
    assert metrics.rep_n("a b c d e f".split(), 2) == 0.0
    loop = "a b a b a b a b".split()                                     # 7 bigrams, 2 distinct
    assert metrics.rep_n(loop, 2) == pytest.approx(100 * (1 - 2 / 7))
    assert metrics.rep_n(["a"], 4) == 0.0
    assert metrics.simctg_diversity("a b c d e f".split()) == 1.0
    assert metrics.simctg_diversity(loop) < 0.2


def test_rep4_char_is_rdnets_unit():
    assert metrics.rep4_char("abcdefgh") == 0.0
    assert metrics.rep4_char("abababab") == pytest.approx(1 - 2 / 5)    # 5 runs of 4 chars: abab, baba
    assert metrics.rep4_char("abc") == 0.0


def test_longest_repeated_ngram():
    assert metrics.longest_repeated_ngram("a b c d".split()) == (0, ())
    assert metrics.longest_repeated_ngram("x a b c y a b c z".split()) == (3, ("a", "b", "c"))
    # a loop of period 2 over 8 units repeats a run of 6 (overlapping occurrences count)
    length, gram = metrics.longest_repeated_ngram("a b a b a b a b".split())
    assert length == 6 and gram == tuple("a b a b a b".split())
    assert metrics.longest_repeated_ngram([]) == (0, ())


class _FixedEngine:
    """logits(ids): row i puts log-probability log(0.5) on token (ids[i] + 1) % 4 and log(1/6) on the others."""

    def logits(self, ids):
        rows = torch.full((len(ids), 4), math.log(1 / 6))
        for i, t in enumerate(ids):
            rows[i, (t + 1) % 4] = math.log(0.5)
        return rows


def test_perplexity_uses_the_prompt_as_context():
    engine = _FixedEngine()
    assert metrics.perplexity(engine, [0], [1, 2, 3]) == pytest.approx(2.0)          # every token has p = 1/2
    assert metrics.perplexity(engine, [0, 1], [3]) == pytest.approx(6.0)             # after 1 the likely one is 2
    assert metrics.perplexity(engine, [0], []) is None


def test_summary():
    s = metrics.summary([1.0, None, 3.0, 2.0])
    assert s == {"mean": 2.0, "std": pytest.approx(math.sqrt(2 / 3)), "median": 2.0, "min": 1.0, "max": 3.0}
    assert metrics.summary([None])["mean"] is None


def test_select_configs_by_name_and_family():
    names = [c.name for c in configs.select("greedy,drugs,greedy")]
    assert names[0] == "greedy" and names.count("greedy") == 1
    assert all(configs.CONFIGS[n].family == "drugs" for n in names[1:]) and len(names) > 3
    assert len(configs.select(None)) == len(configs.CONFIGS)
    with pytest.raises(SamplerArgumentError, match="unknown configuration 'nope'.*greedy"):
        configs.select("greedy,nope")


def test_every_config_builds_and_describes_itself():
    for config in configs.CONFIGS.values():
        described = config.to_json()
        assert described["name"] == config.name and described["sampler"]


def test_shipped_prompts_are_varied():
    prompts = load_prompts()
    assert 8 <= len(prompts) <= 12
    assert {p["kind"] for p in prompts} == {"story", "question", "instruction"}
    assert {p["kind"] for p in prompts[:3]} == {"story", "question", "instruction"}   # --max-prompts 3 still mixes


def test_prompt_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("first\n\n  second  \n")
    assert [p["text"] for p in load_prompts(txt)] == ["first", "second"]
    js = tmp_path / "p.json"
    js.write_text(json.dumps(["a", {"text": "b", "kind": "story"}]))
    assert load_prompts(js) == [{"kind": "prompt", "text": "a"}, {"kind": "story", "text": "b"}]
    js.write_text(json.dumps([{"kind": "story"}]))
    with pytest.raises(SamplerArgumentError, match="item 0"):
        load_prompts(js)
    with pytest.raises(SamplerArgumentError, match="cannot read"):
        load_prompts(tmp_path / "missing.txt")


def test_self_bleu_of_identical_short_samples_is_one():
    assert metrics.self_bleu([["hi", "there"], ["hi", "there"]]) == pytest.approx(1.0)
