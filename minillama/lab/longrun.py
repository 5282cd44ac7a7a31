"""RD-NET's long-run protocol (seed 003) at this machine's scale: one prompt, one seed, several decoders side by
side for N tokens with context shift on; RD-NET's char-level rep-4 over the trailing 50k characters every
`every` tokens ("10k tokens | rep-4 = 0.4321 | drift = 0.0720").

The seed ran a 20k-token vanilla generation and a 150k-token RD-NET one on Llama-3.1-8B; here every arm gets the
same budget, so the curves compare at equal lengths. End-of-text is banned in every arm (its logit set to −inf):
the protocol measures one uninterrupted stream, and a base model like stories260K would otherwise stop after each
story. All arms decode together, one `Engine.step` per token (arms without noise share one batched forward).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..capture import CaptureRequest
from ..drugs import Drugs
from ..errors import SamplerArgumentError
from ..sampling import RDNet, SamplingParams
from ..sampling.base import Greedy, Sampler, StepContext
from ..sampling.metrics import Rep4Logger

DEFAULT_PROMPT = "Once upon a time, there was a little girl named Lily who found a shiny key in the garden."


class NoEos:
    """Wraps a sampler (argmax when None) so it never draws an end-of-text token."""

    def __init__(self, inner: Sampler | None, eos_ids: Sequence[int]):
        self.inner = inner if inner is not None else Greedy()
        self.eos_ids = sorted(set(int(t) for t in eos_ids))

    @property
    def capture(self) -> CaptureRequest | None:
        return self.inner.capture

    def sample(self, ctx: StepContext) -> int:
        if self.eos_ids:
            logits = ctx.logits.clone()
            logits[self.eos_ids] = float("-inf")
            ctx = StepContext(logits=logits, tokens=ctx.tokens, prompt_len=ctx.prompt_len, hidden=ctx.hidden,
                              generator=ctx.generator, attention=ctx.attention, lookahead=ctx.lookahead,
                              record=ctx.record)
        return self.inner.sample(ctx)

    def accept(self, token: int) -> None:
        self.inner.accept(token)

    def reset(self) -> None:
        self.inner.reset()

    def clone(self) -> "NoEos":
        return NoEos(self.inner.clone(), self.eos_ids)

    def __repr__(self) -> str:
        return f"NoEos({self.inner!r})"


def _vanilla(tokenizer: Any) -> Sampler:
    return SamplingParams().to_sampler(tokenizer)     # llama.cpp's defaults: what a user runs without tuning


@dataclass(frozen=True)
class Arm:
    name: str
    description: str
    make_sampler: Callable[[Any], Sampler | None] = field(default=lambda tokenizer: None, repr=False)
    drugs: Drugs | None = None


ARMS: dict[str, Arm] = {a.name: a for a in (
    Arm("greedy", "argmax (the collapse reference)"),
    Arm("vanilla", "llama.cpp default chain (T=0.8, top-k 40, top-p 0.95, min-p 0.05)", _vanilla),
    Arm("rdnet", "RD-NET memory (mix 1, drift 0.1 -> 0.02, decay 10k tokens) over the vanilla chain",
        lambda tokenizer: RDNet(_vanilla(tokenizer))),
    Arm("rdnet-greedy", "RD-NET memory (mix 1) over argmax", lambda tokenizer: RDNet()),
    Arm("drugs", "DRµGS K θ=0.3 + greedy", drugs=Drugs(dose_theta=0.3, sites="K")),
)}
DEFAULT_ARMS = ("greedy", "vanilla", "rdnet", "rdnet-greedy", "drugs")


def select_arms(spec: str | None) -> list[Arm]:
    names = DEFAULT_ARMS if spec is None or spec.strip() in ("", "all") else [s.strip() for s in spec.split(",")
                                                                              if s.strip()]
    unknown = [n for n in names if n not in ARMS]
    if unknown or not names:
        raise SamplerArgumentError(f"--long-arms: unknown arm {unknown[0]!r}" if unknown else "--long-arms: empty"
                                   f"; valid: {', '.join(ARMS)}")
    return [ARMS[n] for n in dict.fromkeys(names)]


def long_run(engine: Any, arms: Sequence[Arm], *, prompt: str = DEFAULT_PROMPT, tokens: int = 20_000,
             every: int = 1_000, seed: int = 0, progress: bool = True,
             log: Any = sys.stderr) -> dict[str, Any]:
    """Decode `tokens` tokens per arm from one prompt and seed; rep-4 every `every` tokens. Needs an engine opened
    with context_shift=True when `tokens` exceeds its context. Returns the report (what the JSON holds)."""
    if tokens < 1 or every < 1:
        raise SamplerArgumentError(f"--long-tokens and --long-every must be >= 1, got {tokens} and {every}")
    if not engine.context_shift and tokens + 64 > engine.context_length:
        raise SamplerArgumentError(f"the long run needs context shift: {tokens} tokens do not fit the "
                                   f"{engine.context_length}-token context")
    from .run import environment, model_info
    eos = list(engine.tokenizer.eos_ids)
    ids = engine.tokenizer.encode(prompt, bos=True)
    streams, loggers, drift_of, texts = [], [], [], []
    for arm in arms:
        inner = arm.make_sampler(engine.tokenizer)
        drift_of.append(inner.drift_at if isinstance(inner, RDNet) else None)
        streams.append(engine.stream(ids, max_new_tokens=tokens, sampler=NoEos(inner, eos), seed=seed,
                                     drugs=arm.drugs))
        loggers.append(Rep4Logger(every, sink=(lambda line, name=arm.name: print(f"{name}: {line}", file=log))
                                  if log is not None and not progress else None))
        texts.append([])
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=tokens, unit="tok", file=sys.stderr, dynamic_ncols=True,
                   desc=f"long run ({len(arms)} arms)")
    t0 = time.perf_counter()
    done = 0
    try:
        while not all(s.finished for s in streams):
            engine.step([s for s in streams if not s.finished])
            done += 1
            for arm, stream, logger, drift, text in zip(arms, streams, loggers, drift_of, texts):
                if stream.finished and logger.tokens >= len(stream.completion.tokens):
                    continue            # finished in an earlier step: nothing new
                piece = stream.poll()[0]
                text.append(piece)
                line = logger.add(piece, drift=drift(logger.tokens) if drift else None)
                if line is not None and bar is not None:
                    bar.write(f"{arm.name}: {line}", file=sys.stderr)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t0
    runs = []
    for arm, stream, logger, text in zip(arms, streams, loggers, texts):
        full = "".join(text)
        runs.append({"name": arm.name, "description": arm.description,
                     "drugs": arm.drugs.describe() if arm.drugs is not None else None,
                     "new_tokens": len(stream.completion.tokens),
                     "rep4": [[t, r] for t, r, _ in logger.history],
                     "drift": [[t, d] for t, _, d in logger.history if d is not None],
                     "chars": len(full), "text_head": full[:1500], "text_tail": full[-1500:]})
    return {"kind": "long-run", **environment(), "model": model_info(engine),
            "settings": {"prompt": prompt, "seed": seed, "tokens": tokens, "every": every,
                         "context_length": engine.context_length, "context_shift": engine.context_shift,
                         "eos": "banned in every arm", "rep4_unit": "RD-NET's char-level rep-4 over the trailing "
                                                                   "50k characters"},
            "elapsed_s": elapsed, "steps_per_s": done / elapsed if elapsed > 0 else None,
            "runs": runs}


def format_long_table(report: dict[str, Any]) -> str:
    """rep-4 per arm at each checkpoint, one row per checkpoint (Markdown)."""
    runs = report["runs"]
    steps = sorted({t for r in runs for t, _ in r["rep4"]})
    head = ["tokens"] + [r["name"] for r in runs]
    rows = [[f"{t:,}"] + [next((f"{v:.4f}" for tt, v in r["rep4"] if tt == t), "-") for r in runs] for t in steps]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def plot_long_run(report: dict[str, Any], path: Any) -> Any:
    from .run import load_pyplot, model_label
    plt = load_pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in report["runs"]:
        if r["rep4"]:
            ax.plot(*zip(*r["rep4"]), marker="o", ms=3, label=r["name"])
    s = report["settings"]
    ax.set_xlabel("generated tokens")
    ax.set_ylabel("rep-4 (char, trailing 50k chars) ↓")
    ax.set_title(f"{model_label(report['model']['source'])}: long run, context {s['context_length']} "
                 f"with shift, seed {s['seed']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


__all__ = ["ARMS", "Arm", "DEFAULT_ARMS", "DEFAULT_PROMPT", "NoEos", "format_long_table", "long_run",
           "plot_long_run", "select_arms"]
