"""llama.cpp's sampler chain in torch: a candidate set that each element narrows or reshapes, then a final draw.

A step starts from the full vocabulary (`Candidates.from_logits`); elements such as top-k shrink it, temperature or
penalties rewrite its logits, and the final element (dist, greedy, mirostat) sets `selected`. Like llama.cpp's
`llama_token_data_array`, the set remembers whether it is sorted by logit, so a later truncation can slice instead of
sorting again, and top-k on the full vocabulary uses a partial selection (`torch.topk`) rather than a full sort.

Element semantics follow ggml-org/llama.cpp `src/llama-sampling.cpp` (see /work/shared/ANCHORS.md §3). Where this
module deliberately differs it says so next to the code.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from ..capture import CaptureRequest
from ..errors import GenerationError, SamplerArgumentError
from .base import StepContext

# ----------------------------------------------------------------------------------------------------------------
# argument checks shared by every element and by SamplingParams


def check_number(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                 lo_open: bool = False, integer: bool = False, note: str = "") -> None:
    """Raise SamplerArgumentError naming `name` and its range unless lo <= value <= hi (lo < value if lo_open)."""
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    lo_txt = "-inf" if lo is None else f"{lo:g}"
    hi_txt = "inf" if hi is None else f"{hi:g}"
    bounds = f"{'(' if lo_open or lo is None else '['}{lo_txt}, {hi_txt}{']' if hi is not None else ')'}"
    message = f"{name} must be {kind} in {bounds}{note} (got {value!r})"
    if isinstance(value, bool) or not ok_type or (isinstance(value, float) and math.isnan(value)):
        raise SamplerArgumentError(message)
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise SamplerArgumentError(message)
    if hi is not None and value > hi:
        raise SamplerArgumentError(message)
    if not integer and math.isinf(value):
        raise SamplerArgumentError(message)


# ----------------------------------------------------------------------------------------------------------------
# the candidate set


class Candidates:
    """The tokens still in play at one step: logits [n] float32, their token ids, and the chosen index once drawn.

    ids is None while the set is the untouched vocabulary (position i is token i), which lets logit bias and
    penalties index by token id directly and spares a 128k-element arange per step.
    Instances are never modified in place after construction; every element returns a new one (or the same one
    when it changes nothing), and logits tensors are never written to, so ctx.logits stays intact.
    """
    __slots__ = ("logits", "ids", "n_vocab", "is_sorted", "selected", "_probs")

    def __init__(self, logits: torch.Tensor, ids: torch.Tensor | None, n_vocab: int, is_sorted: bool = False,
                 selected: int | None = None) -> None:
        self.logits = logits
        self.ids = ids
        self.n_vocab = n_vocab
        self.is_sorted = is_sorted
        self.selected = selected
        self._probs: torch.Tensor | None = None

    @classmethod
    def from_logits(cls, logits: torch.Tensor) -> "Candidates":
        if logits.dim() != 1:
            raise SamplerArgumentError(f"logits must be one row [vocab] (got shape {tuple(logits.shape)})")
        if logits.dtype != torch.float32:
            logits = logits.float()
        return cls(logits, None, logits.shape[0])

    def __len__(self) -> int:
        return self.logits.shape[0]

    def token_ids(self) -> torch.Tensor:
        if self.ids is None:
            return torch.arange(len(self), device=self.logits.device)
        return self.ids

    def probs(self) -> torch.Tensor:
        """Softmax over the current candidates (computed once per candidate set)."""
        if self._probs is None:
            self._probs = torch.softmax(self.logits, dim=0)
        return self._probs

    def with_logits(self, logits: torch.Tensor, is_sorted: bool = False) -> "Candidates":
        return Candidates(logits, self.ids, self.n_vocab, is_sorted)

    def take(self, index: torch.Tensor, is_sorted: bool) -> "Candidates":
        """Keep the candidates at `index` (a LongTensor of positions or a bool mask), in that order."""
        if index.dtype == torch.bool:
            index = index.nonzero().squeeze(1)
        ids = index if self.ids is None else self.ids[index]
        return Candidates(self.logits[index], ids, self.n_vocab, is_sorted)

    def head(self, k: int) -> "Candidates":
        """The first k candidates; only meaningful when sorted (keeps the sorted flag)."""
        if k >= len(self):
            return self
        ids = torch.arange(k, device=self.logits.device) if self.ids is None else self.ids[:k]
        return Candidates(self.logits[:k], ids, self.n_vocab, self.is_sorted)

    def top(self, k: int) -> "Candidates":
        """The k highest logits, sorted descending: a slice when already sorted, else a partial selection."""
        k = min(k, len(self))
        if self.is_sorted:
            return self.head(k)
        values, index = torch.topk(self.logits, k, sorted=True)
        ids = index if self.ids is None else self.ids[index]
        return Candidates(values, ids, self.n_vocab, True)

    def sorted(self) -> "Candidates":
        if self.is_sorted:
            return self
        values, index = torch.sort(self.logits, descending=True, stable=True)
        ids = index if self.ids is None else self.ids[index]
        return Candidates(values, ids, self.n_vocab, True)

    def select(self, index: int) -> "Candidates":
        chosen = Candidates(self.logits, self.ids, self.n_vocab, self.is_sorted, selected=index)
        chosen._probs = self._probs
        return chosen

    @property
    def selected_token(self) -> int:
        if self.selected is None:
            raise GenerationError("the sampler chain ended without choosing a token (its last element must draw)")
        return int(self.selected) if self.ids is None else int(self.ids[self.selected])

    def positions_of(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the given token ids sit in this set: (positions, which_token) for the ones present."""
        if self.ids is None:
            present = (tokens >= 0) & (tokens < len(self))
            which = present.nonzero().squeeze(1)
            return tokens[which], which
        order = torch.argsort(tokens)
        keys = tokens[order]
        slot = torch.searchsorted(keys, self.ids).clamp_(max=keys.shape[0] - 1)
        hit = keys[slot] == self.ids
        positions = hit.nonzero().squeeze(1)
        return positions, order[slot[positions]]

    def __repr__(self) -> str:
        return f"Candidates(n={len(self)}, sorted={self.is_sorted}, selected={self.selected})"


