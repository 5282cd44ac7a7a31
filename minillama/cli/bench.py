"""Benchmark a model: prefill and decode tokens/s, time to first token, load time, peak memory, steering overheads.

Prints a llama-bench-style markdown table on stdout (progress on stderr). Each decode variant (DRµGS on all sites,
attention capture on all layers, each shipped sampler) is timed on the same random prompt as plain greedy decoding,
interleaved with it, and shown with its change vs greedy. Figures are medians ± half the range over --repeat runs.
Two limits follow the decode rows: the matmul-only limit (the model's weight products for one token replayed back
to back) and the bandwidth ceiling (measured read bandwidth / weight bytes per token).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys

from .common import add_model_arguments, open_engine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("-p", "--n-prompt", type=int, default=512, metavar="N", help="prompt tokens (default: 512)")
    parser.add_argument("-n", "--n-gen", type=int, default=128, metavar="N", help="generated tokens (default: 128)")
    parser.add_argument("-r", "--repeat", type=int, default=3, metavar="R", help="runs per test (default: 3)")
    parser.add_argument("-t", "--threads", type=int, default=None, metavar="T",
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--variants", default=None, metavar="LIST",
                        help="comma-separated decode variants besides greedy: drugs, capture, chain, entropy, alpha, "
                             "alpha-lookahead, rdnet (default: all; 'none' for greedy only)")
    parser.add_argument("--no-limits", action="store_true", help="skip the matmul-only limit and bandwidth ceiling")
    parser.add_argument("--streams", default="1,4,16", metavar="LIST",
                        help="concurrent stream counts for the batching rows ('' to skip; default: 1,4,16)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON to FILE")


def _positive(name: str, value: int) -> int:
    from ..errors import SamplerArgumentError
    if value < 1:
        raise SamplerArgumentError(f"{name} must be >= 1, got {value}")
    return value


def _variant_names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [n.strip() for n in text.split(",") if n.strip() and n.strip() != "none"]


def run(args: argparse.Namespace) -> int:
    import torch

    from ..bench import Row, Summary, bench_rows, bench_table, timed_load
    from ..bench.measure import model_bytes, model_params
    from ..bench.table import human_bytes, human_count
    _positive("-p/--n-prompt", args.n_prompt)
    _positive("-r/--repeat", args.repeat)
    if args.n_gen < 2:
        from ..errors import SamplerArgumentError
        raise SamplerArgumentError(f"-n/--n-gen must be >= 2 (decode speed needs two tokens), got {args.n_gen}")
    if args.threads is not None:
        torch.set_num_threads(_positive("-t/--threads", args.threads))
    streams = tuple(int(s) for s in args.streams.split(",") if s.strip())

    def progress(message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    progress(f"loading {args.model or 'the default model'}")
    engine, load_s = timed_load(lambda: open_engine(args))
    rows: list[Row] = bench_rows(engine, prompt_tokens=args.n_prompt, new_tokens=args.n_gen, repeat=args.repeat,
                                 load_s=[load_s], variants=_variant_names(args.variants),
                                 limits=not args.no_limits, streams=streams, progress=progress)
    parts = [p for p in engine.source.split("/") if p]
    name = "/".join(parts[-2:]) if parts and parts[-1] == "hf" else (parts[-1] if parts else engine.source)
    dtype = str(engine.dtype).removeprefix("torch.") + (f" {args.quant}" if args.quant else "")
    size, params = model_bytes(engine.model), model_params(engine.model)
    print(bench_table(name, human_bytes(size), human_count(params), dtype, rows))
    print(f"\n{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.machine()}, "
          f"pp{args.n_prompt}/tg{args.n_gen}, {args.repeat} repeats: median ± half the range")
    if args.json:
        report = {"model": name, "source": engine.source, "size_bytes": size, "params": params,
                  "dtype": str(engine.dtype).removeprefix("torch."), "quant": args.quant,
                  "threads": torch.get_num_threads(), "torch": torch.__version__, "n_prompt": args.n_prompt,
                  "n_gen": args.n_gen, "repeat": args.repeat, "rows": [r.as_dict() for r in rows]}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0
