"""SamplingParams: llama.cpp's defaults and chain order, the hf order, greedy, mirostat, and the three ways in
(CLI flags, `/sampler key=value` text, JSON dicts)."""
import argparse
import json
import math

import pytest
import torch

from minillama.errors import SamplerArgumentError
from minillama.sampling.base import StepContext
from minillama.sampling.params import (HF_ORDER, LLAMA_CPP_ORDER, SamplingParams, add_sampling_args,
                                       params_from_args)


def make_ctx(logits, tokens=(), seed=0):
    return StepContext(logits=torch.tensor(logits, dtype=torch.float32), tokens=list(tokens),
                       prompt_len=len(tokens), hidden=torch.zeros(2), generator=torch.Generator().manual_seed(seed))


def final_distribution(params, probs):
    """token -> probability the chain draws from, computed from the candidates before the final draw"""
    chain = params.to_sampler()
    candidates = chain.candidates(make_ctx([math.log(p) for p in probs]))
    q = torch.softmax(candidates.logits.double(), 0)
    return {int(t): float(p) for t, p in zip(candidates.token_ids(), q)}


def test_defaults_are_llama_cpps():
    p = SamplingParams()
    assert (p.seed, p.temp, p.top_k, p.top_p, p.min_p, p.typical_p) == (None, 0.8, 40, 0.95, 0.05, 1.0)
    assert (p.penalty_last_n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty) == (64, 1.0, 0.0, 0.0)
    assert (p.dry_multiplier, p.dry_base, p.dry_allowed_length, p.dry_penalty_last_n) == (0.0, 1.75, 2, 64)
    assert p.dry_sequence_breakers == ("\n", ":", "\"", "*")
    assert (p.xtc_probability, p.xtc_threshold, p.top_n_sigma) == (0.0, 0.1, -1.0)
    assert (p.dynatemp_range, p.dynatemp_exponent) == (0.0, 1.0)
    assert (p.mirostat, p.mirostat_tau, p.mirostat_eta) == (0, 5.0, 0.1)
    assert p.logit_bias == {} and p.min_keep == 0 and p.samplers == LLAMA_CPP_ORDER


def test_default_chain_leaves_inert_elements_out():
    assert SamplingParams().to_sampler().describe() == "top-k(40) -> top-p(0.95) -> min-p(0.05) -> temp(0.8) -> dist"


def test_every_element_in_llama_cpps_order_with_logit_bias_first():
    params = SamplingParams(logit_bias={5: 1.0}, repeat_penalty=1.1, dry_multiplier=0.8, top_n_sigma=2.0,
                            typical_p=0.9, xtc_probability=0.5, dynatemp_range=0.3)
    names = [element.name for element in params.to_sampler().samplers]
    assert names == ["logit-bias", "penalties", "dry", "top-n-sigma", "top-k", "typical", "top-p", "min-p", "xtc",
                     "dynatemp"]
    assert params.to_sampler().final.name == "dist"


def test_custom_order_with_llama_cpp_names_and_aliases():
    params = SamplingParams(samplers="temp;top-k;min_p", repeat_penalty=1.2)
    assert params.samplers == ("temperature", "top_k", "min_p")
    assert params.to_sampler().describe() == "temp(0.8) -> top-k(40) -> min-p(0.05) -> dist"
    with pytest.raises(SamplerArgumentError) as error:
        SamplingParams(samplers=["top_k", "top_z"])
    assert "'top_z'" in str(error.value) and "typ_p" in str(error.value) and "hf" in str(error.value)


def test_llama_cpp_and_hf_orders_give_the_documented_different_distributions():
    # min-p 0.2 with temperature 3 on p = (0.5, 0.3, 0.15, 0.05), top-k/top-p off
    probs = [0.5, 0.3, 0.15, 0.05]
    base = dict(top_k=0, top_p=1.0, min_p=0.2, temp=3.0)
    # llama.cpp: min-p on the raw distribution (cut at 0.1: drops 0.05), then temperature: q ~ p^(1/3)
    kept = {i: probs[i] ** (1 / 3) for i in range(3)}
    expected = {i: v / sum(kept.values()) for i, v in kept.items()}
    got = final_distribution(SamplingParams(**base), probs)
    assert set(got) == set(expected) and all(got[i] == pytest.approx(expected[i], abs=1e-6) for i in expected)
    # hf: temperature first flattens to p^(1/3) ~ (0.794, 0.669, 0.531, 0.368); each is >= 0.2 of the top -> all stay
    tempered = {i: probs[i] ** (1 / 3) for i in range(4)}
    expected = {i: v / sum(tempered.values()) for i, v in tempered.items()}
    got = final_distribution(SamplingParams(samplers="hf", **base), probs)
    assert set(got) == set(expected) and all(got[i] == pytest.approx(expected[i], abs=1e-6) for i in expected)
    assert SamplingParams(samplers="hf").samplers == HF_ORDER


