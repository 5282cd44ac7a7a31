"""Summaries of repeated timings: median and spread, the way the bench tables print them.

Medians, not means: on a shared machine one stalled run should not move the figure. The spread is half the range
between the lowest and highest repeat (so "41.2 ± 0.8" says every repeat lay within 41.2 - 0.8 .. 41.2 + 0.8 around
the middle of the range), and the standard deviation is kept beside it for the JSON.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    median: float
    spread: float            # half of (max - min)
    stdev: float
    mean: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> "Summary":
        if not values:
            raise ValueError("no values to summarise")
        return cls(median=statistics.median(values), spread=(max(values) - min(values)) / 2,
                   stdev=statistics.stdev(values) if len(values) > 1 else 0.0,
                   mean=statistics.fmean(values), n=len(values))

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "spread": self.spread, "stdev": self.stdev, "mean": self.mean, "n": self.n}

    def format(self, digits: int = 2) -> str:
        return f"{self.median:.{digits}f} ± {self.spread:.{digits}f}"
