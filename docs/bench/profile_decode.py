#!/usr/bin/env python
"""Where a minillama decode step's time goes: torch.profiler op breakdown, cProfile's Python view, op counts per
layer, and (optionally) what torch.compile of the model's forward measures. Writes nothing into the package.

    python docs/bench/profile_decode.py [--model GGUF_OR_FOLDER] [--dtype float32] [-n 32] [--compile]

Buckets: "matmul" = the weight products (aten::addmm/mm/linear and their kernels), "attention" = scaled dot
product attention and the per-head score/value products (aten::bmm/matmul/baddbmm/_scaled_dot_product*), the rest
are element-wise and data-movement ops. "Python/dispatch" is the wall time of the decode steps minus the
self time of every op the profiler saw: interpreter work between ops, plus the dispatcher's own cost.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from minillama import Engine  # noqa: E402
from minillama.bench import bench_prompt, eos_disabled, matmul_only_seconds  # noqa: E402

MATMUL_OPS = {"aten::addmm", "aten::mm", "aten::linear", "aten::matmul"}
ATTENTION_OPS = {"aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product_attention_math",
                 "aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention_for_cpu",
                 "aten::_softmax", "aten::softmax"}


def decode_steps(engine, prompt: list[int], steps: int, around=contextlib.nullcontext) -> float:
    """Seconds for `steps` greedy decode steps after the prompt; only the steps run inside `around()` (the
    prefill and the first sample, which comes from the prefill's logits, stay outside it)."""
    stream = engine.stream(prompt, max_new_tokens=steps + 2, seed=0)
    engine.step([stream])
    with around():
        t0 = time.perf_counter()
        for _ in range(steps):
            engine.step([stream])
        elapsed = time.perf_counter() - t0
    stream.close()
    return elapsed


def bucket(name: str) -> str:
    if name in MATMUL_OPS:
        return "matmul"
    if name in ATTENTION_OPS:
        return "attention"
    return "element-wise / copies / other"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(Path(__file__).resolve().parents[2] / "weights" /
                                               "SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("-p", "--n-prompt", type=int, default=64)
    parser.add_argument("-n", "--steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(model) decode steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine = Engine.from_pretrained(args.model, dtype=args.dtype)
    vocab, n_layers = engine.config.vocab_size, engine.config.n_layers
    prompt = lambda seed: bench_prompt(vocab, args.n_prompt, engine.tokenizer.bos_id, seed=seed)  # noqa: E731

    with eos_disabled(engine):
        decode_steps(engine, prompt(0), 4)                                  # warm-up
        plain = [decode_steps(engine, prompt(1 + i), args.steps) / args.steps for i in range(3)]
        limit = statistics.median(matmul_only_seconds(engine.model, vocab, engine.dtype, repeat=9))
        print(f"decode step: {1e3 * statistics.median(plain):.2f} ms median of 3x{args.steps} steps "
              f"({[round(1e3 * p, 2) for p in plain]}); matmul-only replay {1e3 * limit:.2f} ms "
              f"-> {100 * limit / statistics.median(plain):.0f}% of the step is the irreducible matmul time\n")

        prof = profile(activities=[ProfilerActivity.CPU])
        wall = decode_steps(engine, prompt(10), args.steps, around=lambda: prof)
        events = prof.key_averages()
        per_step = Counter()
        self_us = Counter()
        for e in events:
            per_step[e.key] += e.count / args.steps
            self_us[bucket(e.key)] += e.self_cpu_time_total
        total_self_ms = sum(self_us.values()) / 1e3 / args.steps
        wall_ms = 1e3 * wall / args.steps
        print(f"## torch.profiler, {args.steps} decode steps ({wall_ms:.2f} ms/step under the profiler)\n")
        print("| bucket | ms/step | share of step |\n| --- | ---: | ---: |")
        for name, us in self_us.most_common():
            print(f"| {name} | {us / 1e3 / args.steps:.2f} | {100 * us / 1e3 / args.steps / wall_ms:.0f}% |")
        print(f"| Python / dispatch (wall - op self time) | {wall_ms - total_self_ms:.2f} | "
              f"{100 * (wall_ms - total_self_ms) / wall_ms:.0f}% |\n")
        print(f"ops per decode step: {sum(e.count for e in events if e.key.startswith('aten::')) / args.steps:.0f} "
              f"aten calls ({sum(per_step.values()):.0f} profiler events), {n_layers} layers\n")
        print("### top ops by self time\n")
        print("| op | calls/step | calls/layer | self ms/step |\n| --- | ---: | ---: | ---: |")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:25]:
            print(f"| {e.key} | {e.count / args.steps:.0f} | {e.count / args.steps / n_layers:.1f} | "
                  f"{e.self_cpu_time_total / 1e3 / args.steps:.3f} |")

        profiler = cProfile.Profile()
        decode_steps(engine, prompt(20), args.steps, around=lambda: profiler)
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(22)
        print(f"\n## cProfile, {args.steps} decode steps, by own time\n\n```")
        print("\n".join(line for line in text.getvalue().splitlines()[4:] if line.strip()))
        print("```")

        if args.compile:
            model = engine.model
            t0 = time.perf_counter()
            engine.model = torch.compile(model, dynamic=True)
            try:
                decode_steps(engine, prompt(30), 4)
                compile_s = time.perf_counter() - t0
                compiled = [decode_steps(engine, prompt(31 + i), args.steps) / args.steps for i in range(3)]
                print(f"\n## torch.compile(model, dynamic=True)\n\nfirst steps incl. compilation {compile_s:.1f} s; "
                      f"decode step {1e3 * statistics.median(compiled):.2f} ms "
                      f"({[round(1e3 * c, 2) for c in compiled]}) vs eager {1e3 * statistics.median(plain):.2f} ms")
            except Exception as error:  # report why compile is not viable rather than stop the profile
                print(f"\n## torch.compile(model, dynamic=True)\n\nfailed: {type(error).__name__}: "
                      f"{str(error).splitlines()[0][:300]}")
            finally:
                engine.model = model
    return 0


if __name__ == "__main__":
    sys.exit(main())