def draw_index(probs: torch.Tensor, generator: torch.Generator) -> int:
    """One categorical draw by inverting the CDF with a single uniform from `generator` (llama.cpp's dist method).

    Probabilities need not be normalised. Searching for the first cumulative sum strictly above u·total skips
    zero-probability entries even when u is 0.
    """
    cumulative = torch.cumsum(probs.to(torch.float64), dim=0)
    total = float(cumulative[-1])
    if not total > 0.0 or math.isinf(total):
        raise GenerationError("no candidate has a finite, positive probability (every logit is -inf or NaN); "
                              "check logit_bias and the model's logits")
    # the uniform comes from the generator's own device (it may differ from the logits'), then is a plain float
    u = float(torch.rand(1, generator=generator, dtype=torch.float64, device=generator.device))
    index = int((cumulative <= u * total).sum())
    return min(index, probs.shape[0] - 1)


# ----------------------------------------------------------------------------------------------------------------
# chain elements


class ChainElement:
    """One link of the chain. Stateless elements share this default accept/reset/clone."""
    name = "element"

    def apply(self, candidates: Candidates, ctx: StepContext) -> Candidates:
        raise NotImplementedError

    def accept(self, token: int) -> None:
        pass

    def reset(self) -> None:
        pass

    def clone(self) -> "ChainElement":
        return self     # no state: sharing the configuration is safe

    def describe(self) -> str:
        return self.name


class LogitBias(ChainElement):
    """Adds a fixed bias to chosen tokens' logits (-inf bans a token). llama.cpp puts it before everything else."""
    name = "logit-bias"

    def __init__(self, bias: Mapping[int, float]) -> None:
        for token, value in bias.items():
            check_number("logit_bias token id", token, 0, None, integer=True)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool)) or math.isnan(value) \
                    or value == math.inf:
                raise SamplerArgumentError(f"logit_bias for token {token} must be a finite number or -inf "
                                           f"(got {value!r})")
        self.bias = {int(k): float(v) for k, v in bias.items()}
        self._tokens = torch.tensor(list(self.bias), dtype=torch.long)
        self._values = torch.tensor(list(self.bias.values()), dtype=torch.float32)
        self._max_token = max(self.bias, default=-1)

    def apply(self, candidates: Candidates, ctx: StepContext) -> Candidates:
        if not self.bias:
            return candidates
        if self._max_token >= candidates.n_vocab:
            raise SamplerArgumentError(f"logit_bias names token {self._max_token}, but the vocabulary has "
                                       f"{candidates.n_vocab} tokens (ids 0..{candidates.n_vocab - 1})")
        device = candidates.logits.device
        positions, which = candidates.positions_of(self._tokens.to(device))
        logits = candidates.logits.clone()
        logits[positions] += self._values.to(device)[which]
        return candidates.with_logits(logits)

    def describe(self) -> str:
        shown = ", ".join(f"{t}:{b:+g}" for t, b in list(self.bias.items())[:4])
        more = ", ..." if len(self.bias) > 4 else ""
        return f"logit-bias({{{shown}{more}}})"


