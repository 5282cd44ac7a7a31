"""DRµGS (Deep Random Micro-Glitch Sampling): noise injected inside attention while the model generates.

`Drugs` says what to inject (which sites, how much, at which depths, what kind of noise); `Drugs.plan(n_layers,
generators)` turns that into a `NoisePlan` for one forward pass, which the model calls at each site. With every angle
zero, `plan` returns None and the model takes its clean path at no cost.

Sites (seed 001 "A Guide to Making DRµGs", section 2; the model decides where exactly they sit):
    H   the normed hidden state that feeds q/k/v projections (never the residual stream)   [B, T, 1, dim]
    Q   each query head, before RoPE                                                        [B, T, n_heads, hd]
    pK  each cached key head *before* RoPE (the model maps the direction through RoPE)    [B, T_ctx, n_kv, hd]
    K   each cached key head after RoPE, on a per-step copy of the whole context            [B, T_ctx, n_kv, hd]
    V   each cached value head, same                                                        [B, T_ctx, n_kv, hd]
    A   each head's attention output, before o_proj                                         [B, T, n_heads, hd]
K, pK and V noise perturb a copy for this step only, so it never reaches the cache. For one new token the model asks
`NoisePlan.perturb_scores` to draw K/pK noise straight onto its attention scores (same distribution, G+2 draws per
key instead of head_dim). With an isotropic kind, pK and K are the same distribution: RoPE is a rotation, and a
rotated Gaussian direction is still isotropic; only "rotation-compat" tells them apart. H, Q and A noise changes the hidden
states of later layers, whose K/V do reach the cache: `NoisePlan.taints_cache` tells the engine to book those
positions for the cold shower.

The math, per vector x in R^d (computed in float32 even when the model runs in bf16/fp16, then cast back):
  g ~ N(0, I_d) drawn from the row's generator; x̂ = x/|x|; z = g·x̂; g⊥ = g − z·x̂; û = g⊥/|g⊥|.
  Because g is an isotropic Gaussian, z ~ N(0, 1) and the direction û (uniform on the unit sphere orthogonal to x)
  are independent, so z doubles as the angle's random source and each vector costs exactly d normal draws.
  "rotation"        a = θ·Φ(z) ~ U[0, θ]                 y = cos(a)·x + sin(a)·|x|·û       (|y| = |x|, ∠(x, y) = a)
  "normal"          a = min((θ/2)·|z|, π), i.e. a half-normal angle with σ = θ/2 (θ is about its 95th percentile;
                    mean 0.40·θ against the uniform's 0.5·θ), same rotation
  "euclidean"       y = x + θ·|x|/√d · g                 (not norm-preserving; |noise| ≈ θ·|x|, so for small θ the
                    typical angle is ≈ θ and the norm grows by ≈ √(1 + θ²))
  "rotation-compat" DRUGS' own recipe: a ~ U[0, θ) from a separate uniform draw, direction from r ~ U[0, 1)^d (not
                    centred: biased toward the all-positive orthant) made orthogonal to x, same rotation formula.
  Implemented as y = α·x + k·g with α = cos a − z·sin a/|g⊥| and k = |x|·sin a/|g⊥|, which is the formula above
  without materialising x̂, g⊥ or û (fewer tensor ops: the decode path is dominated by per-op overhead). The draw is
  made directly as h = g/√2 (std 1/√2, the same stream of numbers), so Φ(z) = ½(1 + erf(h·x̂)) needs no rescaling
  op; the formulas are unchanged with (z, g) replaced by (h·x̂, h).
  A vector with x = 0 stays 0 (there is no direction to rotate). θ larger than π is allowed and harsh (the seed warns).

Dose per site and layer: θ(site, layer) = dose_theta · weight(site) · shape(layer), with layer depth = layer/n_layers
(DRUGS' convention: 0 is the first layer, the last layer is at (n−1)/n).

What changed from the original EGjoni/DRUGS (see /work/shared/ANCHORS.md §1) and why:
  * Direction: a centred Gaussian instead of `torch.rand_like` (uniform [0,1)), whose mean pulls every rotation toward
    the all-ones direction; "rotation-compat" keeps the original for comparison.
  * Randomness: one seeded torch.Generator per sequence instead of the global RNG (DRUGS stores `r_seed` and never uses
    it), so the same seed gives the same noise whatever else shares the batch. Row b draws exactly
    (its non-padding positions)·n_vecs·d numbers per call, in position order, from its own generator.
  * Sink protection by absolute position with a configurable count (`sink_protect`, default 6) at every site.
    DRUGS hard-codes 6 on K/V and on H/Q/A spares "the number of position ids < 6 in this call", which is 0 in decode.
    The result is the same (positions 0..5 are never touched), but it holds for any batch layout and padding.
  * Q noise on every path (DRUGS' SDPA attention, the HF default, silently dropped it); the engine calls one `apply`.
  * fp32 noise math: in bf16 the rotation is visibly not norm-preserving and small angles round away.
  * x = 0 is left unchanged (DRUGS divides by |x|² and returns NaN there).
"""
from __future__ import annotations

import argparse
import functools
import math
import numbers
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Mapping, Sequence, Union

import torch

from .errors import SamplerArgumentError

