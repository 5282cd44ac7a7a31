"""Choosing an adaptive sampler by name: CLI flags, the chat's `/sampler NAME`, the HTTP server's `sampler` object.

    build_adaptive("entropy", {"preset": "torch", "temp": 0.7}, base=None, tokenizer=tok)
    build_adaptive("alpha", {"lookahead": False})
    build_adaptive("rdnet", {"mix": 0.5, "base": "chain"}, base=chain_sampler)

Options are the config fields of each sampler (EntropyConfig, alpha's SamplerConfig, RDNet's keyword arguments);
unknown names and fields raise SamplerArgumentError listing what is valid.
"""
from __future__ import annotations

import argparse
import inspect
from typing import Any

from ..errors import SamplerArgumentError
from .alpha import AlphaSampler, SamplerConfig, alpha_config_fields
from .base import Sampler
from .entropy import EntropyConfig, EntropySampler, entropy_config_fields
from .rdnet import RDNet

ADAPTIVE_NAMES = ("entropy", "alpha", "rdnet")
SAMPLER_CHOICES = ("chain",) + ADAPTIVE_NAMES
RDNET_BASES = ("greedy", "chain")
RDNET_FIELDS = tuple(p for p in inspect.signature(RDNet.__init__).parameters
                     if p not in ("self", "base", "lm_head"))


def _check_fields(name: str, options: dict[str, Any], valid: list[str] | tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise SamplerArgumentError(f"sampler {name!r} has no option {', '.join(map(repr, unknown))}; "
                                   f"valid options: {', '.join(valid)}")


def build_adaptive(name: str, options: dict[str, Any] | None = None, base: Sampler | None = None, *,
                   tokenizer: Any = None) -> Sampler:
    """An adaptive sampler by name with config fields from `options`.

    entropy: EntropyConfig fields, plus "preset" ("jax" default, "torch"), "question_token", "pause_token".
    alpha:   SamplerConfig fields.
    rdnet:   RDNet keywords (memory_size, dim, mix, drift_start, drift_floor, decay, seed) plus "base":
             "greedy" (default) or "chain" (then `base` — the caller's chain sampler — is wrapped).
    """
    try:
        return _build(name, dict(options or {}), base, tokenizer)
    except TypeError as e:   # a JSON value of the wrong type, e.g. {"top_k": "many"}
        raise SamplerArgumentError(f"sampler {name!r}: an option has the wrong type ({e})") from None


def _build(name: str, options: dict[str, Any], base: Sampler | None, tokenizer: Any) -> Sampler:
    if name == "entropy":
        extra = ("preset", "question_token", "pause_token")
        _check_fields(name, options, entropy_config_fields() + list(extra))
        preset = options.pop("preset", "jax")
        question, pause = options.pop("question_token", None), options.pop("pause_token", None)
        return EntropySampler(EntropyConfig.preset(preset, **options), tokenizer=tokenizer,
                              pause_token=pause, question_token=question)
    if name == "alpha":
        _check_fields(name, options, alpha_config_fields())
        return AlphaSampler(SamplerConfig(**options))
    if name == "rdnet":
        _check_fields(name, options, RDNET_FIELDS + ("base",))
        base_name = options.pop("base", "greedy")
        if base_name not in RDNET_BASES:
            raise SamplerArgumentError(f"rdnet base {base_name!r} is unknown; choose one of {', '.join(RDNET_BASES)}")
        if base_name == "chain" and base is None:
            raise SamplerArgumentError("rdnet base 'chain' needs a chain sampler to wrap; none was given")
        return RDNet(base if base_name == "chain" else None, **options)
    raise SamplerArgumentError(f"unknown sampler {name!r}; choose one of {', '.join(ADAPTIVE_NAMES)} "
                               f"(or 'chain' for the llama.cpp chain)")


def add_adaptive_args(parser: argparse.ArgumentParser) -> None:
    """--sampler and the adaptive samplers' key flags (the chain's own flags live with the chain)."""
    g = parser.add_argument_group("adaptive samplers")
    g.add_argument("--sampler", choices=SAMPLER_CHOICES, default="chain",
                   help="chain: llama.cpp's top-k/top-p/min-p/temperature chain (default); entropy: entropix's "
                        "four-quadrant sampler; alpha: AlphaSampler; rdnet: RD-NET drifted memory over a base")
    g.add_argument("--entropy-preset", choices=("jax", "torch"), default="jax",
                   help="entropix thresholds: the JAX classic (default) or its torch twin")
    g.add_argument("--entropy-adaptive-score", choices=("logprob", "lookahead"), default="logprob",
                   help="how the adaptive regime picks among its draws: max log-prob, or log-prob plus a "
                        "confidence from a one-token lookahead")
    g.add_argument("--alpha-lookahead", action=argparse.BooleanOptionalAction, default=True,
                   help="AlphaSampler: choose COLD tokens by one-token lookahead on cache forks")
    g.add_argument("--alpha-candidates", type=int, default=3, metavar="N",
                   help="AlphaSampler: lookahead candidates per COLD step (default 3)")
    g.add_argument("--rdnet-base", choices=RDNET_BASES, default="greedy",
                   help="RD-NET: the sampler that draws after the memory bias (default greedy)")
    g.add_argument("--rdnet-mix", type=float, default=1.0, help="RD-NET: weight of the memory bias (>= 0)")
    g.add_argument("--rdnet-memory", type=int, default=64, metavar="SLOTS", help="RD-NET: memory slots")
    g.add_argument("--rdnet-drift-start", type=float, default=0.1, help="RD-NET: initial key drift")
    g.add_argument("--rdnet-drift-floor", type=float, default=0.02, help="RD-NET: final key drift")
    g.add_argument("--rdnet-decay", type=float, default=10_000.0, metavar="TOKENS",
                   help="RD-NET: e-folding time of the drift, in tokens")
    g.add_argument("--rdnet-seed", type=int, default=0, help="RD-NET: seed of the fixed random memory")


def adaptive_from_args(args: argparse.Namespace, base: Sampler | None, *, tokenizer: Any = None) -> Sampler | None:
    """The sampler the flags ask for, or None for --sampler chain (the caller then uses `base`, its chain)."""
    name = args.sampler
    if name == "chain":
        return None
    if name == "entropy":
        return build_adaptive(name, {"preset": args.entropy_preset, "adaptive_score": args.entropy_adaptive_score},
                              tokenizer=tokenizer)
    if name == "alpha":
        return build_adaptive(name, {"lookahead": args.alpha_lookahead,
                                     "lookahead_candidates": args.alpha_candidates})
    return build_adaptive(name, {"base": args.rdnet_base, "mix": args.rdnet_mix, "memory_size": args.rdnet_memory,
                                 "drift_start": args.rdnet_drift_start, "drift_floor": args.rdnet_drift_floor,
                                 "decay": args.rdnet_decay, "seed": args.rdnet_seed}, base)


__all__ = ["add_adaptive_args", "adaptive_from_args", "build_adaptive", "ADAPTIVE_NAMES", "SAMPLER_CHOICES"]