class TopK(ChainElement):
    """Keeps the k highest logits (k <= 0: off)."""
    name = "top-k"

    def __init__(self, k: int) -> None:
        check_number("top_k", k, -1, None, integer=True, note=" (<= 0 disables)")
        self.k = k

    def apply(self, candidates: Candidates, ctx: StepContext) -> Candidates:
        if self.k <= 0:
            return candidates
        return candidates.top(self.k)

    def describe(self) -> str:
        return f"top-k({self.k})"


class TopP(ChainElement):
    """Nucleus: the smallest head of the sorted set whose probability reaches p, and at least min_keep tokens."""
    name = "top-p"

    # llama.cpp's heuristic: on a large unsorted set the nucleus almost always lies within the top 256 tokens, so
    # select those partially and sort the whole set only when their mass falls short of p.
    PARTIAL = 256
    PARTIAL_ABOVE = 1024

    def __init__(self, p: float, min_keep: int = 0) -> None:
        check_number("top_p", p, 0.0, 1.0)
        check_number("min_keep", min_keep, 0, None, integer=True)
        self.p, self.min_keep = float(p), min_keep

    def apply(self, candidates: Candidates, ctx: StepContext) -> Candidates:
        if self.p >= 1.0:
            return candidates
        if not candidates.is_sorted and len(candidates) > self.PARTIAL_ABOVE:
            log_total = torch.logsumexp(candidates.logits, dim=0)
            head = candidates.top(max(self.PARTIAL, self.min_keep))
            cumulative = torch.cumsum(torch.exp(head.logits - log_total), dim=0)
            if float(cumulative[-1]) >= self.p:
                return head.head(self._keep(cumulative))
        ordered = candidates.sorted()
        cumulative = torch.cumsum(ordered.probs(), dim=0)
        return ordered.head(self._keep(cumulative))

    def _keep(self, cumulative: torch.Tensor) -> int:
        reached = int((cumulative < self.p).sum()) + 1      # cumulative sums only grow: the first index with >= p
        return min(max(reached, self.min_keep), cumulative.shape[0])

    def describe(self) -> str:
        return f"top-p({self.p:g})"


class MinP(ChainElement):
    """Keeps tokens whose probability is at least p times the top token's (p <= 0: off)."""
    name = "min-p"

    def __init__(self, p: float, min_keep: int = 0) -> None:
        check_number("min_p", p, 0.0, 1.0)
        check_number("min_keep", min_keep, 0, None, integer=True)
        self.p, self.min_keep = float(p), min_keep

    def apply(self, candidates: Candidates, ctx: StepContext) -> Candidates:
        if self.p <= 0.0:
            return candidates
        logits = candidates.logits
        # p_i >= p * p_max  <=>  logit_i >= logit_max + ln p: no softmax needed
        keep = logits >= logits.max() + math.log(self.p)
        n_keep = int(keep.sum())
        if n_keep >= max(self.min_keep, 1):
            if n_keep == len(candidates):
                return candidates
            return candidates.take(keep, candidates.is_sorted)
        return candidates.sorted().head(max(self.min_keep, 1))

    def describe(self) -> str:
        return f"min-p({self.p:g})"


