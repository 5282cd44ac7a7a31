"""Timing minillama itself: load, prefill (pp), decode (tg), time to first token, peak memory, and decode with the
engine's steering features on (DRµGS, attention capture, each shipped sampler).

Definitions, shared with scripts/bench_vs_transformers.py so both engines are timed alike:
  pp  t/s = prompt tokens / prefill seconds (the prompt's forward, up to the logits of its last position);
  ttft    = seconds from the call to the first generated token (prefill + the first sampling);
  tg  t/s = (new tokens - 1) / (seconds from the first generated token to the last): each of those tokens costs
            one one-token forward and one sampling step, which is what "decode speed" means;
  peak RSS = the process's resident-set high-water mark: VmHWM from /proc/self/status on Linux (reset by exec, so a
            subprocess does not inherit its parent's peak as getrusage's ru_maxrss does), ru_maxrss elsewhere. It
            never goes down: it is the peak of everything the process did so far.
EOS never ends a measured run early: the engine sees a tokenizer with no end-of-sequence ids while it is timed, so
every run decodes exactly the tokens asked for, on the same fast paths as an ordinary generation.
"""
from __future__ import annotations

import contextlib
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from ..capture import CaptureRequest
from ..drugs import Drugs
from ..sampling.base import Greedy, Sampler
from .stats import Summary

ALL_SITES = ("H", "Q", "pK", "K", "V", "A")


class CapturingGreedy(Greedy):
    """Greedy decoding that asks for every layer's attention each step: the cost of capture alone."""
    capture = CaptureRequest(layers=None)

    def clone(self) -> "CapturingGreedy":
        return self


@dataclass(frozen=True)
class Variant:
    """One decode configuration: a short key (for --variants), a name for the table and a factory for
    (sampler, drugs) given the tokenizer, called afresh for every run."""
    key: str
    name: str
    make: Callable[[Any], tuple[Sampler | None, Drugs | None]]


def standard_variants(names: list[str] | None = None) -> list[Variant]:
    """greedy first (the baseline every overhead is measured against), then the steering features and samplers."""
    from ..sampling import AlphaSampler, EntropySampler, RDNet, SamplerConfig, SamplingParams
    variants = [
        Variant("greedy", "greedy", lambda tok: (None, None)),
        Variant("drugs", "drugs all sites", lambda tok: (None, Drugs(dose_theta=0.1, sites=ALL_SITES))),
        Variant("capture", "capture all layers", lambda tok: (CapturingGreedy(), None)),
        Variant("chain", "chain (llama.cpp default)", lambda tok: (SamplingParams().to_sampler(tok), None)),
        Variant("entropy", "entropy", lambda tok: (EntropySampler(tokenizer=tok), None)),
        Variant("alpha", "alpha", lambda tok: (AlphaSampler(SamplerConfig(lookahead=False)), None)),
        Variant("alpha-lookahead", "alpha + lookahead", lambda tok: (AlphaSampler(SamplerConfig(lookahead=True)), None)),
        Variant("rdnet", "rdnet", lambda tok: (RDNet(), None)),
    ]
    if names is None:
        return variants
    known = {v.key: v for v in variants}
    missing = [n for n in names if n not in known]
    if missing:
        from ..errors import SamplerArgumentError
        raise SamplerArgumentError(f"unknown bench variant(s) {', '.join(missing)}; known: {', '.join(known)}")
    return [variants[0]] + [known[n] for n in names if n != "greedy"]


@dataclass
class RunTiming:
    prompt_tokens: int
    new_tokens: int
    prefill_s: float
    ttft_s: float
    total_s: float

    @property
    def pp_tps(self) -> float:
        return self.prompt_tokens / self.prefill_s

    @property
    def tg_tps(self) -> float:
        return (self.new_tokens - 1) / max(self.total_s - self.ttft_s, 1e-9)


@dataclass
class VariantResult:
    variant: str
    runs: list[RunTiming] = field(default_factory=list)

    def summary(self, metric: str) -> Summary:
        return Summary.of([getattr(r, metric) for r in self.runs])


