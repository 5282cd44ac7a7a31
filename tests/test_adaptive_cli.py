"""Choosing adaptive samplers from flags, `/sampler NAME` and the server's sampler object."""
import argparse

import pytest

from minillama.errors import SamplerArgumentError
from minillama.sampling.adaptive_cli import adaptive_from_args, add_adaptive_args, build_adaptive
from minillama.sampling.alpha import AlphaSampler
from minillama.sampling.base import Greedy
from minillama.sampling.entropy import EntropySampler
from minillama.sampling.rdnet import RDNet


def parse(*argv):
    p = argparse.ArgumentParser()
    add_adaptive_args(p)
    return p.parse_args(list(argv))


def test_flags_build_each_sampler():
    assert adaptive_from_args(parse(), None) is None                        # chain: the caller's own
    e = adaptive_from_args(parse("--sampler", "entropy", "--entropy-preset", "torch"), None)
    assert isinstance(e, EntropySampler) and e.config.helv_ent_thresh == 3.0
    a = adaptive_from_args(parse("--sampler", "alpha", "--no-alpha-lookahead", "--alpha-candidates", "5"), None)
    assert isinstance(a, AlphaSampler) and a.config.lookahead is False and a.config.lookahead_candidates == 5
    chain = Greedy()
    r = adaptive_from_args(parse("--sampler", "rdnet", "--rdnet-mix", "0.25", "--rdnet-base", "chain"), chain)
    assert isinstance(r, RDNet) and r.mix == 0.25 and r.base is chain
    r = adaptive_from_args(parse("--sampler", "rdnet"), chain)
    assert isinstance(r.base, Greedy) and r.base is not chain


def test_build_by_name_with_fields():
    e = build_adaptive("entropy", {"preset": "jax", "temp": 0.5, "question_token": 4})
    assert e.config.temp == 0.5 and e.insert_token == 4
    assert build_adaptive("alpha", {"cold_point": 0.3}).config.cold_point == 0.3
    assert build_adaptive("rdnet", {"memory_size": 8, "seed": 2}).memory_size == 8


@pytest.mark.parametrize("name,options,match", [
    ("mirostat3", {}, "unknown sampler"),
    ("entropy", {"temperature": 1.0}, "no option 'temperature'"),
    ("alpha", {"COLD_POINT": 0.5}, "no option"),
    ("rdnet", {"base": "beam"}, "rdnet base"),
    ("rdnet", {"base": "chain"}, "needs a chain"),
    ("entropy", {"top_k": "many"}, "wrong type"),
    ("entropy", {"top_p": 2.0}, "top_p"),
    ("rdnet", {"mix": -1}, "mix"),
])
def test_clear_errors(name, options, match):
    with pytest.raises(SamplerArgumentError, match=match):
        build_adaptive(name, options)