class Typical(ChainElement):
    """Locally typical sampling: keeps tokens by |-ln p - H| ascending until their mass exceeds p."""
    name = "typical"

    def __init__(self, p: float, min_keep: int = 0) -> None:
        check_number("typical_p", p, 0.0, 1.0)
        check_number("min_keep", min_keep, 0, None, integer=True)
        self.p, self.min_keep = float(p), min_keep

    def apply(self, candidates: Candidates, ctx: StepContext) -> Candidates:
        if self.p >= 1.0:
            return candidates
        probs = candidates.probs()
        entropy = torch.special.entr(probs).sum()       # entr(0) = 0, so -inf logits do not turn H into NaN
        shift = (-torch.log(probs) - entropy).abs()
        order = torch.sort(shift, stable=True).indices
        cumulative = torch.cumsum(probs[order], dim=0)
        reached = int((cumulative <= self.p).sum()) + 1  # first index whose running mass exceeds p (strictly)
        n_keep = min(max(reached, self.min_keep, 1), len(candidates))
        return candidates.take(order[:n_keep], is_sorted=False)

    def describe(self) -> str:
        return f"typical({self.p:g})"


def _scale(candidates: Candidates, temperature: float) -> Candidates:
    """Divide logits by the temperature; at <= 0 keep only the highest logit (greedy inside the chain)."""
    if temperature <= 0.0:
        best = int(torch.argmax(candidates.logits))       # the first maximum, like llama.cpp's strict '>' scan
        return candidates.take(torch.tensor([best], device=candidates.logits.device), is_sorted=True)
    return candidates.with_logits(candidates.logits / temperature, candidates.is_sorted)


class Temperature(ChainElement):
    """Logits / T. T <= 0 keeps only the max logit."""
    name = "temp"

    def __init__(self, temperature: float) -> None:
        check_number("temp", temperature, None, None, note=" (<= 0 means greedy)")
        self.temperature = float(temperature)

    def apply(self, candidates: Candidates, ctx: StepContext) -> Candidates:
        return _scale(candidates, self.temperature)

    def describe(self) -> str:
        return f"temp({self.temperature:g})"


class DynamicTemperature(ChainElement):
    """Entropy-driven temperature (llama.cpp temp-ext): T = T_min + (T_max - T_min)·(H / ln N)^exponent.

    T_min = max(0, T - range), T_max = T + range; H and N are the entropy and the size of the current candidates.
    """
    name = "dynatemp"

    def __init__(self, temperature: float, temp_range: float, exponent: float = 1.0) -> None:
        check_number("temp", temperature, None, None)
        check_number("dynatemp_range", temp_range, 0.0, None)
        check_number("dynatemp_exponent", exponent, 0.0, None)
        self.temperature, self.temp_range, self.exponent = float(temperature), float(temp_range), float(exponent)

    def temperature_for(self, candidates: Candidates) -> float:
        low = max(0.0, self.temperature - self.temp_range)
        high = self.temperature + self.temp_range
        entropy = float(torch.special.entr(candidates.probs()).sum())
        normalized = entropy / math.log(len(candidates))
        return low + (high - low) * normalized ** self.exponent

    def apply(self, candidates: Candidates, ctx: StepContext) -> Candidates:
        if self.temp_range <= 0.0:
            return _scale(candidates, self.temperature)
        if len(candidates) <= 1:
            return candidates
        temperature = self.temperature_for(candidates)
        ctx.record["temperature"] = temperature
        return _scale(candidates, temperature)

    def describe(self) -> str:
        return f"dynatemp({self.temperature:g}±{self.temp_range:g}, exp={self.exponent:g})"


class XTC(ChainElement):
    """Exclude Top Choices: with probability `probability`, when two or more tokens have p >= threshold, drop all
    of them but the least likely one. A threshold above 0.5 can never hold for two tokens, so it disables XTC.
    The coin comes from ctx.generator, so a cloned generator repeats the same decisions."""
    name = "xtc"

    def __init__(self, probability: float, threshold: float, min_keep: int = 0) -> None:
        check_number("xtc_probability", probability, 0.0, 1.0)
        check_number("xtc_threshold", threshold, 0.0, 1.0, note=" (> 0.5 disables)")
        check_number("min_keep", min_keep, 0, None, integer=True)
        self.probability, self.threshold, self.min_keep = float(probability), float(threshold), min_keep

    def apply(self, candidates: Candidates, ctx: StepContext) -> Candidates:
        if self.probability <= 0.0 or self.threshold > 0.5 or len(candidates) < 2:
            return candidates
        coin = float(torch.rand(1, generator=ctx.generator, dtype=torch.float64, device=ctx.generator.device))
        if coin > self.probability:
            return candidates
        # llama.cpp sorts and cuts the leading run of p >= threshold but its last; a mask finds the same tokens
        # without sorting (at most 1/threshold of them can pass)
        probs = candidates.probs()
        above = probs >= self.threshold
        drop = int(above.sum()) - 1                               # all of them but the least likely one
        if drop <= 0 or len(candidates) - drop < self.min_keep:
            return candidates
        least_likely = int(torch.argmin(torch.where(above, probs, math.inf)))
        above[least_likely] = False
        return candidates.take(~above, candidates.is_sorted)

    def describe(self) -> str:
        return f"xtc(p={self.probability:g}, threshold={self.threshold:g})"


