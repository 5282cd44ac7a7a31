"""The sampler configurations the lab compares, by name.

Each is a (sampler, drugs) pair for `Engine.generate`. Families and why each member is there:
- baseline: greedy (the reference for cost and the degenerate end), pure temperature at 0.7 and 1.0, nucleus
  (top-p 0.9), min-p 0.1, and llama.cpp's default chain — the curve any new method has to beat (Caccia et al. 2020:
  compare along a sweep, not at one point).
- drugs: DRµGS over *greedy* decoding, as the seed prescribes ("simply selecting the most likely prediction");
  K at three doses (a dose sweep), H, A, and all five classic sites; H and all-sites again with a cold shower every
  32 tokens (K noise never reaches the cache, so a shower would be a no-op there).
- adaptive: the entropy (entropix) sampler; AlphaSampler with and without its COLD-state lookahead.
- rdnet: RD-NET's drifted memory over greedy and over pure sampling at temperature 1.0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..drugs import Drugs
from ..errors import SamplerArgumentError
from ..sampling import AlphaSampler, EntropySampler, RDNet, SamplerConfig, SamplingParams
from ..sampling.base import Sampler

SamplerFactory = Callable[[Any], "Sampler | None"]      # tokenizer -> a fresh sampler (None: the engine's greedy)

COLD_SHOWER_EVERY = 32
ALL_SITES = "H,Q,K,V,A"


@dataclass(frozen=True)
class LabConfig:
    name: str
    family: str                                  # "baseline" | "drugs" | "adaptive" | "rdnet"
    description: str
    make_sampler: SamplerFactory = field(default=lambda tokenizer: None, repr=False)
    drugs: Drugs | None = None
    records_key: str | None = None               # the per-step record naming the regime/state, if any

    def to_json(self, tokenizer: Any = None) -> dict[str, Any]:
        sampler = self.make_sampler(tokenizer)
        describe = getattr(sampler, "describe", None)
        return {"name": self.name, "family": self.family, "description": self.description,
                "sampler": "greedy (argmax)" if sampler is None else (describe() if callable(describe)
                                                                      else repr(sampler)),
                "drugs": self.drugs.describe() if self.drugs is not None else None}


def _chain(**params: Any) -> SamplerFactory:
    settings = SamplingParams(**params)
    return lambda tokenizer: settings.to_sampler(tokenizer)


# pure sampling: every truncation off, so only the temperature acts
def _temperature(t: float) -> SamplerFactory:
    return _chain(temp=t, top_k=0, top_p=1.0, min_p=0.0)


def _drugs(theta: float, sites: str, shower: int | None = None) -> Drugs:
    return Drugs(dose_theta=theta, sites=sites, cold_shower_every=shower)


def _all_configs() -> list[LabConfig]:
    configs = [
        LabConfig("greedy", "baseline", "argmax"),
        LabConfig("temp-0.7", "baseline", "pure sampling at T=0.7", _temperature(0.7)),
        LabConfig("temp-1.0", "baseline", "pure sampling at T=1.0", _temperature(1.0)),
        LabConfig("top-p-0.9", "baseline", "nucleus p=0.9 at T=1.0", _chain(temp=1.0, top_k=0, top_p=0.9, min_p=0.0)),
        LabConfig("min-p-0.1", "baseline", "min-p 0.1 at T=1.0", _chain(temp=1.0, top_k=0, top_p=1.0, min_p=0.1)),
        LabConfig("llama.cpp", "baseline", "llama.cpp default chain (top-k 40, top-p 0.95, min-p 0.05, T=0.8)",
                  _chain()),
    ]
    for theta in (0.1, 0.3, 0.6):
        configs.append(LabConfig(f"drugs-K-{theta:g}", "drugs", f"DRµGS K θ={theta:g} + greedy",
                                 drugs=_drugs(theta, "K")))
    configs += [
        LabConfig("drugs-H-0.3", "drugs", "DRµGS H θ=0.3 + greedy", drugs=_drugs(0.3, "H")),
        LabConfig("drugs-H-0.3-shower", "drugs", f"DRµGS H θ=0.3 + greedy, cold shower every {COLD_SHOWER_EVERY}",
                  drugs=_drugs(0.3, "H", COLD_SHOWER_EVERY)),
        LabConfig("drugs-A-0.3", "drugs", "DRµGS A θ=0.3 + greedy", drugs=_drugs(0.3, "A")),
        LabConfig("drugs-all-0.3", "drugs", "DRµGS H,Q,K,V,A θ=0.3 + greedy", drugs=_drugs(0.3, ALL_SITES)),
        LabConfig("drugs-all-0.3-shower", "drugs",
                  f"DRµGS H,Q,K,V,A θ=0.3 + greedy, cold shower every {COLD_SHOWER_EVERY}",
                  drugs=_drugs(0.3, ALL_SITES, COLD_SHOWER_EVERY)),
        LabConfig("entropy", "adaptive", "entropix quadrant sampler (JAX thresholds)",
                  lambda tokenizer: EntropySampler(tokenizer=tokenizer), records_key="regime"),
        LabConfig("alpha", "adaptive", "AlphaSampler, COLD-state lookahead on cache forks",
                  lambda tokenizer: AlphaSampler(), records_key="state"),
        LabConfig("alpha-no-lookahead", "adaptive", "AlphaSampler, no lookahead",
                  lambda tokenizer: AlphaSampler(SamplerConfig(lookahead=False)), records_key="state"),
        LabConfig("rdnet-greedy", "rdnet", "RD-NET memory (mix 1) + greedy", lambda tokenizer: RDNet()),
        LabConfig("rdnet-temp-1.0", "rdnet", "RD-NET memory (mix 1) + pure sampling at T=1.0",
                  lambda tokenizer: RDNet(_temperature(1.0)(tokenizer))),
    ]
    return configs


CONFIGS: dict[str, LabConfig] = {c.name: c for c in _all_configs()}
FAMILIES = ("baseline", "drugs", "adaptive", "rdnet")


def select(spec: str | None) -> list[LabConfig]:
    """Configurations from a comma-separated list of names and family names ("all" or None: every one), in the
    order given, without duplicates. Raises SamplerArgumentError naming the unknown entry and the valid ones."""
    if spec is None or spec.strip() in ("", "all"):
        return list(CONFIGS.values())
    chosen: list[LabConfig] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item in CONFIGS:
            group = [CONFIGS[item]]
        elif item in FAMILIES:
            group = [c for c in CONFIGS.values() if c.family == item]
        else:
            raise SamplerArgumentError(f"--samplers: unknown configuration {item!r}; valid: all, "
                                       f"{', '.join(FAMILIES)}, {', '.join(CONFIGS)}")
        chosen += [c for c in group if c not in chosen]
    if not chosen:
        raise SamplerArgumentError("--samplers: the list is empty")
    return chosen
