"""The lab's measures of a set of samples: diversity across them, collapse within each, coherence under the model.

Units, stated once because the papers disagree:
- "words" are whitespace-separated pieces of the decoded text (`text.split()`), as in SimCTG's evaluation script and
  the usual distinct-n / self-BLEU code; they do not depend on the model's tokenizer, so two models compare.
- rep-4 "char" is RD-NET's unit: overlapping 4-character runs of the text (`minillama.sampling.metrics.rep4_char`).
- perplexity is per model token (the model's own tokenizer), under a clean forward pass.

References: distinct-n, Li et al. 2016; self-BLEU, Zhu et al. 2018 (Texygen) over BLEU-4, Papineni et al. 2002;
rep-n and diversity, Su et al. 2022 (SimCTG); compression ratio, Shaib et al. 2024.
"""
from __future__ import annotations

import gzip
import math
from collections import Counter
from typing import Any, Hashable, Sequence

import torch

from ..sampling.metrics import rep4_char

__all__ = ["words", "ngrams", "distinct_n", "bleu", "self_bleu", "unique_count", "rep_n", "simctg_diversity",
           "longest_repeated_ngram", "compression_ratio", "perplexity", "rep4_char", "summary"]


def words(text: str) -> list[str]:
    return text.split()


def ngrams(units: Sequence[Hashable], n: int) -> list[tuple]:
    """All overlapping n-grams of `units`, in order ([] when there are fewer than n units)."""
    return [tuple(units[i:i + n]) for i in range(len(units) - n + 1)]


def distinct_n(samples: Sequence[Sequence[Hashable]], n: int) -> float:
    """Distinct n-grams / all n-grams, pooled over the samples (Li et al. 2016). 0.0 when there is no n-gram.

    Pooled, so it measures diversity *across* samples as well as within: n copies of one text score 1/n of it."""
    grams = [g for s in samples for g in ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def bleu(hypothesis: Sequence[Hashable], references: Sequence[Sequence[Hashable]], max_n: int = 4) -> float:
    """Sentence BLEU-`max_n` of one hypothesis against several references (Papineni et al. 2002), unsmoothed.

    Modified precision p_k: each hypothesis k-gram counts at most as often as it occurs in the reference that has it
    most; BLEU = BP · exp(mean_k log p_k), with the brevity penalty BP = exp(1 − r/c) when the hypothesis (length c)
    is shorter than the reference closest in length (r). Unsmoothed on purpose: texts with no shared k-gram score
    exactly 0, identical texts exactly 1. A hypothesis shorter than max_n words is scored on the orders it has
    (1..its length), so two identical three-word samples still score 1 rather than 0.
    """
    c = len(hypothesis)
    if c == 0 or not references:
        return 0.0
    max_n = min(max_n, c)
    log_sum = 0.0
    for k in range(1, max_n + 1):
        hyp = Counter(ngrams(hypothesis, k))
        total = sum(hyp.values())
        if total == 0:
            return 0.0
        most: Counter = Counter()
        for ref in references:
            for gram, count in Counter(ngrams(ref, k)).items():
                most[gram] = max(most[gram], count)
        matched = sum(min(count, most[gram]) for gram, count in hyp.items())
        if matched == 0:
            return 0.0
        log_sum += math.log(matched / total)
    r = min((len(ref) for ref in references), key=lambda length: (abs(length - c), length))
    brevity = 1.0 if c > r else math.exp(1.0 - r / c)
    return brevity * math.exp(log_sum / max_n)


def self_bleu(samples: Sequence[Sequence[Hashable]], max_n: int = 4) -> float | None:
    """Mean BLEU of each sample against all the others (Texygen's self-BLEU): 1 for identical samples, 0 for samples
    sharing no word; lower is more diverse. None for fewer than two samples (there is nothing to compare)."""
    if len(samples) < 2:
        return None
    scores = [bleu(s, [o for j, o in enumerate(samples) if j != i], max_n) for i, s in enumerate(samples)]
    return sum(scores) / len(scores)


def unique_count(texts: Sequence[str]) -> int:
    return len(set(texts))


def rep_n(units: Sequence[Hashable], n: int) -> float:
    """SimCTG's rep-n of one continuation, in percent: 100 · (1 − unique n-grams / n-grams). 0.0 when it has no
    n-gram; 100 · (1 − 1/k) for one n-gram repeated k times."""
    grams = ngrams(units, n)
    return 100.0 * (1.0 - len(set(grams)) / len(grams)) if grams else 0.0


def simctg_diversity(units: Sequence[Hashable]) -> float:
    """SimCTG's diversity of one continuation: Π over n = 2, 3, 4 of (1 − rep-n / 100), in [0, 1]."""
    return math.prod(1.0 - rep_n(units, n) / 100.0 for n in (2, 3, 4))


def longest_repeated_ngram(units: Sequence[Hashable]) -> tuple[int, tuple]:
    """The longest run of units that occurs at least twice (occurrences may overlap): (its length, the run).
    (0, ()) when no unit repeats. A loop of period p over L units gives L − p.

    Binary search on the length: if some k-gram occurs twice so does some (k−1)-gram, so "a repeat of length k
    exists" is monotone in k; each probe is one pass with a set of k-grams."""
    def repeat_of(k: int) -> tuple | None:
        seen: set[tuple] = set()
        for gram in ngrams(units, k):
            if gram in seen:
                return gram
            seen.add(gram)
        return None

    lo, hi, best = 1, max(len(units) - 1, 0), ()
    while lo <= hi:
        mid = (lo + hi) // 2
        found = repeat_of(mid)
        if found is None:
            hi = mid - 1
        else:
            best, lo = found, mid + 1
    return len(best), best


def compression_ratio(texts: Sequence[str]) -> float:
    """Size of the texts joined by newlines over its gzip size (Shaib et al. 2024): higher is more redundant.
    Near 1 for very short texts, where gzip's header dominates; compare configurations at equal lengths."""
    raw = "\n".join(texts).encode("utf-8")
    return len(raw) / len(gzip.compress(raw, mtime=0)) if raw else 0.0


def perplexity(engine: Any, prompt_ids: Sequence[int], sample_ids: Sequence[int]) -> float | None:
    """exp(mean negative log-likelihood) of the sample's tokens given the prompt, under one clean forward pass of
    the model (`engine.logits`: no noise, no sampler). None for an empty sample."""
    if not sample_ids:
        return None
    ids = list(prompt_ids) + list(sample_ids)
    logits = engine.logits(ids)                                       # [len(ids), vocab]; row i predicts ids[i + 1]
    start = len(prompt_ids) - 1
    logp = torch.log_softmax(logits[start:start + len(sample_ids)].float(), dim=-1)
    target = torch.tensor(list(sample_ids), device=logp.device)
    nll = -logp.gather(1, target[:, None]).mean()
    return float(torch.exp(nll))


def summary(values: Sequence[float | None]) -> dict[str, float | None]:
    """mean, std (population), median, min, max of the values that are not None (all None when there are none)."""
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return {"mean": None, "std": None, "median": None, "min": None, "max": None}
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))
    mid = len(xs) // 2
    median = xs[mid] if len(xs) % 2 else 0.5 * (xs[mid - 1] + xs[mid])
    return {"mean": mean, "std": std, "median": median, "min": xs[0], "max": xs[-1]}