class _NoEosTokenizer:
    """The engine's tokenizer with no end-of-sequence ids, so a timed run always decodes every token asked for."""
    eos_ids: tuple[int, ...] = ()

    def __init__(self, inner: Any):
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextlib.contextmanager
def eos_disabled(engine) -> Iterator[None]:
    original = engine.tokenizer
    engine.tokenizer = _NoEosTokenizer(original)
    try:
        yield
    finally:
        engine.tokenizer = original


class _SilentDecoder:
    def push(self, token: int) -> str:
        return ""

    def flush(self) -> str:
        return ""


class IdsOnlyTokenizer:
    """For a weights-only model (no tokenizer files, e.g. a random model built to be timed): prompts are token ids,
    nothing ends a sequence, and no text is produced."""
    eos_ids: tuple[int, ...] = ()
    bos_id: int | None = None

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def stream_decoder(self, skip_special: bool = False, prefix=()) -> _SilentDecoder:
        return _SilentDecoder()


def bench_prompt(vocab_size: int, n_tokens: int, bos_id: int | None, seed: int = 0) -> list[int]:
    """n_tokens ids drawn uniformly from the vocabulary (after BOS when the model has one), like llama-bench's."""
    rng = random.Random(seed)
    ids = [bos_id] if bos_id is not None else []
    while len(ids) < n_tokens:
        ids.append(rng.randrange(vocab_size))
    return ids


def time_generation(engine, prompt: list[int], new_tokens: int, sampler: Sampler | None = None,
                    drugs: Drugs | None = None, seed: int = 0) -> RunTiming:
    t0 = time.perf_counter()
    completion = engine.generate(prompt, max_new_tokens=new_tokens, sampler=sampler, drugs=drugs, seed=seed)
    total = time.perf_counter() - t0
    stats = completion.stats
    return RunTiming(prompt_tokens=stats.prompt_tokens, new_tokens=stats.new_tokens, prefill_s=stats.prefill_s,
                     ttft_s=stats.ttft_s, total_s=total)


def bench_variants(engine, variants: list[Variant], *, prompt_tokens: int, new_tokens: int, repeat: int,
                   progress: Callable[[str], None] | None = None) -> list[VariantResult]:
    """Every variant `repeat` times on random prompts of `prompt_tokens` ids, interleaved (variant order rotates each round) so a noisy neighbour slows all
    variants alike instead of whichever happened to be running. One warm-up generation first (first-call
    allocations, lazily built tables)."""
    if new_tokens < 2:
        raise ValueError(f"new_tokens must be >= 2 to time decode, got {new_tokens}")
    tok = engine.tokenizer
    vocab = engine.config.vocab_size if tok is None else min(tok.vocab_size, engine.config.vocab_size)
    bos = getattr(tok, "bos_id", None)
    results = [VariantResult(v.name) for v in variants]
    with eos_disabled(engine):
        time_generation(engine, bench_prompt(vocab, min(prompt_tokens, 16), bos, seed=-1), 4)
        for r in range(repeat):
            order = list(range(len(variants)))
            order = order[r % len(order):] + order[: r % len(order)]
            for i in order:
                if progress is not None:
                    progress(f"[{r + 1}/{repeat}] {variants[i].name}")
                sampler, drugs = variants[i].make(tok)
                # a new prompt every run: the engine's prefix cache would skip the prefill of a repeated one
                prompt = bench_prompt(vocab, prompt_tokens, bos, seed=r * len(variants) + i)
                results[i].runs.append(time_generation(engine, prompt, new_tokens, sampler, drugs, seed=r))
    return results


def timed_load(loader: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    obj = loader()
    return obj, time.perf_counter() - t0


def peak_rss_bytes() -> int:
    """The process's resident-set high-water mark in bytes (see the module docstring for the source)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux, bytes on macOS
    return peak if sys.platform == "darwin" else peak * 1024


def model_bytes(model: torch.nn.Module) -> int:
    from .limits import model_weight_bytes
    return model_weight_bytes(model)


def model_params(model: torch.nn.Module) -> int:
    """Parameter count; a quantized linear's packed weight counts as its in x out weights."""
    total = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if callable(getattr(m, "nbytes", None)) and hasattr(m, "in_features"):
            total += m.in_features * m.out_features
    return total