class TopNSigma(ChainElement):
    """Keeps tokens whose logit is within n standard deviations of the max (over finite logits); n <= 0: off.

    llama.cpp masks the rest to -inf but leaves them in the array; here they are removed, which changes nothing
    for any later element except that dynamic temperature's N counts only real candidates.
    """
    name = "top-n-sigma"

    def __init__(self, n: float) -> None:
        check_number("top_n_sigma", n, None, None, note=" (<= 0 disables)")
        self.n = float(n)

    def apply(self, candidates: Candidates, ctx: StepContext) -> Candidates:
        if self.n <= 0.0 or len(candidates) <= 1:
            return candidates
        logits = candidates.logits
        # statistics over the logits that are not -inf (earlier bans); the boolean gather only when some are
        finite = logits if float(logits.min()) > -math.inf else logits[logits != -math.inf]
        if finite.numel() == 0:
            return candidates
        threshold = finite.max() - self.n * finite.std(correction=0)
        keep = logits >= threshold
        if int(keep.sum()) == len(candidates):
            return candidates
        return candidates.take(keep, candidates.is_sorted)

    def describe(self) -> str:
        return f"top-n-sigma({self.n:g})"


class Dist(ChainElement):
    """The final draw: one categorical sample from softmax(logits) with ctx.generator."""
    name = "dist"

    def apply(self, candidates: Candidates, ctx: StepContext) -> Candidates:
        if len(candidates) == 1:
            return candidates.select(0)
        return candidates.select(draw_index(candidates.probs(), ctx.generator))


class GreedyFinal(ChainElement):
    """The final pick without randomness: the first candidate with the highest logit."""
    name = "greedy"

    def apply(self, candidates: Candidates, ctx: StepContext) -> Candidates:
        return candidates.select(int(torch.argmax(candidates.logits)))


# ----------------------------------------------------------------------------------------------------------------
# the chain


class SamplerChain:
    """Applies `samplers` in order to the step's logits, then lets `final` choose the token (the Sampler protocol).

    accept/reset/clone reach every member, so a clone carries its own penalty window, DRY history and mirostat mu.
    """
    capture: CaptureRequest | None = None

    def __init__(self, samplers: Sequence[ChainElement], final: ChainElement | None = None) -> None:
        self.samplers = list(samplers)
        self.final = final if final is not None else Dist()

    def candidates(self, ctx: StepContext) -> Candidates:
        """The candidate set just before the final draw (for inspection and for tests)."""
        candidates = Candidates.from_logits(ctx.logits)
        for element in self.samplers:
            candidates = element.apply(candidates, ctx)
        return candidates

    def sample(self, ctx: StepContext) -> int:
        candidates = self.candidates(ctx)
        ctx.record["candidates"] = len(candidates)
        return self.final.apply(candidates, ctx).selected_token

    def accept(self, token: int) -> None:
        for element in self.samplers:
            element.accept(token)
        self.final.accept(token)

    def reset(self) -> None:
        for element in self.samplers:
            element.reset()
        self.final.reset()

    def clone(self) -> "SamplerChain":
        return SamplerChain([element.clone() for element in self.samplers], self.final.clone())

    def bind(self, tokenizer: Any) -> "SamplerChain":
        """Give members that read text (DRY's sequence breakers) the tokenizer; returns self."""
        for element in [*self.samplers, self.final]:
            bind = getattr(element, "bind", None)
            if bind is not None:
                bind(tokenizer)
        return self

    def describe(self) -> str:
        return " -> ".join(element.describe() for element in [*self.samplers, self.final])

    def __repr__(self) -> str:
        return f"SamplerChain({self.describe()})"