SITES: tuple[str, ...] = ("H", "Q", "pK", "K", "V", "A")
CACHE_TAINTING_SITES: tuple[str, ...] = ("H", "Q", "A")   # noise there reaches later layers' cached K/V
KINDS: tuple[str, ...] = ("rotation", "normal", "euclidean", "rotation-compat")
PROFILE_MODES: tuple[str, ...] = ("interpolate", "ceil", "floor")
DEFAULT_SITES: tuple[str, ...] = ("K",)   # DRUGS' just_chat.py doses K; K noise never taints the cache

_SITE_BY_LOWER = {s.lower(): s for s in SITES}
_TINY = 1e-30            # guards |x| = 0 and |g⊥| = 0 against division by zero
_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def _fail(argument: str, message: str) -> SamplerArgumentError:
    return SamplerArgumentError(f"{argument}: {message}")


def _real(value: object, argument: str, *, what: str = "a finite number >= 0") -> float:
    """A finite, non-negative float, or an error naming the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(argument, f"must be {what}, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise _fail(argument, f"must be {what}, got {value!r}")
    return number


def _float_text(text: str, argument: str) -> float:
    try:
        return _real(float(text), argument)
    except ValueError:
        raise _fail(argument, f"must be a finite number >= 0, got {text!r}") from None


# ----------------------------------------------------------------------------------------------------------- shapes

@dataclass(frozen=True)
class Peak:
    """A bump of doses around one depth: 1.0 at `depth`, 0 at and beyond depth ± `width`, a raised cosine between:
        m(z) = ½·(1 + cos(π·(z − depth)/width))  for |z − depth| < width, else 0      (z = layer/n_layers)
    so layers half a width away get 0.5. String form: "peak:DEPTH:WIDTH"."""
    depth: float
    width: float

    def __post_init__(self) -> None:
        depth = _real(self.depth, "dose_shape", what="a peak depth in [0, 1]")
        if depth > 1:
            raise _fail("dose_shape", f"peak depth must be in [0, 1], got {self.depth!r}")
        width = _real(self.width, "dose_shape", what="a peak width > 0")
        if width == 0:
            raise _fail("dose_shape", "peak width must be > 0 (a zero width doses no layer at all)")
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "width", width)

    def multiplier(self, z: float) -> float:
        distance = abs(z - self.depth)
        if distance >= self.width:
            return 0.0
        return 0.5 * (1.0 + math.cos(math.pi * distance / self.width))


@dataclass(frozen=True)
class DoseProfile:
    """DRUGS' dose shape: points {"depth": 0..1, "peakratio": x} (stored as sorted (depth, ratio) pairs) and a mode.
    For a layer at depth z = layer/n_layers, exactly as DRUGS' `get_tissue_bioavailability`:
      * before the first point / after the last point the end value holds;
      * otherwise the bracket is the first consecutive pair (d1, d2) with d1 <= z <= d2 (so a layer exactly on an
        inner point brackets with the point *before* it);
      * "interpolate": linear between the bracket's ratios; "ceil": the larger one; "floor": the smaller one;
        a bracket of two points at the same depth gives the larger ratio in every mode."""
    points: tuple[tuple[float, float], ...]
    mode: str = "interpolate"

    def __post_init__(self) -> None:
        if isinstance(self.mode, str) and self.mode.lower() in PROFILE_MODES:
            object.__setattr__(self, "mode", self.mode.lower())
        else:
            raise _fail("dose_shape", f"profile mode must be one of {', '.join(PROFILE_MODES)}, got {self.mode!r}")
        points = []
        for point in self.points:
            if isinstance(point, Mapping):
                if "depth" not in point or "peakratio" not in point:
                    raise _fail("dose_shape", f"each profile point needs 'depth' and 'peakratio', got {point!r}")
                depth, ratio = point["depth"], point["peakratio"]
            elif isinstance(point, Sequence) and not isinstance(point, str) and len(point) == 2:
                depth, ratio = point
            else:
                raise _fail("dose_shape", f"a profile point is {{'depth': d, 'peakratio': r}}, got {point!r}")
            # DRUGS' README builds ramps with depths like 0.4 - 0.1*1.01, which may fall below 0: allow any finite depth.
            if isinstance(depth, bool) or not isinstance(depth, numbers.Real) or not math.isfinite(depth):
                raise _fail("dose_shape", f"profile depth must be a finite number, got {depth!r}")
            points.append((float(depth), _real(ratio, "dose_shape", what="a peakratio >= 0")))
        if not points:
            raise _fail("dose_shape", "a dose profile needs at least one point")
        object.__setattr__(self, "points", tuple(sorted(points, key=lambda p: p[0])))

    def multiplier(self, z: float) -> float:
        points = self.points
        low, high = points[0], points[-1]
        if z <= low[0]:
            high = low
        elif z >= high[0]:
            low = high
        else:
            for first, second in zip(points, points[1:]):
                if first[0] <= z <= second[0]:
                    low, high = first, second
                    break
        if self.mode == "ceil" or low[0] == high[0]:
            return max(low[1], high[1])
        if self.mode == "floor":
            return min(low[1], high[1])
        return low[1] + (z - low[0]) / (high[0] - low[0]) * (high[1] - low[1])


DoseShape = Union[str, Peak, DoseProfile, Sequence[float], Sequence[Mapping[str, float]]]


def parse_dose_shape(text: str) -> Union[str, Peak, DoseProfile, tuple[float, ...]]:
    """The command-line form of a dose shape:
        "uniform" | "peak:DEPTH:WIDTH" | "profile:MODE:D=R,D=R,..." (DRUGS points) | "m0,m1,..." (one per layer)."""
    text = text.strip()
    lower = text.lower()
    if lower == "uniform":
        return "uniform"
    if lower.startswith("peak:"):
        parts = text.split(":")
        if len(parts) != 3:
            raise _fail("dose_shape", f"write a peak as peak:DEPTH:WIDTH (e.g. peak:0.4:0.15), got {text!r}")
        return Peak(_float_text(parts[1], "dose_shape"), _float_text(parts[2], "dose_shape"))
    if lower.startswith("profile:"):
        parts = text.split(":", 2)
        if len(parts) != 3 or not parts[2]:
            raise _fail("dose_shape", f"write a profile as profile:MODE:DEPTH=RATIO,... "
                                      f"(e.g. profile:ceil:0.3=0,0.4=1,0.6=1,0.7=0), got {text!r}")
        points = []
        for item in parts[2].split(","):
            depth, sep, ratio = item.partition("=")
            if not sep:
                raise _fail("dose_shape", f"profile points are DEPTH=RATIO, got {item!r}")
            try:
                points.append((float(depth), float(ratio)))
            except ValueError:
                raise _fail("dose_shape", f"profile points are DEPTH=RATIO numbers, got {item!r}") from None
        return DoseProfile(tuple(points), parts[1])
    try:
        return tuple(_float_text(item, "dose_shape") for item in text.split(","))
    except SamplerArgumentError:
        raise _fail("dose_shape", "must be uniform, peak:DEPTH:WIDTH, profile:MODE:D=R,... or a comma-separated "
                                  f"list of per-layer multipliers, got {text!r}") from None


def _normalize_shape(shape: object) -> Union[str, Peak, DoseProfile, tuple[float, ...]]:
    if isinstance(shape, (Peak, DoseProfile)):
        return shape
    if isinstance(shape, str):
        return parse_dose_shape(shape)
    if isinstance(shape, Sequence) and shape and all(isinstance(p, Mapping) for p in shape):
        return DoseProfile(tuple(shape))
    if isinstance(shape, (Sequence, torch.Tensor)) and len(shape) > 0:
        values = shape.tolist() if isinstance(shape, torch.Tensor) else shape
        return tuple(_real(v, "dose_shape", what="per-layer multipliers >= 0") for v in values)
    raise _fail("dose_shape", "must be 'uniform', Peak(depth, width) or 'peak:DEPTH:WIDTH', a list with one multiplier "
                              "per layer, a DoseProfile or a list of {'depth', 'peakratio'} points, "
                              f"got {shape!r}")


def _normalize_sites(sites: object) -> tuple[tuple[str, float], ...]:
    """Sites as ((name, weight), ...) in the canonical order H, Q, pK, K, V, A."""
    def canonical(name: object) -> str:
        site = _SITE_BY_LOWER.get(name.strip().lower()) if isinstance(name, str) else None
        if site is None:
            raise _fail("sites", f"unknown site {name!r}; valid sites are {', '.join(SITES)}")
        return site

    weights: dict[str, float] = {}
    if isinstance(sites, str):
        items: Iterable = [] if sites.strip() == "" else sites.split(",")
    elif isinstance(sites, Mapping):
        items = sites.items()
    elif isinstance(sites, Iterable):
        items = sites
    else:
        raise _fail("sites", f"must be a site name, names, or a {{site: weight}} dict over {', '.join(SITES)}, "
                             f"got {sites!r}")
    for item in items:
        if isinstance(item, str) and "=" in item:           # "K=0.5" in a comma list
            name, _, weight = item.partition("=")
            weights[canonical(name)] = _float_text(weight, "sites")
        elif isinstance(item, str):
            weights[canonical(item)] = 1.0
        elif isinstance(item, Sequence) and len(item) == 2:
            weights[canonical(item[0])] = _real(item[1], "sites", what="a site weight >= 0")
        else:
            raise _fail("sites", f"unknown site {item!r}; valid sites are {', '.join(SITES)}")
    return tuple((site, weights[site]) for site in SITES if site in weights)


# ------------------------------------------------------------------------------------------------------------ Drugs

@dataclass(frozen=True)
class Drugs:
    """What noise to inject. Immutable: change the dose with `with_dose`, `with_sites`, ... (or dataclasses.replace).

    dose_theta:  the largest rotation angle in radians (finite, >= 0). For "normal" it is twice the angle's σ, for
                 "euclidean" the noise-to-norm ratio (see the module docstring).
    sites:       "K", "H,Q,K", ["Q", "V"], or {"K": 1.0, "V": 0.5} for per-site doses. A site's angle is
                 dose_theta × its weight (1.0 when named without one), so with dose_theta=1.0 the weights are the
                 per-site angles in radians, and `with_dose` scales all sites together. Stored normalized as
                 ((site, weight), ...) in the order H, Q, pK, K, V, A.
    dose_shape:  multiplier per layer: "uniform" (1.0 everywhere); Peak(depth, width) or "peak:DEPTH:WIDTH";
                 a list with one multiplier per layer (its length is checked against the model in `plan`);
                 DRUGS' profile: DoseProfile(points, mode) or a plain list of {"depth", "peakratio"} dicts
                 (mode "interpolate") or "profile:MODE:D=R,...".
    sink_protect: positions 0 .. sink_protect-1 (absolute) are never perturbed at any site (the attention sink).
    cold_shower_every: None, or recompute the drugged cache clean after this many drugged tokens (the engine's job).
    kind:        "rotation" (default), "normal", "euclidean" or "rotation-compat".
    """
    dose_theta: float
    sites: object
    dose_shape: object = "uniform"
    sink_protect: int = 6
    cold_shower_every: int | None = None
    kind: str = "rotation"

    def __post_init__(self) -> None:
        object.__setattr__(self, "dose_theta", _real(self.dose_theta, "dose_theta", what="an angle in radians, "
                                                                                        "finite and >= 0"))
        object.__setattr__(self, "sites", _normalize_sites(self.sites))
        object.__setattr__(self, "dose_shape", _normalize_shape(self.dose_shape))
        if isinstance(self.sink_protect, bool) or not isinstance(self.sink_protect, numbers.Integral) \
                or self.sink_protect < 0:
            raise _fail("sink_protect", f"must be an integer >= 0 (positions spared), got {self.sink_protect!r}")
        object.__setattr__(self, "sink_protect", int(self.sink_protect))
        every = self.cold_shower_every
        if every is not None:
            if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1:
                raise _fail("cold_shower_every", f"must be None or a positive number of tokens, got {every!r}")
            object.__setattr__(self, "cold_shower_every", int(every))
        kind = self.kind.lower() if isinstance(self.kind, str) else self.kind
        if kind not in KINDS:
            raise _fail("kind", f"must be one of {', '.join(KINDS)}, got {self.kind!r}")
        object.__setattr__(self, "kind", kind)

    @classmethod
    def off(cls) -> "Drugs":
        """No noise anywhere (falsy; `plan` returns None)."""
        return cls(dose_theta=0.0, sites=())

    def __bool__(self) -> bool:
        return self.dose_theta > 0 and any(weight > 0 for _, weight in self.sites) and self._shape_has_dose()

    def _shape_has_dose(self) -> bool:
        shape = self.dose_shape
        if isinstance(shape, tuple):
            return any(m > 0 for m in shape)
        if isinstance(shape, DoseProfile):
            return any(ratio > 0 for _, ratio in shape.points)
        return True

    @property
    def site_thetas(self) -> dict[str, float]:
        """{site: dose_theta × weight} before the per-layer shape, for the dosed sites."""
        return {site: self.dose_theta * weight for site, weight in self.sites}

    @property
    def taints_cache(self) -> bool:
        """True if noise at H, Q or A can reach the cache (for a uniform shape; plans say it per model)."""
        return bool(self) and any(site in CACHE_TAINTING_SITES and w > 0 for site, w in self.sites)

    def with_dose(self, dose_theta: float) -> "Drugs":
        return replace(self, dose_theta=dose_theta)

    def with_sites(self, sites: object) -> "Drugs":
        return replace(self, sites=sites)

    def with_shape(self, dose_shape: object) -> "Drugs":
        return replace(self, dose_shape=dose_shape)

    def with_kind(self, kind: str) -> "Drugs":
        return replace(self, kind=kind)

    def layer_thetas(self, n_layers: int) -> dict[str, list[float]]:
        """{site: [θ for each layer]} for all six sites (zeros where undosed). Checks an explicit shape's length."""
        return {site: list(row) for site, row in _theta_table(self, n_layers).items()}

    def plan(self, n_layers: int, generators: Sequence[torch.Generator]) -> "NoisePlan | None":
        """The noise for one forward pass over a batch: one generator per batch row (each sequence's own stream;
        `apply` checks the count against the batch). None when every angle is zero, so the model's clean path costs
        nothing. Raises SamplerArgumentError when an explicit per-layer shape does not fit n_layers."""
        table = _theta_table(self, n_layers)
        if not any(any(row) for row in table.values()):
            return None
        generators = list(generators)
        if not all(isinstance(g, torch.Generator) for g in generators):
            raise _fail("generators", "need one torch.Generator per batch row")
        return NoisePlan(table, generators, self.sink_protect, self.kind)

    def describe(self) -> str:
        """One line for the chat's /drugs command."""
        if not self:
            return "DRµGS off"
        sites = ", ".join(site if weight == 1.0 else f"{site}×{weight:g}" for site, weight in self.sites if weight)
        shape = self.dose_shape
        if isinstance(shape, Peak):
            shape_text = f"peak at depth {shape.depth:g} ± {shape.width:g}"
        elif isinstance(shape, DoseProfile):
            points = ", ".join(f"{d:g}→{r:g}" for d, r in shape.points)
            shape_text = f"profile ({shape.mode}) {points}"
        elif isinstance(shape, tuple):
            shape_text = "per layer " + ",".join(f"{m:g}" for m in shape)
        else:
            shape_text = "uniform"
        shower = f"every {self.cold_shower_every} tokens" if self.cold_shower_every else "off"
        return (f"DRµGS {self.kind}: θ={self.dose_theta:g} rad ({math.degrees(self.dose_theta):.1f}°) at {sites}; "
                f"shape {shape_text}; sink_protect {self.sink_protect}; cold shower {shower}")


@functools.lru_cache(maxsize=64)
def _theta_table(drugs: Drugs, n_layers: int) -> dict[str, tuple[float, ...]]:
    """Per-site, per-layer angles, computed once per (dose, model)."""
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise _fail("n_layers", f"must be a positive integer, got {n_layers!r}")
    shape = drugs.dose_shape
    if isinstance(shape, tuple):
        if len(shape) != n_layers:
            raise _fail("dose_shape", f"has {len(shape)} per-layer multipliers but the model has {n_layers} layers")
        multipliers = shape
    elif isinstance(shape, (Peak, DoseProfile)):
        multipliers = tuple(shape.multiplier(layer / n_layers) for layer in range(n_layers))
    else:
        multipliers = (1.0,) * n_layers
    weights = dict(drugs.sites)
    return {site: tuple(drugs.dose_theta * weights.get(site, 0.0) * m for m in multipliers) for site in SITES}


# -------------------------------------------------------------------------------------------------------- NoisePlan

class _Layout:
    """What one positions tensor implies, worked out once per forward pass and reused by every call that passes
    the same tensor: which entries keep their input (sink or padding) and where each row draws its noise."""
    __slots__ = ("positions", "keep", "kept_prefix", "rows")

    def __init__(self, positions: torch.Tensor, sink_protect: int, batch: int):
        if positions.dim() != 2 or positions.shape[0] != batch:
            raise _fail("positions", f"must be [batch={batch}, T] (one generator per row), got {tuple(positions.shape)}")
        self.positions = positions          # held so that its id() stays unique while cached
        lowest = int(positions.min())
        # Padding (< 0) is always below sink_protect (>= 0), so one mask keeps both.
        self.keep = None if lowest >= sink_protect else (positions < sink_protect)[:, :, None, None]
        # The common context read (one sequence, positions 0..L-1) keeps a prefix: copying those few rows back is
        # one small op where a `where` over the whole context would be a large one.
        self.kept_prefix: int | None = None
        if self.keep is not None and batch == 1 and lowest >= 0:
            count = int(self.keep.sum())
            if bool(self.keep[0, :count].all()):
                self.kept_prefix = count
        # rows: None when no row has padding (every row draws for all T); else per row the slice or index tensor of
        # its real positions, so its draws do not depend on how much padding the batch added.
        self.rows: list[slice | torch.Tensor] | None = None
        if lowest < 0:
            self.rows = []
            for valid in (positions >= 0).tolist():
                index = [t for t, ok in enumerate(valid) if ok]
                if index and index == list(range(index[0], index[-1] + 1)):
                    self.rows.append(slice(index[0], index[-1] + 1))
                else:
                    self.rows.append(torch.tensor(index, dtype=torch.long, device=positions.device))


class NoisePlan:
    """The noise of one forward pass. The model asks `theta(site, layer)` and, when nonzero, calls `apply`.

    Built by `Drugs.plan`; holds the per-layer angles as Python lists and one generator per batch row. Draws happen
    in call order, so a forward pass that calls the sites in a fixed order is reproducible from the seeds."""
    __slots__ = ("_thetas", "_generators", "_sink_protect", "_kind", "_layouts", "taints_cache")

    def __init__(self, thetas: Mapping[str, Sequence[float]], generators: list[torch.Generator],
                 sink_protect: int, kind: str):
        self._thetas = {site: list(row) for site, row in thetas.items()}
        self._generators = generators
        self._sink_protect = sink_protect
        self._kind = kind
        self._layouts: dict[int, _Layout] = {}
        self.taints_cache = any(any(self._thetas[site]) for site in CACHE_TAINTING_SITES)

    def theta(self, site: str, layer: int) -> float:
        """The angle for this site in this layer; 0.0 means the model skips the site."""
        return self._thetas[site][layer]

    def apply(self, site: str, layer: int, x: torch.Tensor, positions: torch.Tensor,
              direction_map: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """A perturbed copy of x [B, T, n_vecs, d] in x's dtype; positions [B, T] are absolute (< 0: padding).
        Vectors at positions < sink_protect and padding are returned bit-identical. x is never modified.
        Pass the same positions tensor object to every call of one forward pass that shares it: its layout is worked
        out once (one device sync) and reused; do not modify it in place meanwhile.
        direction_map, if given, is an orthogonal map applied to the drawn noise directions (float32, x's shape)
        before use: the model passes RoPE for pK, whose directions live in pre-RoPE space."""
        theta = self._thetas[site][layer]
        if theta == 0.0 or x.numel() == 0:
            return x.clone()
        if x.shape[:2] != positions.shape:
            raise _fail("positions", f"shape {tuple(positions.shape)} does not match x's [B, T] = {tuple(x.shape[:2])}")
        layout = self._layout(positions)
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        if self._kind == "rotation-compat":
            y = self._rotate_compat(work, theta, layout, direction_map)
        else:
            g = self._draw(work, layout)
            if direction_map is not None:
                g = direction_map(g)
            if self._kind == "euclidean":
                # g holds N(0, ½): θ·|x|/√d·N(0, 1) = θ·|x|·√(2/d)·g
                scale = torch.linalg.vector_norm(work, dim=-1, keepdim=True).mul_(theta * math.sqrt(2.0 / x.shape[-1]))
                y = torch.addcmul(work, g, scale)
            else:
                y = _rotate(work, g, theta, self._kind == "normal")
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        return _keep_unperturbed(y, x, layout)

    def perturbs_scores(self, layer: int, head_dim: int, groups: int) -> bool:
        """True when this layer's key noise (pK and/or K) can be drawn straight onto one query's attention scores
        (`perturb_scores`): an isotropic kind, and room for the span of the `groups` queries plus the key."""
        return (bool(self._thetas["pK"][layer] or self._thetas["K"][layer]) and self._kind != "rotation-compat"
                and head_dim - groups - 1 >= 1)

    def perturb_scores(self, layer: int, q: torch.Tensor, keys: torch.Tensor, scores: torch.Tensor,
                       positions: torch.Tensor) -> torch.Tensor:
        """This layer's pK and K noise, applied to the scores q·k of one new token instead of to the keys.

        q [B, kv, G, d] holds the G query heads that share each kv head; keys [B, kv, L, d]; scores [B, kv, G, L]
        float32, unscaled; positions [B, L] the keys' absolute positions (< 0: padding). Returns the scores that the
        perturbed keys would give, float32.

        Why it is exact: a key enters attention only through q_j·k. Write the G queries as q_j = U·R[:, j] (QR, U
        orthonormal d×G). Split the drawn h ~ N(0, ½·I_d) into c = Uᵀh (G numbers), its component ε along the part of
        k̂ outside span(U), and the remaining d−G−1 directions, of which only |·|² ~ Gamma((d−G−1)/2) matters. Then
        h·k̂ = (Uᵀk̂)·c + |k̂ − UUᵀk̂|·ε, |h|² = |c|² + ε² + Gamma, and Uᵀy = α·Uᵀk + κ·c with the same α, κ as for the
        whole key. So each key costs G+2 draws instead of d, every operation runs on G numbers instead of d, and the
        scores follow exactly the distribution of perturbing all d coordinates. Since RoPE is a rotation and h is
        isotropic, pK noise (before RoPE) has the very same distribution as K noise: both sites run this math, in the
        order pK then K, each with its own draws."""
        layout = self._layout(positions)
        d = q.shape[-1]
        basis, r = torch.linalg.qr(q.float().transpose(-1, -2))                   # U [B, kv, d, G], R [B, kv, G, G]
        keys = keys.float()
        # [B, kv, G, L]: the context on the last axis keeps every op below vectorised over it (G is 1 to 8)
        coords = torch.matmul(basis.transpose(-1, -2), keys.transpose(-1, -2))     # Uᵀk
        norm = torch.linalg.vector_norm(keys, dim=-1).unsqueeze(-2)               # |k|  [B, kv, 1, L]
        moved = coords
        for site in ("pK", "K"):
            theta = self._thetas[site][layer]
            if theta:
                moved, norm = self._rotate_in_span(moved, norm, theta, d, layout)
        noisy = torch.matmul(r.transpose(-1, -2), moved)                           # q_j·y = Σ_i R_ij (Uᵀy)_i
        return _keep_unperturbed(noisy, scores, layout, context_last=True)      # sink and padding: exact scores

    def _rotate_in_span(self, coords: torch.Tensor, norm: torch.Tensor, theta: float, d: int,
                        layout: _Layout) -> tuple[torch.Tensor, torch.Tensor]:
        """One site's perturbation of keys known only by Uᵀk [B, kv, G, L] and |k| [B, kv, 1, L]: returns
        (Uᵀy, |y|). See `perturb_scores`."""
        B, kv, G, L = coords.shape
        h = self._draw_per_key((B, kv, G + 1, L), coords, layout)       # Uᵀh, then h along k̂'s part outside U
        c, eps = h[:, :, :G], h[:, :, G:]
        rest = self._draw_per_key((B, kv, 1, L), coords, layout, gamma=(d - G - 1) / 2)   # |h|² in the others
        outside = (norm * norm).sub_((coords * coords).sum(-2, keepdim=True)).clamp_min_(0.0).sqrt_()
        w = (coords * c).sum(-2, keepdim=True).addcmul_(outside, eps).div_(norm.clamp_min(_TINY))   # h·k̂
        hh = (h * h).sum(-2, keepdim=True).add_(rest)                                              # |h|²
        if self._kind == "euclidean":
            scale = norm * (theta * math.sqrt(2.0 / d))                                          # y = k + scale·h
            grown = (norm * norm).addcmul_(2.0 * norm * scale, w).addcmul_(scale * scale, hh)
            return torch.addcmul(coords, c, scale), grown.sqrt_()
        if self._kind == "normal":
            angle = w.abs().mul_(theta * _INV_SQRT2).clamp_max_(math.pi)
        else:
            angle = torch.erf(w).mul_(0.5 * theta).add_(0.5 * theta)
        return _combine(coords, c, w, hh, norm, angle), norm

    def _layout(self, positions: torch.Tensor) -> _Layout:
        layout = self._layouts.get(id(positions))
        if layout is None or layout.positions is not positions:
            layout = self._layouts[id(positions)] = _Layout(positions, self._sink_protect, len(self._generators))
        return layout

    def _fill(self, out: torch.Tensor, layout: _Layout, uniform: bool) -> torch.Tensor:
        """Fill out[B, T, ...] row by row from each row's own generator (N(0, ½) or uniform [0, 1))."""
        for b, generator in enumerate(self._generators):
            selector = slice(None) if layout.rows is None else layout.rows[b]
            if isinstance(selector, slice):
                target = out[b, selector]            # contiguous: draws the same numbers as a fresh tensor would
                if uniform:
                    target.uniform_(generator=generator)
                else:
                    target.normal_(0.0, _INV_SQRT2, generator=generator)
            elif selector.numel():
                size = (selector.numel(),) + tuple(out.shape[2:])
                options = dict(generator=generator, dtype=out.dtype, device=out.device)
                out[b, selector] = (torch.rand(size, **options) if uniform
                                    else torch.normal(0.0, _INV_SQRT2, size, **options))
        return out

    def _draw(self, work: torch.Tensor, layout: _Layout) -> torch.Tensor:
        """h = g/√2 with g ~ N(0, I), one vector per entry of work, per row from its own generator."""
        if layout.rows is None and len(self._generators) == 1:     # the common case: one call, no scatter
            return torch.normal(0.0, _INV_SQRT2, work.shape, generator=self._generators[0], dtype=work.dtype,
                                device=work.device)
        # Padding entries get 1s: harmless placeholders (their output is replaced by the input).
        # Logical (contiguous) order, whatever the strides of `work`: a row's draws must land on the same entries
        # whether it is alone or in a batch.
        fresh = torch.empty if layout.rows is None else torch.ones
        return self._fill(fresh(work.shape, dtype=work.dtype, device=work.device), layout, uniform=False)

    def _draw_per_key(self, shape: tuple[int, ...], like: torch.Tensor, layout: _Layout,
                      gamma: float | None = None) -> torch.Tensor:
        """N(0, ½) draws (or Gamma(gamma, 1) ones) for a [B, ..., L] tensor whose last axis is the context, per row
        from its own generator over its real positions, in logical order."""
        def draw(size: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
            if gamma is None:
                return torch.normal(0.0, _INV_SQRT2, size, generator=generator, dtype=like.dtype, device=like.device)
            alpha = torch.full((), gamma, dtype=like.dtype, device=like.device)
            return torch._standard_gamma(alpha.expand(size), generator=generator)

        if layout.rows is None and len(self._generators) == 1:
            return draw(shape, self._generators[0])
        out = torch.ones(shape, dtype=like.dtype, device=like.device)     # padding: harmless placeholders
        for b, generator in enumerate(self._generators):
            selector = slice(None) if layout.rows is None else layout.rows[b]
            count = len(range(shape[-1])[selector]) if isinstance(selector, slice) else selector.numel()
            if count:
                out[b, ..., selector] = draw(shape[1:-1] + (count,), generator)
        return out

    def _rotate_compat(self, work: torch.Tensor, theta: float, layout: _Layout,
                       direction_map: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
        """DRUGS' original: rand_like direction, then a separate uniform angle (per row: direction, then angles)."""
        direction = self._fill(torch.ones(work.shape, dtype=work.dtype, device=work.device), layout, uniform=True)
        if direction_map is not None:
            direction = direction_map(direction)
        angles = self._fill(torch.zeros(work.shape[:-1] + (1,), dtype=work.dtype, device=work.device),
                            layout, uniform=True).mul_(theta)
        return _rotate_by(work, direction, angles)


def _keep_unperturbed(y: torch.Tensor, x: torch.Tensor, layout: _Layout, context_last: bool = False) -> torch.Tensor:
    """y with x put back at the sink and padding entries (y is modified when it can be). The positions are axis 1
    ([B, T, ...]), or the last axis ([B, ..., L]) with `context_last`."""
    if layout.kept_prefix is not None:
        kept = (..., slice(layout.kept_prefix)) if context_last else (slice(None), slice(layout.kept_prefix))
        y[kept] = x[kept]
        return y
    if layout.keep is None:
        return y
    keep = layout.keep[:, None, None, :, 0, 0] if context_last else layout.keep      # keep is [B, T, 1, 1]
    return torch.where(keep, x, y)


def _rotate(x: torch.Tensor, h: torch.Tensor, theta: float, half_normal: bool) -> torch.Tensor:
    """Rotate each x toward h's component orthogonal to x, by an angle drawn from w = h·x̂ = z/√2 (h ~ N(0, ½·I))."""
    # vector_norm is one fused pass where (x * x).sum is two, with a temporary the size of x: this is the largest
    # tensor K/V noise touches (the whole context), so each pass saved shows in the decode step
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    hh = torch.linalg.vector_norm(h, dim=-1, keepdim=True)
    hh = hh.mul_(hh)                                    # square_ would go through pow_ and a dtype copy
    w = (x * h).sum(-1, keepdim=True).div_(norm.clamp_min(_TINY))   # x = 0 gives w = 0, then k = 0: y stays 0
    if half_normal:
        angle = w.abs().mul_(theta * _INV_SQRT2).clamp_max_(math.pi)             # (θ/2)·|z|
    else:
        angle = torch.erf(w).mul_(0.5 * theta).add_(0.5 * theta)                 # θ·Φ(z) ~ U[0, θ]
    return _combine(x, h, w, hh, norm, angle)


def _rotate_by(x: torch.Tensor, direction: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate each x by the given angle toward direction's component orthogonal to x."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    z = (x * direction).sum(-1, keepdim=True).div_(norm.clamp_min(_TINY))
    gg = torch.linalg.vector_norm(direction, dim=-1, keepdim=True)
    gg = gg.mul_(gg)
    return _combine(x, direction, z, gg, norm, angle)


def _combine(x: torch.Tensor, g: torch.Tensor, z: torch.Tensor, gg: torch.Tensor, norm: torch.Tensor,
             angle: torch.Tensor) -> torch.Tensor:
    """y = cos(a)·x + sin(a)·|x|·g⊥/|g⊥| written as α·x + k·g; consumes z, gg, norm and angle (in-place)."""
    inv_perp = gg.addcmul_(z, z, value=-1.0).clamp_min_(_TINY).rsqrt_()       # 1/|g⊥|, |g⊥|² = |g|² − z²
    s = angle.sin().mul_(inv_perp)
    alpha = angle.cos_().addcmul_(s, z, value=-1.0)
    return torch.addcmul(x * alpha, g, s.mul_(norm))


# ------------------------------------------------------------------------------------------------ CLI and /drugs

def add_drugs_args(parser: argparse.ArgumentParser) -> None:
    """The DRµGS flags, in their own argument group. Read them back with `drugs_from_args`."""
    group = parser.add_argument_group("DRµGS (noise inside attention; off unless --dose-theta is given)")
    group.add_argument("--dose-theta", type=str, default=None, metavar="RADIANS",
                       help="largest rotation angle in radians (DRUGS suggests <= 0.1 for A; 0.3-0.5 for K)")
    group.add_argument("--drug-sites", type=str, default=None, metavar="SITES",
                       help=f"comma list of {','.join(SITES)}, optionally SITE=WEIGHT (default {','.join(DEFAULT_SITES)})")
    group.add_argument("--dose-shape", type=str, default="uniform", metavar="SHAPE",
                       help="uniform | peak:DEPTH:WIDTH | profile:interpolate|ceil|floor:D=R,... | m0,m1,... per layer")
    group.add_argument("--sink-protect", type=str, default="6", metavar="N",
                       help="never perturb positions 0..N-1 (default 6)")
    group.add_argument("--cold-shower-every", type=str, default=None, metavar="T",
                       help="recompute the drugged cache clean every T drugged tokens (default: never)")
    group.add_argument("--drug-kind", type=str, default="rotation", metavar="KIND",
                       help=f"{' | '.join(KINDS)} (default rotation)")


def drugs_from_args(args: argparse.Namespace) -> Drugs | None:
    """The Drugs the flags ask for, or None when no dose was given (or it is zero everywhere)."""
    if args.dose_theta is None:
        if args.drug_sites is not None or args.dose_shape != "uniform" or args.cold_shower_every is not None:
            raise _fail("dose_theta", "--drug-sites/--dose-shape/--cold-shower-every need --dose-theta RADIANS")
        return None
    drugs = Drugs(dose_theta=_float_text(args.dose_theta, "dose_theta"),
                  sites=args.drug_sites if args.drug_sites is not None else DEFAULT_SITES,
                  dose_shape=args.dose_shape,
                  sink_protect=_int_text(args.sink_protect, "sink_protect", minimum=0),
                  cold_shower_every=_shower_text(args.cold_shower_every),
                  kind=args.drug_kind)
    return drugs if drugs else None


def _int_text(text: str, argument: str, minimum: int) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise _fail(argument, f"must be an integer >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise _fail(argument, f"must be an integer >= {minimum}, got {text!r}")
    return value


def _shower_text(text: str | None) -> int | None:
    if text is None or text.strip().lower() in ("none", "off", "never", "0"):
        return None
    return _int_text(text, "cold_shower_every", minimum=1)


_COMMAND_KEYS = {
    "theta": "dose_theta", "dose_theta": "dose_theta", "dose": "dose_theta",
    "sites": "sites", "site": "sites",
    "shape": "dose_shape", "dose_shape": "dose_shape",
    "sink": "sink_protect", "sink_protect": "sink_protect",
    "shower": "cold_shower_every", "cold_shower_every": "cold_shower_every",
    "kind": "kind",
}


def parse_drugs_command(text: str, current: Drugs | None) -> Drugs | None:
    """The dose after a chat command such as "/drugs theta=0.3 sites=K,V shape=peak:0.4:0.15".

    Keys: theta, sites, shape, sink, shower (a count or "off"), kind. Unnamed keys keep their current value; with no
    current dose, sites default to K and theta must be given. "/drugs off" returns None; "/drugs" alone returns
    `current`. Bad input raises SamplerArgumentError naming the argument; `current` is never modified, so the caller
    keeps the dose it had."""
    words = text.split()
    if words and words[0].lower() == "/drugs":
        words = words[1:]
    if not words:
        return current
    if len(words) == 1 and words[0].lower() in ("off", "none", "0"):
        return None
    changes: dict[str, object] = {}
    for word in words:
        key, sep, value = word.partition("=")
        field = _COMMAND_KEYS.get(key.lower())
        if not sep or field is None or not value:
            raise _fail(key if field else "/drugs", f"expected KEY=VALUE with KEY one of "
                                                     f"theta, sites, shape, sink, shower, kind; got {word!r}")
        if field == "dose_theta":
            changes[field] = _float_text(value, "dose_theta")
        elif field == "sink_protect":
            changes[field] = _int_text(value, "sink_protect", minimum=0)
        elif field == "cold_shower_every":
            changes[field] = _shower_text(value)
        else:
            changes[field] = value
    if current is None:
        if "dose_theta" not in changes:
            raise _fail("dose_theta", "no dose yet: give theta=RADIANS (e.g. /drugs theta=0.3 sites=K)")
        changes.setdefault("sites", DEFAULT_SITES)
        drugs = Drugs(**changes)
    else:
        drugs = replace(current, **changes)
    return drugs if drugs else None
