"""The sampler lab's main experiment: every configuration, the same prompts and seeds, n samples each; the figures,
the terminal table, the JSON report and the diversity-vs-perplexity plot.

Fairness rules kept here: every configuration sees the same prompts with the same seed per prompt (common random
numbers: seed + prompt index), the same token budget, and is scored by the same clean model; the raw samples go into
the JSON so any figure can be checked by hand.
"""
from __future__ import annotations

import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence, TextIO

import torch

from ..errors import SamplerArgumentError
from . import metrics
from .configs import LabConfig

PLOT_HINT = "matplotlib is not installed, so no plots were drawn: pip install 'minillama[plot]'"
TEMPLATES = ("auto", "chat", "raw")


# ----------------------------------------------------------------------------------------------------- prompts

def load_prompts(path: str | Path | None = None) -> list[dict[str, str]]:
    """The prompts as [{"kind", "text"}]. None: the set shipped with minillama (data/lab_prompts.json).
    A .json file holds a list of strings or of {"text": ..., "kind": ...}; any other file has one prompt per line
    (blank lines skipped)."""
    if path is None:
        raw = resources.files("minillama").joinpath("data/lab_prompts.json").read_text(encoding="utf-8")
        items = json.loads(raw)
        where = "minillama/data/lab_prompts.json"
    else:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise SamplerArgumentError(f"--prompts {path}: cannot read it ({error.strerror or error})") from None
        where = str(path)
        if path.suffix == ".json":
            try:
                items = json.loads(text)
            except ValueError as error:
                raise SamplerArgumentError(f"--prompts {path}: not valid JSON ({error})") from None
        else:
            items = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(items, list) or not items:
        raise SamplerArgumentError(f"--prompts {where}: expected a non-empty list of prompts")
    prompts = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) or not item["text"].strip():
            raise SamplerArgumentError(f"--prompts {where}: item {i} must be a non-empty string or "
                                       f"{{\"text\": ..., \"kind\": ...}}")
        prompts.append({"kind": str(item.get("kind", "prompt")), "text": item["text"]})
    return prompts


def uses_chat_template(engine: Any, template: str) -> bool:
    """auto: chat models (a template other than "plain") get their chat template; base models the raw text."""
    if template not in TEMPLATES:
        raise SamplerArgumentError(f"--template must be one of {', '.join(TEMPLATES)}, got {template!r}")
    if template == "auto":
        chat = getattr(engine.tokenizer, "chat_template", None)
        return chat is not None and chat.name != "plain"
    return template == "chat"


def encode_prompt(engine: Any, text: str, chat: bool) -> list[int]:
    if chat:
        rendered = engine.tokenizer.chat_template.render([{"role": "user", "content": text}],
                                                         add_generation_prompt=True)
        return engine.tokenizer.encode(rendered, bos=False)
    return engine.tokenizer.encode(text, bos=True)


# ------------------------------------------------------------------------------------------------ the experiment

@dataclass(frozen=True)
class LabSettings:
    n: int = 8
    max_new_tokens: int = 256
    seed: int = 0
    template: str = "auto"

    def __post_init__(self) -> None:
        if self.n < 1:
            raise SamplerArgumentError(f"--n must be >= 1 sample per prompt, got {self.n}")
        if self.max_new_tokens < 1:
            raise SamplerArgumentError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")


def score_prompt(engine: Any, prompt_ids: list[int], completion: Any) -> dict[str, Any]:
    """The figures of one prompt's n samples: diversity across them, collapse and perplexity within each."""
    texts = [c.text for c in completion.choices]
    split = [metrics.words(t) for t in texts]
    samples = []
    for choice, units in zip(completion.choices, split):
        length, gram = metrics.longest_repeated_ngram(units)
        samples.append({
            "text": choice.text, "new_tokens": len(choice.tokens), "finish_reason": choice.finish_reason,
            "ppl": metrics.perplexity(engine, prompt_ids, choice.tokens),
            "rep4_char": metrics.rep4_char(choice.text),
            "rep_2": metrics.rep_n(units, 2), "rep_3": metrics.rep_n(units, 3), "rep_4": metrics.rep_n(units, 4),
            "simctg_diversity": metrics.simctg_diversity(units),
            "longest_repeat": length, "longest_repeat_text": " ".join(gram),
        })
    return {
        "distinct_1": metrics.distinct_n(split, 1), "distinct_2": metrics.distinct_n(split, 2),
        "distinct_3": metrics.distinct_n(split, 3), "self_bleu4": metrics.self_bleu(split, 4),
        "unique_samples": metrics.unique_count(texts), "compression_ratio": metrics.compression_ratio(texts),
        "samples": samples,
    }


