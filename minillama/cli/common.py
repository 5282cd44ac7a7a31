"""What the subcommands share: the model flags, the sampler and drugs built from flags, opening the engine, and the
llama.cpp-style timing lines.

Output convention for every subcommand: stdout carries only generated text (or the --json object); everything else
(download progress, notices, timings, answers to chat commands) goes to stderr, so `minillama ... > out.txt` and
pipes get exactly the model's words.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
from dataclasses import dataclass
from typing import Any, Callable, TextIO

from ..drugs import Drugs, add_drugs_args
from ..errors import ModelLoadError, SamplerArgumentError
from ..loading.sources import DEFAULT_MODEL, PRESETS, download_hint, resolve_source
from ..sampling.adaptive_cli import ADAPTIVE_NAMES, add_adaptive_args, adaptive_from_args, build_adaptive
from ..sampling.base import Sampler
from ..sampling.params import SamplingParams, add_sampling_args, params_from_args

def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("-m", "--model", metavar="SOURCE", default=None,
                       help=f"a model folder, a .gguf file, a preset ({', '.join(p.name for p in PRESETS.values())}) "
                            f"or a Hugging Face repo id; presets and repo ids are downloaded once into "
                            f"$MINILLAMA_WEIGHTS or ./weights (default: {DEFAULT_MODEL})")
    group.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                       help="weight and activation dtype (default: float32)")
    group.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1, mps (default: cpu)")
    group.add_argument("--quant", default=None, help="quantize the weights on load (none yet)")
    group.add_argument("-c", "--ctx-size", type=int, default=None, metavar="N",
                       help="context length in tokens (default: the model's)")
    group.add_argument("--context-shift", action="store_true",
                       help="when the context is full, drop the oldest tokens (after the first) instead of stopping")


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """Seed, llama.cpp's sampling flags (--greedy among them), the adaptive samplers and the DRµGS flags."""
    parser.add_argument("-s", "--seed", type=int, default=None,
                        help="random seed; the same seed and settings repeat exactly (default: random)")
    add_sampling_args(parser)
    add_adaptive_args(parser)
    add_drugs_args(parser)


def open_engine(args: argparse.Namespace):
    """Resolve --model (downloading a preset on first use) and load it."""
    from ..engine import Engine    # torch and the model code load only once the arguments are known to be good
    source = resolve_source(args.model)
    try:
        return Engine.from_pretrained(source, dtype=args.dtype, device=args.device, quant=args.quant,
                                      context_length=args.ctx_size, context_shift=args.context_shift)
    except ModelLoadError as error:
        if source.is_dir() and not (source / "config.json").exists():   # an empty or half-made folder
            raise ModelLoadError(f"{error}. {download_hint(source)}") from error
        raise


@dataclass(frozen=True)
class SamplerSetup:
    """The user's sampler choice: llama.cpp chain settings, and optionally an adaptive sampler (which may wrap the
    chain, as RD-NET with base=chain does).

    Kept as settings rather than as a sampler object so the chat `/sampler` command can change one and rebuild."""
    params: SamplingParams
    adaptive: str | None = None                                           # "entropy" | "alpha" | "rdnet"
    make_adaptive: Callable[[Sampler, Any], Sampler | None] | None = None  # (chain, tokenizer) -> sampler

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "SamplerSetup":
        params = params_from_args(args)
        name = getattr(args, "sampler", "chain")
        if name == "chain":
            return cls(params)
        return cls(params, name, lambda chain, tokenizer: adaptive_from_args(args, chain, tokenizer=tokenizer))

    def build(self, tokenizer: Any = None) -> Sampler:
        chain = self.params.to_sampler(tokenizer)
        if self.make_adaptive is None:
            return chain
        return self.make_adaptive(chain, tokenizer) or chain

    def command(self, text: str, tokenizer: Any = None) -> "SamplerSetup":
        """The setup after a chat `/sampler ...` command; raises SamplerArgumentError (self unchanged)."""
        name, _, rest = text.strip().partition(" ")
        if name == "chain":
            return SamplerSetup(self.params.updated(rest))
        if name in ADAPTIVE_NAMES:
            options = _options(rest)
            setup = SamplerSetup(self.params, name, lambda chain, tok: build_adaptive(name, options, chain,
                                                                                      tokenizer=tok))
            setup.build(tokenizer)      # reject bad options now, not at the next answer
            return setup
        return dataclasses.replace(self, params=self.params.updated(text))

    def describe(self, tokenizer: Any = None) -> str:
        """The chain in order, or the adaptive sampler with its settings."""
        sampler = self.build(tokenizer)
        describe = getattr(sampler, "describe", None)
        return describe() if callable(describe) else repr(sampler)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.adaptive or "chain", "description": self.describe(), "params": self.params.to_dict()}


def _options(text: str) -> dict[str, Any]:
    """Adaptive sampler options from "key=value ...": values read as JSON (0.5, true, null), else kept as text."""
    options: dict[str, Any] = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SamplerArgumentError(f"cannot read {item!r}: write adaptive sampler options as key=value")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def resolve_seed(setup: SamplerSetup) -> int:
    """The seed to use: the user's, else a fresh random one (reported, so any run can be repeated)."""
    return setup.params.seed if setup.params.seed is not None else random.getrandbits(32)


def drugs_json(drugs: Drugs | None) -> Any:
    if drugs is None:
        return None
    if dataclasses.is_dataclass(drugs):
        return {"description": drugs.describe(),
                **{k: _plain(v) for k, v in dataclasses.asdict(drugs).items()}}
    return {"description": drugs.describe()}


def _plain(value: Any) -> Any:
    """JSON-friendly: tuples to lists, anything exotic to its str."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def print_timings(stats, out: TextIO = sys.stderr) -> None:
    """llama.cpp's llama_perf_context_print lines."""
    def line(label: str, seconds: float, tokens: int) -> str:
        ms = seconds * 1000.0
        per_token = ms / tokens if tokens else 0.0
        tps = tokens / seconds if seconds > 0 else 0.0
        return (f"{label} = {ms:10.2f} ms / {tokens:5d} tokens ({per_token:8.2f} ms per token, "
                f"{tps:8.2f} tokens per second)")
    print(line("prompt eval time", stats.prefill_s, stats.prompt_tokens), file=out)
    print(line("       eval time", stats.decode_s, stats.new_tokens), file=out)
    total_s = stats.prefill_s + stats.decode_s
    print(f"      total time = {total_s * 1000.0:10.2f} ms / {stats.prompt_tokens + stats.new_tokens:5d} tokens",
          file=out)