def test_temp_zero_is_exactly_argmax():
    logits = torch.randn(4000, generator=torch.Generator().manual_seed(2))
    chain = SamplingParams(temp=0.0).to_sampler()
    assert chain.describe() == "greedy"
    ctx = StepContext(logits=logits, tokens=[], prompt_len=0, hidden=torch.zeros(1),
                      generator=torch.Generator().manual_seed(0))
    assert chain.sample(ctx) == int(torch.argmax(logits))
    # elements that change logits still apply: a penalised argmax moves to the runner-up
    top2 = torch.topk(logits, 2).indices.tolist()
    chain = SamplingParams(temp=0.0, repeat_penalty=100.0).to_sampler()
    ctx = StepContext(logits=logits, tokens=[top2[0]], prompt_len=1, hidden=torch.zeros(1),
                      generator=torch.Generator().manual_seed(0))
    assert chain.sample(ctx) == top2[1]
    # a dynamic range above zero is not greedy (llama.cpp's temp-ext draws T from [0, range])
    assert SamplingParams(temp=0.0, dynatemp_range=0.5).to_sampler().final.name == "dist"


def test_mirostat_replaces_the_list_by_temperature_then_mirostat():
    chain = SamplingParams(mirostat=2, temp=0.7, repeat_penalty=1.3, top_k=5).to_sampler()
    assert [e.name for e in chain.samplers] == ["temp"] and chain.final.name == "mirostat-v2"
    assert chain.final.mu == 10.0                     # 2 tau
    chain = SamplingParams(mirostat=1, logit_bias={1: -1.0}).to_sampler()
    assert [e.name for e in chain.samplers] == ["logit-bias", "temp"] and chain.final.name == "mirostat"
    ctx = make_ctx([math.log(p) for p in (0.5, 0.3, 0.2)])
    token = chain.sample(ctx)
    chain.accept(token)
    assert chain.final.mu != 10.0 and ctx.record["mu"] == 10.0


class Pieces:
    def __init__(self, pieces):
        self.pieces, self.vocab_size = pieces, len(pieces)

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)

    def encode(self, text, bos=True):
        return [self.pieces.index(ch) for ch in text]


def test_to_sampler_binds_the_tokenizer_for_dry_breakers():
    tok = Pieces(["a", "b", "c", "\n", ":"])
    chain = SamplingParams(dry_multiplier=1.0, dry_base=2.0, temp=0.0).to_sampler(tok)
    ctx = make_ctx([0.0] * 5, tokens=[0, 1, 2, 0, 1])     # "ab c ab": c would extend "a b"
    assert chain.candidates(ctx).logits.tolist() == [0.0, 0.0, -1.0, 0.0, 0.0]
    unbound = SamplingParams(dry_multiplier=1.0).to_sampler()
    with pytest.raises(SamplerArgumentError, match="tokenizer"):
        unbound.sample(ctx)
    assert SamplingParams(dry_multiplier=1.0, dry_sequence_breakers=()).to_sampler().sample(ctx) in range(5)