def _mean(values: Iterable[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def aggregate(per_prompt: list[dict[str, Any]], new_tokens: int, decode_s: float,
              regimes: dict[str, int] | None) -> dict[str, Any]:
    """One configuration's figures: per-prompt diversity averaged over prompts, per-sample figures summarized."""
    samples = [s for p in per_prompt for s in p["samples"]]
    ppl = metrics.summary([s["ppl"] for s in samples])
    longest = [s["longest_repeat"] for s in samples]
    out: dict[str, Any] = {key: _mean(p[key] for p in per_prompt)
                           for key in ("distinct_1", "distinct_2", "distinct_3", "self_bleu4", "unique_samples",
                                       "compression_ratio")}
    out.update({
        "ppl_mean": ppl["mean"], "ppl_std": ppl["std"], "ppl_median": ppl["median"], "ppl_min": ppl["min"],
        "ppl_max": ppl["max"],
        "rep4_char": _mean(s["rep4_char"] for s in samples),
        "rep_2": _mean(s["rep_2"] for s in samples), "rep_3": _mean(s["rep_3"] for s in samples),
        "rep_4": _mean(s["rep_4"] for s in samples),
        "simctg_diversity": _mean(s["simctg_diversity"] for s in samples),
        "longest_repeat_mean": _mean(longest), "longest_repeat_max": max(longest) if longest else 0,
        "mean_new_tokens": _mean(s["new_tokens"] for s in samples),
        "new_tokens": new_tokens, "decode_s": decode_s,
        "tokens_per_s": new_tokens / decode_s if decode_s > 0 else None,
    })
    if regimes is not None:
        total = sum(regimes.values())
        out["regime_counts"] = regimes
        out["regime_shares"] = {k: v / total for k, v in regimes.items()} if total else {}
    return out


def run_config(engine: Any, config: LabConfig, prompts_ids: Sequence[list[int]], settings: LabSettings,
               progress: Any = None) -> dict[str, Any]:
    per_prompt, new_tokens, decode_s = [], 0, 0.0
    regimes: dict[str, int] | None = {} if config.records_key else None
    for i, ids in enumerate(prompts_ids):
        sampler = config.make_sampler(engine.tokenizer)
        completion = engine.generate(ids, max_new_tokens=settings.max_new_tokens, n=settings.n,
                                     seed=settings.seed + i, sampler=sampler, drugs=config.drugs,
                                     records=config.records_key is not None)
        new_tokens += completion.stats.new_tokens
        decode_s += completion.stats.decode_s
        if regimes is not None:
            for choice in completion.choices:
                for record in choice.records:
                    state = record.get(config.records_key)
                    if state is not None:
                        regimes[state] = regimes.get(state, 0) + 1
        scored = score_prompt(engine, ids, completion)
        scored["prompt_index"] = i
        per_prompt.append(scored)
        if progress is not None:
            progress.update(1)
    return {**config.to_json(engine.tokenizer),
            "metrics": aggregate(per_prompt, new_tokens, decode_s, regimes), "per_prompt": per_prompt}


def model_label(source: str) -> str:
    """A short name for a model source: the file or folder name (the parent's for an "hf" folder)."""
    path = Path(source)
    return path.parent.name if path.name == "hf" and path.parent.name else path.name


def model_info(engine: Any) -> dict[str, Any]:
    c = engine.config
    return {"source": str(engine.source), "arch": c.arch, "dim": c.dim, "n_layers": c.n_layers,
            "n_heads": c.n_heads, "n_kv_heads": c.n_kv_heads, "vocab_size": c.vocab_size,
            "dtype": str(engine.dtype).replace("torch.", ""), "device": str(engine.device),
            "context_length": engine.context_length}


def environment() -> dict[str, Any]:
    from .. import __version__
    return {"minillama_version": __version__, "torch_version": torch.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads(), "machine": platform.machine(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def run_lab(engine: Any, configs: Sequence[LabConfig], prompts: Sequence[dict[str, str]], settings: LabSettings,
            *, progress: bool = True, log: TextIO | None = sys.stderr) -> dict[str, Any]:
    """Run every configuration on every prompt; returns the full report (what the JSON file holds)."""
    chat = uses_chat_template(engine, settings.template)
    prompts_ids = [encode_prompt(engine, p["text"], chat) for p in prompts]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(configs) * len(prompts), unit="prompt", file=sys.stderr, dynamic_ncols=True)
    results = []
    try:
        for config in configs:
            if bar is not None:
                bar.set_description(config.name)
            t0 = time.perf_counter()
            results.append(run_config(engine, config, prompts_ids, settings, bar))
            if log is not None and bar is None:
                print(f"{config.name}: {time.perf_counter() - t0:.1f} s", file=log, flush=True)
    finally:
        if bar is not None:
            bar.close()
    greedy = next((r for r in results if r["name"] == "greedy"), None)
    greedy_tps = greedy["metrics"]["tokens_per_s"] if greedy else None
    for r in results:
        tps = r["metrics"]["tokens_per_s"]
        r["metrics"]["slowdown_vs_greedy"] = greedy_tps / tps if greedy_tps and tps else None
    return {"kind": "sampler-lab", **environment(), "model": model_info(engine),
            "settings": {"n": settings.n, "max_new_tokens": settings.max_new_tokens, "seed": settings.seed,
                         "seed_rule": "prompt i uses seed + i for every configuration",
                         "template": settings.template, "chat_template_applied": chat},
            "units": {"distinct_n, self_bleu4, rep_n, longest_repeat": "whitespace words of the decoded text",
                      "rep4_char": "RD-NET's: 1 - unique/total overlapping 4-character runs (trailing 50k chars)",
                      "rep_n": "SimCTG, percent, within one sample", "ppl": "per model token, clean model, "
                      "prompt as context", "self_bleu4": "mean unsmoothed BLEU-4 of each sample vs the others",
                      "unique_samples": "distinct texts out of n, mean over prompts",
                      "human_reference": "none: no human continuation set ships with the lab, so no ppl gap"},
            "prompts": [{**p, "tokens": len(ids)} for p, ids in zip(prompts, prompts_ids)],
            "configs": results}


# ------------------------------------------------------------------------------------------------ presentation

def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def format_regimes(shares: dict[str, float] | None) -> str:
    if not shares:
        return ""
    return " ".join(f"{k}:{v:.0%}" for k, v in sorted(shares.items(), key=lambda kv: -kv[1]) if v > 0)


def format_table(report: dict[str, Any]) -> str:
    """The results as a Markdown table (readable on a terminal, pasteable into a README)."""
    n = report["settings"]["n"]
    head = ["config", "dist-1", "dist-2", "dist-3", "self-BLEU4", f"uniq/{n}", "ppl mean±sd", "rep-4 char",
            "rep-4 word%", "longest rep", "tok/s", "×greedy", "regimes/states"]
    rows = []
    for r in report["configs"]:
        m = r["metrics"]
        ppl = f"{_fmt(m['ppl_mean'], '.2f')}±{_fmt(m['ppl_std'], '.2f')}"
        rows.append([r["name"], _fmt(m["distinct_1"], ".3f"), _fmt(m["distinct_2"], ".3f"),
                     _fmt(m["distinct_3"], ".3f"), _fmt(m["self_bleu4"], ".3f"), _fmt(m["unique_samples"], ".2f"),
                     ppl, _fmt(m["rep4_char"], ".3f"), _fmt(m["rep_4"], ".1f"),
                     f"{_fmt(m['longest_repeat_mean'], '.1f')}/{m['longest_repeat_max']}",
                     _fmt(m["tokens_per_s"], ".1f"), _fmt(m.get("slowdown_vs_greedy"), ".2f"),
                     format_regimes(m.get("regime_shares"))])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def write_json(report: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path


def load_pyplot() -> Any | None:
    """matplotlib.pyplot on a file-only backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


FAMILY_COLORS = {"baseline": "tab:blue", "drugs": "tab:red", "adaptive": "tab:green", "rdnet": "tab:purple"}
# sweeps drawn as lines, so each method shows as a curve (Caccia et al. 2020), not a point
SWEEPS = (("greedy", "temp-0.7", "temp-1.0"), ("greedy", "drugs-K-0.1", "drugs-K-0.3", "drugs-K-0.6"))


def plot_frontier(report: dict[str, Any], path: Path) -> Path | None:
    """Diversity (distinct-2, and 1 − self-BLEU-4) against mean perplexity, one point per configuration.
    Returns the path, or None when matplotlib is missing."""
    plt = load_pyplot()
    if plt is None:
        return None
    by_name = {r["name"]: r for r in report["configs"]}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    panels = (("distinct_2", "distinct-2 (across samples) ↑"), ("self_bleu4", "1 − self-BLEU-4 ↑"))
    for ax, (key, label) in zip(axes, panels):
        def y_of(m: dict[str, Any]) -> float | None:
            v = m.get(key)
            return None if v is None else (1.0 - v if key == "self_bleu4" else v)

        for sweep in SWEEPS:
            pts = [(by_name[s]["metrics"]["ppl_mean"], y_of(by_name[s]["metrics"])) for s in sweep if s in by_name]
            pts = [p for p in pts if None not in p]
            if len(pts) > 1:
                ax.plot(*zip(*pts), color="0.7", lw=1, zorder=1)
        for r in report["configs"]:
            x, y = r["metrics"]["ppl_mean"], y_of(r["metrics"])
            if x is None or y is None:
                continue
            ax.scatter([x], [y], color=FAMILY_COLORS.get(r["family"], "black"), s=28, zorder=2)
            ax.annotate(r["name"], (x, y), fontsize=6.5, xytext=(3, 2), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("perplexity under the clean model (log)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=f) for f, c in FAMILY_COLORS.items()]
    axes[1].legend(handles=handles, fontsize=8, loc="lower right")
    model = model_label(report["model"]["source"])
    s = report["settings"]
    fig.suptitle(f"{model}: diversity vs perplexity (n={s['n']}, {len(report['prompts'])} prompts, "
                 f"{s['max_new_tokens']} tokens, seed {s['seed']})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
