"""Sampling settings with llama.cpp's names and defaults, and how they become a SamplerChain.

One SamplingParams feeds every front end: the CLI (`add_sampling_args` / `params_from_args`, llama.cpp's flag
names), the chat `/sampler top_k=20 temp=0.5` command (`updated`) and the HTTP server (`from_dict` / `to_dict`,
OpenAI and llama.cpp server field names).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..errors import SamplerArgumentError
from .chain import (XTC, ChainElement, DynamicTemperature, GreedyFinal, LogitBias, MinP, SamplerChain, Temperature,
                    TopK, TopNSigma, TopP, Typical, check_number, Dist)
from .dry import DRY
from .mirostat import MirostatV1, MirostatV2
from .penalties import Penalties

# llama.cpp's canonical sampler names (common/sampling.cpp), in its default order; logit bias always runs first
# and the final draw last, so neither is listed.
LLAMA_CPP_ORDER = ("penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature")
# transformers' GenerationMixin: repetition processors, then warpers Temperature -> TopK -> TopP -> MinP -> Typical.
# Temperature first means min-p/top-p cut the *tempered* distribution (the min-p paper's setting).
HF_ORDER = ("penalties", "dry", "temperature", "top_k", "top_p", "min_p", "typ_p", "top_n_sigma", "xtc")
SAMPLER_ORDERS = {"llama.cpp": LLAMA_CPP_ORDER, "hf": HF_ORDER}

# llama.cpp also accepts these spellings in --samplers
SAMPLER_ALIASES = {
    "top-k": "top_k", "top-p": "top_p", "nucleus": "top_p", "typical": "typ_p", "typical-p": "typ_p",
    "typical_p": "typ_p", "typ-p": "typ_p", "typ": "typ_p", "min-p": "min_p", "temp": "temperature",
    "top-n-sigma": "top_n_sigma", "repetition": "penalties",
}

# other names the same settings go by: llama.cpp's struct fields and server JSON, OpenAI, our CLI flags
FIELD_ALIASES = {
    "temperature": "temp", "typical": "typical_p", "typ_p": "typical_p", "repeat_last_n": "penalty_last_n",
    "n_prev": "penalty_last_n", "penalty_repeat": "repeat_penalty", "penalty_freq": "frequency_penalty",
    "penalty_present": "presence_penalty", "dynatemp_exp": "dynatemp_exponent", "mirostat_lr": "mirostat_eta",
    "mirostat_ent": "mirostat_tau", "dry_sequence_breaker": "dry_sequence_breakers", "sampler_order": "samplers",
    "order": "samplers",
}


def _default_breakers() -> tuple[str, ...]:
    return ("\n", ":", "\"", "*")


@dataclass(frozen=True)
class SamplingParams:
    """llama.cpp's `common_params_sampling`, with its defaults. Neutral values make an element inert.

    seed None draws a random seed (llama.cpp's LLAMA_DEFAULT_SEED); the engine seeds each sequence's generator.
    samplers: the order of the chain's middle, as names, a "a;b;c" string, or a preset name ("llama.cpp", "hf").
    """
    seed: int | None = None
    temp: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    penalty_last_n: int = 64
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = 64
    dry_sequence_breakers: tuple[str, ...] = field(default_factory=_default_breakers)
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    top_n_sigma: float = -1.0
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    samplers: tuple[str, ...] = LLAMA_CPP_ORDER
    min_keep: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.type == "float":
                value = getattr(self, f.name)
                check_number(f.name, value, None, None)
                object.__setattr__(self, f.name, float(value))
        if self.seed is not None:
            check_number("seed", self.seed, 0, 2 ** 64 - 1, integer=True, note=" (or None for a random seed)")
        check_number("top_k", self.top_k, -1, None, integer=True, note=" (<= 0 disables)")
        for name in ("top_p", "min_p", "typical_p", "xtc_probability", "xtc_threshold"):
            check_number(name, getattr(self, name), 0.0, 1.0)
        check_number("penalty_last_n", self.penalty_last_n, -1, None, integer=True,
                     note=" (-1 = whole context, 0 = off)")
        check_number("repeat_penalty", self.repeat_penalty, 0.0, None, lo_open=True, note=" (1.0 = off)")
        check_number("dry_multiplier", self.dry_multiplier, 0.0, None, note=" (0 = off)")
        check_number("dry_base", self.dry_base, 1.0, None)
        check_number("dry_allowed_length", self.dry_allowed_length, 1, None, integer=True)
        check_number("dry_penalty_last_n", self.dry_penalty_last_n, -1, None, integer=True,
                     note=" (-1 = whole context, 0 = off)")
        check_number("dynatemp_range", self.dynatemp_range, 0.0, None)
        check_number("dynatemp_exponent", self.dynatemp_exponent, 0.0, None)
        if self.mirostat not in (0, 1, 2) or isinstance(self.mirostat, bool):
            raise SamplerArgumentError(f"mirostat must be 0 (off), 1 or 2 (got {self.mirostat!r})")
        check_number("mirostat_tau", self.mirostat_tau, 0.0, None)
        check_number("mirostat_eta", self.mirostat_eta, 0.0, None)
        check_number("min_keep", self.min_keep, 0, None, integer=True)
        object.__setattr__(self, "dry_sequence_breakers", _breakers(self.dry_sequence_breakers))
        object.__setattr__(self, "logit_bias", _logit_bias(self.logit_bias))
        object.__setattr__(self, "samplers", sampler_names(self.samplers))

    # -- building the chain ---------------------------------------------------------------------------------------

    @property
    def greedy(self) -> bool:
        """temp <= 0 (and no dynamic range lifting it above 0): the chain ends in an exact argmax."""
        return self.temp <= 0.0 and self.temp + self.dynatemp_range <= 0.0

    def to_sampler(self, tokenizer: Any = None) -> SamplerChain:
        """The chain llama.cpp's common_sampler_init builds from these settings.

        logit bias -> the `samplers` elements in order (neutral ones left out) -> dist. With mirostat 1/2 the list
        is ignored, as in llama.cpp: logit bias -> temperature -> mirostat. When greedy, elements that cannot move
        the argmax (top-k/p, min-p, top-n-sigma, temperature) are left out and the chain ends in argmax.
        `tokenizer` maps DRY's text sequence breakers to tokens.
        """
        elements: list[ChainElement] = []
        if self.logit_bias:
            elements.append(LogitBias(self.logit_bias))
        if self.mirostat:
            if self.temp != 1.0:
                elements.append(Temperature(self.temp))
            final: ChainElement = (MirostatV1(self.mirostat_tau, self.mirostat_eta) if self.mirostat == 1
                                   else MirostatV2(self.mirostat_tau, self.mirostat_eta))
        else:
            for name in self.samplers:
                element = self._element(name)
                if element is not None:
                    elements.append(element)
            final = GreedyFinal() if self.greedy else Dist()
        chain = SamplerChain(elements, final)
        if tokenizer is not None:
            chain.bind(tokenizer)
        return chain

    def _element(self, name: str) -> ChainElement | None:
        greedy = self.greedy
        if name == "penalties":
            element = Penalties(self.penalty_last_n, self.repeat_penalty, self.frequency_penalty,
                                self.presence_penalty)
            return None if element.inert else element
        if name == "dry":
            if self.dry_multiplier == 0.0 or self.dry_penalty_last_n == 0:
                return None
            return DRY(self.dry_multiplier, self.dry_base, self.dry_allowed_length, self.dry_penalty_last_n,
                       self.dry_sequence_breakers)
        if name == "top_n_sigma":
            return None if self.top_n_sigma <= 0.0 or greedy else TopNSigma(self.top_n_sigma)
        if name == "top_k":
            return None if self.top_k <= 0 or greedy else TopK(self.top_k)
        if name == "typ_p":
            return None if self.typical_p >= 1.0 else Typical(self.typical_p, self.min_keep)
        if name == "top_p":
            return None if self.top_p >= 1.0 or greedy else TopP(self.top_p, self.min_keep)
        if name == "min_p":
            return None if self.min_p <= 0.0 or greedy else MinP(self.min_p, self.min_keep)
        if name == "xtc":
            if self.xtc_probability <= 0.0 or self.xtc_threshold > 0.5:
                return None
            return XTC(self.xtc_probability, self.xtc_threshold, self.min_keep)
        if name == "temperature":
            if greedy:
                return None
            if self.dynatemp_range > 0.0:
                return DynamicTemperature(self.temp, self.dynatemp_range, self.dynatemp_exponent)
            return None if self.temp == 1.0 else Temperature(self.temp)
        raise AssertionError(f"unhandled sampler name {name}")   # sampler_names() admits only the names above

    # -- conversions ----------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly values under the field names (from_dict reads them back)."""
        out = dataclasses.asdict(self)
        out["dry_sequence_breakers"] = list(self.dry_sequence_breakers)
        out["samplers"] = list(self.samplers)
        out["logit_bias"] = dict(self.logit_bias)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, ignore_unknown: bool = False,
                  base: "SamplingParams | None" = None) -> "SamplingParams":
        """Settings from a JSON-like dict: our field names, llama.cpp server names (temperature, typ_p,
        repeat_last_n, ...) and OpenAI's (temperature, top_p, frequency_penalty, presence_penalty, seed,
        logit_bias). Unset fields come from `base` (default: the defaults). seed -1 or None means random.
        logit_bias may be {"id": bias} or llama.cpp's [[id, bias], ...] with false meaning -inf.
        Unknown keys raise SamplerArgumentError unless ignore_unknown (a request body holds other keys too)."""
        changes: dict[str, Any] = {}
        unknown = []
        for key, value in values.items():
            name = _field_name(key)
            if name is None:
                unknown.append(key)
                continue
            if name == "seed" and value is not None and not isinstance(value, bool) and isinstance(value, int) \
                    and value < 0:
                value = None
            changes[name] = value
        if unknown and not ignore_unknown:
            raise SamplerArgumentError(f"unknown sampling setting(s) {', '.join(map(repr, unknown))}; known: "
                                       f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        return dataclasses.replace(base if base is not None else cls(), **changes)

    def updated(self, text: str) -> "SamplingParams":
        """A copy with settings from "key=value key=value" text (the chat `/sampler` command); self is unchanged.

        Values: numbers; seed=random; samplers=top_k;temp or a preset (hf, llama.cpp);
        dry_sequence_breakers=["\\n", ":"] (JSON) or none; logit_bias=15043+1;15044-inf or a JSON object.
        """
        changes: dict[str, Any] = {}
        position = 0
        for match in _SETTING.finditer(text):
            if text[position:match.start()].strip():
                raise SamplerArgumentError(f"cannot read {text[position:match.start()].strip()!r}: write "
                                           f"settings as key=value, e.g. 'top_k=20 temp=0.5'")
            position = match.end()
            key, raw = match.group(1), match.group(2)
            name = _field_name(key)
            if name is None:
                raise SamplerArgumentError(f"unknown sampling setting {key!r}; known: "
                                           f"{', '.join(f.name for f in dataclasses.fields(self))}")
            changes[name] = _parse_text_value(name, raw)
        if text[position:].strip():
            raise SamplerArgumentError(f"cannot read {text[position:].strip()!r}: write settings as key=value, "
                                       f"e.g. 'top_k=20 temp=0.5'")
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------------------------------------------------
# normalisation and parsing helpers

_SETTING = re.compile(r"([A-Za-z_][\w.-]*)\s*=\s*(\[[^\]]*\]|\{[^}]*\}|\"(?:[^\"\\]|\\.)*\"|\S+)")


def _field_name(key: str) -> str | None:
    name = key.strip().lstrip("-").replace("-", "_")
    name = FIELD_ALIASES.get(name, name)
    return name if name in _FIELD_TYPES else None


def sampler_names(samplers: str | Sequence[str]) -> tuple[str, ...]:
    """Canonical element names from a preset name, an "a;b;c" / "a,b,c" string or a list (aliases allowed)."""
    if isinstance(samplers, str):
        if samplers in SAMPLER_ORDERS:
            return SAMPLER_ORDERS[samplers]
        samplers = [part for part in re.split(r"[;,\s]+", samplers) if part]
    names = []
    for raw in samplers:
        name = SAMPLER_ALIASES.get(raw.strip().lower(), raw.strip().lower())
        if name not in LLAMA_CPP_ORDER:
            raise SamplerArgumentError(
                f"unknown sampler {raw!r} in samplers; known: {', '.join(LLAMA_CPP_ORDER)} "
                f"(also {', '.join(sorted(SAMPLER_ALIASES))}), or a preset: {', '.join(SAMPLER_ORDERS)}")
        names.append(name)
    return tuple(names)


def _breakers(breakers: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(breakers, str):
        breakers = [breakers]
    out = []
    for breaker in breakers:
        if not isinstance(breaker, str) or not breaker:
            raise SamplerArgumentError(f"dry_sequence_breakers must be non-empty strings (got {breaker!r})")
        out.append(breaker)
    return tuple(out)


def _logit_bias(bias: Mapping[Any, Any] | Sequence[Any]) -> dict[int, float]:
    """{id: bias} with ids as ints; accepts llama.cpp's [[id, bias], ...] pairs where false means -inf."""
    pairs = bias.items() if isinstance(bias, Mapping) else bias
    out: dict[int, float] = {}
    for pair in pairs:
        try:
            token, value = pair
            token = int(token)
        except (TypeError, ValueError):
            raise SamplerArgumentError(f"logit_bias entries must be token id -> bias (got {pair!r})") from None
        if value is False:
            value = -math.inf
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
                or value == math.inf:
            raise SamplerArgumentError(f"logit_bias for token {token} must be a finite number or -inf "
                                       f"(got {value!r})")
        check_number("logit_bias token id", token, 0, None, integer=True)
        out[token] = float(value)
    return out


def parse_logit_bias(text: str) -> tuple[int, float]:
    """llama.cpp's TOKEN_ID(+|-)BIAS, e.g. '15043+1', '15043-inf'."""
    match = re.fullmatch(r"\s*(\d+)\s*([+-])\s*(\S+)\s*", text)
    try:
        if match is None:
            raise ValueError
        magnitude = float(match.group(3))
        if math.isnan(magnitude) or magnitude < 0:
            raise ValueError
    except ValueError:
        raise SamplerArgumentError(f"logit bias {text!r} must look like TOKEN_ID+BIAS or TOKEN_ID-BIAS "
                                   f"(e.g. 15043+1 or 15043-inf)") from None
    bias = magnitude if match.group(2) == "+" else -magnitude
    if bias == math.inf:
        raise SamplerArgumentError(f"logit bias {text!r}: +inf is not allowed (use a large finite bias)")
    return int(match.group(1)), bias


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(SamplingParams)}


def _parse_text_value(name: str, raw: str) -> Any:
    kind = _FIELD_TYPES[name]
    try:
        if name == "seed":
            return None if raw.lower() in ("random", "none", "-1") else int(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if name == "samplers":
            return raw
        if name == "dry_sequence_breakers":
            if raw.lower() == "none":
                return ()
            return json.loads(raw) if raw.startswith(("[", "\"")) else raw
        if name == "logit_bias":
            if raw.startswith("{"):
                return json.loads(raw)
            return dict(parse_logit_bias(part) for part in re.split(r"[;,]", raw) if part.strip())
    except SamplerArgumentError:
        raise
    except ValueError:       # int()/float()/json.loads on text that is not one
        raise SamplerArgumentError(f"{name}={raw!r}: expected {_EXPECTED.get(name, kind)}") from None
    raise AssertionError(f"no parser for {name}")


_EXPECTED = {"seed": "an integer or 'random'", "dry_sequence_breakers": "a JSON list of strings or 'none'",
             "logit_bias": "TOKEN_ID(+|-)BIAS;... or a JSON object"}


# ------------------------------------------------------------------------------------------------------------------
# command line (llama.cpp's flag names)

def _logit_bias_arg(text: str) -> tuple[int, float]:
    try:
        return parse_logit_bias(text)
    except SamplerArgumentError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# flag -> (field, type, help); defaults shown from SamplingParams
_FLAGS: list[tuple[str, str, type, str]] = [
    ("--temp", "temp", float, "temperature; <= 0 is greedy"),
    ("--top-k", "top_k", int, "top-k sampling (0 = off)"),
    ("--top-p", "top_p", float, "top-p (nucleus) sampling (1.0 = off)"),
    ("--min-p", "min_p", float, "min-p sampling (0.0 = off)"),
    ("--typical", "typical_p", float, "locally typical sampling, parameter p (1.0 = off)"),
    ("--repeat-penalty", "repeat_penalty", float, "penalize repeated tokens (1.0 = off)"),
    ("--repeat-last-n", "penalty_last_n", int, "tokens the penalties look back over (0 = off, -1 = context)"),
    ("--frequency-penalty", "frequency_penalty", float, "repeat alpha frequency penalty (0.0 = off)"),
    ("--presence-penalty", "presence_penalty", float, "repeat alpha presence penalty (0.0 = off)"),
    ("--dry-multiplier", "dry_multiplier", float, "DRY sampling multiplier (0.0 = off)"),
    ("--dry-base", "dry_base", float, "DRY sampling base value"),
    ("--dry-allowed-length", "dry_allowed_length", int, "allowed length for DRY sampling"),
    ("--dry-penalty-last-n", "dry_penalty_last_n", int, "DRY penalty for the last n tokens (0 = off, -1 = context)"),
    ("--xtc-probability", "xtc_probability", float, "xtc probability (0.0 = off)"),
    ("--xtc-threshold", "xtc_threshold", float, "xtc threshold (> 0.5 = off)"),
    ("--top-n-sigma", "top_n_sigma", float, "top-n-sigma sampling (-1 = off)"),
    ("--dynatemp-range", "dynatemp_range", float, "dynamic temperature range (0.0 = off)"),
    ("--dynatemp-exp", "dynatemp_exponent", float, "dynamic temperature exponent"),
    ("--mirostat", "mirostat", int, "use Mirostat sampling: 0 = off, 1 = Mirostat, 2 = Mirostat 2.0; "
                                    "ignores the other samplers except temperature"),
    ("--mirostat-lr", "mirostat_eta", float, "Mirostat learning rate, parameter eta"),
    ("--mirostat-ent", "mirostat_tau", float, "Mirostat target entropy, parameter tau"),
]


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """Add llama.cpp's sampling flags (a 'sampling' group). Unset flags stay None so defaults live in one place.
    The seed flag is left to the caller; params_from_args reads args.seed when present (negative = random)."""
    group = parser.add_argument_group("sampling")
    defaults = SamplingParams()
    for flag, name, kind, text in _FLAGS:
        group.add_argument(flag, dest=name, type=kind, default=None,
                           help=f"{text} (default: {getattr(defaults, name)})")
    group.add_argument("--dry-sequence-breaker", dest="dry_sequence_breakers", action="append", default=None,
                       metavar="STRING", help="add a DRY sequence breaker, replacing the defaults "
                                              "('\\n', ':', '\"', '*'); 'none' for no breakers")
    group.add_argument("--samplers", dest="samplers", default=None, metavar="SEQUENCE",
                       help=f"samplers in order, separated by ';' (default: {';'.join(LLAMA_CPP_ORDER)})")
    group.add_argument("--sampler-order", dest="sampler_order", choices=sorted(SAMPLER_ORDERS), default=None,
                       help="preset order: llama.cpp (temperature last) or hf (temperature first, as transformers)")
    group.add_argument("--logit-bias", dest="logit_bias", action="append", type=_logit_bias_arg, default=None,
                       metavar="TOKEN_ID(+|-)BIAS", help="modify one token's logit, e.g. 15043+1 or 15043-inf "
                                                         "(repeatable)")
    group.add_argument("--greedy", dest="greedy", action="store_true", default=False,
                       help="always take the most likely token (same as --temp 0)")


def params_from_args(args: argparse.Namespace) -> SamplingParams:
    """SamplingParams from flags added by add_sampling_args; flags not given keep llama.cpp's defaults."""
    changes: dict[str, Any] = {}
    for _, name, _, _ in _FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    breakers = getattr(args, "dry_sequence_breakers", None)
    if breakers is not None:
        changes["dry_sequence_breakers"] = () if breakers == ["none"] else tuple(breakers)
    samplers, order = getattr(args, "samplers", None), getattr(args, "sampler_order", None)
    if samplers is not None and order is not None:
        raise SamplerArgumentError("give either --samplers (an explicit order) or --sampler-order (a preset), "
                                   "not both")
    if samplers is not None or order is not None:
        changes["samplers"] = samplers if samplers is not None else order
    if getattr(args, "logit_bias", None):
        changes["logit_bias"] = dict(args.logit_bias)
    if getattr(args, "greedy", False):
        changes["temp"] = 0.0
    seed = getattr(args, "seed", None)
    if seed is not None:
        changes["seed"] = None if seed < 0 else seed
    return SamplingParams(**changes)
