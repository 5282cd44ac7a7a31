"""The bench's result rows and their llama-bench-style markdown table."""
from __future__ import annotations

from dataclasses import dataclass

from .stats import Summary


@dataclass
class Row:
    test: str                          # "pp512", "tg128", "tg128 drugs all sites", "ttft", "load", ...
    unit: str                          # "t/s", "ms", "s", "MiB"
    summary: Summary
    vs_baseline: float | None = None   # relative change of the median vs the baseline row (-0.07 = 7% slower)
    note: str = ""

    def as_dict(self) -> dict:
        return {"test": self.test, "unit": self.unit, **self.summary.as_dict(), "vs_greedy": self.vs_baseline,
                "note": self.note}


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table; numeric-looking columns right-aligned as llama-bench prints them."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    right = [i > 0 and all(_numeric(r[i]) for r in rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).rjust(w) if r else str(c).ljust(w)
                                 for c, w, r in zip(cells, widths, right)) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if r else "-" * w for w, r in zip(widths, right)) + " |"
    return "\n".join([line(header), rule] + [line(r) for r in rows])


def _numeric(cell: str) -> bool:
    return bool(cell) and (cell[0].isdigit() or cell[0] in "+-")


def bench_table(model: str, size: str, params: str, dtype: str, rows: list[Row]) -> str:
    header = ["model", "size", "params", "dtype", "test", "result", "unit", "vs greedy"]
    body = [[model, size, params, dtype, r.test, r.summary.format(), r.unit,
             "" if r.vs_baseline is None else f"{100 * r.vs_baseline:+.1f}%"] for r in rows]
    table = markdown_table(header, body)
    notes = [f"- {r.test}: {r.note}" for r in rows if r.note]
    return table + ("\n\n" + "\n".join(notes) if notes else "")