@pytest.mark.parametrize("field, value, message", [
    ("temp", "hot", r"temp must be a number"),
    ("top_k", 2.5, r"top_k must be an integer in \[-1, inf\)"),
    ("top_p", 1.01, r"top_p must be a number in \[0, 1\]"),
    ("min_p", -0.1, r"min_p must be a number in \[0, 1\]"),
    ("typical_p", 3, r"typical_p"),
    ("penalty_last_n", -5, r"penalty_last_n must be an integer in \[-1, inf\)"),
    ("repeat_penalty", 0.0, r"repeat_penalty must be a number in \(0, inf\)"),
    ("frequency_penalty", math.inf, r"frequency_penalty"),
    ("dry_base", 0.9, r"dry_base must be a number in \[1, inf\)"),
    ("dry_allowed_length", 0, r"dry_allowed_length"),
    ("dry_penalty_last_n", -2, r"dry_penalty_last_n"),
    ("dry_sequence_breakers", ["", ":"], r"dry_sequence_breakers"),
    ("xtc_probability", 2.0, r"xtc_probability"),
    ("xtc_threshold", -0.1, r"xtc_threshold"),
    ("dynatemp_range", -0.5, r"dynatemp_range"),
    ("dynatemp_exponent", -1.0, r"dynatemp_exponent"),
    ("mirostat", 3, r"mirostat must be 0 \(off\), 1 or 2"),
    ("mirostat_tau", -1.0, r"mirostat_tau"),
    ("mirostat_eta", -0.1, r"mirostat_eta"),
    ("logit_bias", {"x": 1.0}, r"logit_bias"),
    ("logit_bias", {3: math.nan}, r"logit_bias for token 3"),
    ("min_keep", -1, r"min_keep"),
    ("seed", -3, r"seed must be an integer"),
])
def test_every_field_is_validated_naming_it_and_its_range(field, value, message):
    with pytest.raises(SamplerArgumentError, match=message):
        SamplingParams(**{field: value})


def test_updated_parses_key_value_text_and_leaves_the_original_alone():
    old = SamplingParams()
    new = old.updated("top_k=20 temp=0.5 temperature=0.4 seed=7 samplers=hf")
    assert (new.top_k, new.temp, new.seed, new.samplers) == (20, 0.4, 7, HF_ORDER)
    assert (old.top_k, old.temp, old.seed, old.samplers) == (40, 0.8, None, LLAMA_CPP_ORDER)
    new = old.updated('dry_sequence_breakers=["\\n", ":"] logit_bias=15043+1;15044-inf seed=random repeat-last-n=32')
    assert new.dry_sequence_breakers == ("\n", ":") and new.logit_bias == {15043: 1.0, 15044: -math.inf}
    assert new.seed is None and new.penalty_last_n == 32
    assert old.updated("dry_sequence_breakers=none").dry_sequence_breakers == ()
    assert old.updated('logit_bias={"5": -2}').logit_bias == {5: -2.0}
    assert old.updated("") == old


@pytest.mark.parametrize("text, message", [
    ("top_z=3", r"unknown sampling setting 'top_z'; known: seed, temp"),
    ("top_k=abc", r"top_k='abc': expected int"),
    ("top_p=2", r"top_p must be a number in \[0, 1\]"),
    ("top_k 20", r"cannot read 'top_k 20'"),
    ("temp=0.5 oops", r"cannot read 'oops'"),
    ("logit_bias=15043*1", r"TOKEN_ID\+BIAS"),
    ("samplers=top_k;nope", r"unknown sampler 'nope'"),
])
def test_updated_rejects_unknown_keys_and_bad_values_by_name(text, message):
    old = SamplingParams()
    with pytest.raises(SamplerArgumentError, match=message):
        old.updated(text)
    assert old == SamplingParams()


def test_from_dict_reads_openai_and_llama_cpp_server_fields():
    body = {"temperature": 0.3, "top_p": 0.9, "top_k": 10, "min_p": 0.1, "typical_p": 0.95, "repeat_penalty": 1.1,
            "repeat_last_n": 128, "frequency_penalty": 0.5, "presence_penalty": 0.25, "seed": -1,
            "logit_bias": {"50256": -100}, "dry_multiplier": 0.8, "mirostat": 2, "mirostat_tau": 4.0,
            "samplers": ["top_k", "temperature"]}
    p = SamplingParams.from_dict(body)
    assert (p.temp, p.top_p, p.top_k, p.min_p, p.typical_p) == (0.3, 0.9, 10, 0.1, 0.95)
    assert (p.repeat_penalty, p.penalty_last_n, p.frequency_penalty, p.presence_penalty) == (1.1, 128, 0.5, 0.25)
    assert p.seed is None and p.logit_bias == {50256: -100.0} and p.mirostat == 2
    assert p.samplers == ("top_k", "temperature")
    assert SamplingParams.from_dict({"logit_bias": [[15, False], [16, 2]]}).logit_bias == {15: -math.inf, 16: 2.0}
    with pytest.raises(SamplerArgumentError, match="'messages'"):
        SamplingParams.from_dict({"temperature": 0.5, "messages": []})
    assert SamplingParams.from_dict({"temperature": 0.5, "messages": []}, ignore_unknown=True).temp == 0.5
    base = SamplingParams(top_k=5)
    assert SamplingParams.from_dict({"temp": 0.1}, base=base).top_k == 5


def test_to_dict_round_trips_through_json():
    p = SamplingParams(seed=3, logit_bias={7: -math.inf, 9: 1.5}, samplers="hf", dry_sequence_breakers=["\n"])
    d = p.to_dict()
    assert d["temp"] == 0.8 and d["samplers"] == list(HF_ORDER) and d["logit_bias"] == {7: -math.inf, 9: 1.5}
    assert SamplingParams.from_dict(d) == p
    assert SamplingParams.from_dict(json.loads(json.dumps(d))) == p


def test_cli_flags_use_llama_cpp_names():
    parser = argparse.ArgumentParser()
    add_sampling_args(parser)
    parser.add_argument("--seed", type=int, default=-1)
    args = parser.parse_args(["--temp", "0.5", "--top-k", "20", "--top-p", "0.8", "--min-p", "0.1", "--typical",
                              "0.9", "--repeat-penalty", "1.1", "--repeat-last-n", "32", "--frequency-penalty",
                              "0.2", "--presence-penalty", "0.3", "--dry-multiplier", "0.8", "--dry-base", "2",
                              "--dry-allowed-length", "3", "--dry-penalty-last-n", "-1", "--dry-sequence-breaker",
                              "\n", "--dry-sequence-breaker", "###", "--xtc-probability", "0.5", "--xtc-threshold",
                              "0.2", "--top-n-sigma", "1.5", "--dynatemp-range", "0.2", "--dynatemp-exp", "2",
                              "--mirostat", "1", "--mirostat-lr", "0.2", "--mirostat-ent", "4", "--samplers",
                              "penalties;top_k;temperature", "--logit-bias", "15043+1", "--logit-bias", "15044-inf",
                              "--seed", "9"])
    p = params_from_args(args)
    assert (p.temp, p.top_k, p.top_p, p.min_p, p.typical_p) == (0.5, 20, 0.8, 0.1, 0.9)
    assert (p.repeat_penalty, p.penalty_last_n, p.frequency_penalty, p.presence_penalty) == (1.1, 32, 0.2, 0.3)
    assert (p.dry_multiplier, p.dry_base, p.dry_allowed_length, p.dry_penalty_last_n) == (0.8, 2.0, 3, -1)
    assert p.dry_sequence_breakers == ("\n", "###")
    assert (p.xtc_probability, p.xtc_threshold, p.top_n_sigma) == (0.5, 0.2, 1.5)
    assert (p.dynatemp_range, p.dynatemp_exponent) == (0.2, 2.0)
    assert (p.mirostat, p.mirostat_eta, p.mirostat_tau) == (1, 0.2, 4.0)
    assert p.samplers == ("penalties", "top_k", "temperature")
    assert p.logit_bias == {15043: 1.0, 15044: -math.inf} and p.seed == 9
    assert params_from_args(parser.parse_args([])) == SamplingParams()
    assert params_from_args(parser.parse_args(["--greedy"])).to_sampler().describe() == "greedy"
    assert params_from_args(parser.parse_args(["--sampler-order", "hf"])).samplers == HF_ORDER
    assert params_from_args(parser.parse_args(["--dry-sequence-breaker", "none"])).dry_sequence_breakers == ()
    with pytest.raises(SamplerArgumentError, match="--samplers.*--sampler-order"):
        params_from_args(parser.parse_args(["--sampler-order", "hf", "--samplers", "top_k"]))
    with pytest.raises(SamplerArgumentError, match="top_p"):
        params_from_args(parser.parse_args(["--top-p", "7"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--logit-bias", "hello"])
